//! A container engine for the tests and the demo: the one `DOCKER_HOST` names, a Docker socket
//! that answers, or else Podman's Docker-compatible service started here on a socket of its own,
//! with this repository's Podman settings (`config/podman/`).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{HarnessError, workspace_root};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An engine the tests can deploy to; a Podman service started for it stops when it drops.
#[derive(Debug)]
pub struct ContainerEngine {
    docker_host: String,
    podman: Option<(Child, TempDir)>,
}

impl ContainerEngine {
    /// Finds or starts an engine.
    pub fn start() -> Result<Self, HarnessError> {
        if let Ok(host) = std::env::var("DOCKER_HOST")
            && !host.is_empty()
        {
            return Ok(ContainerEngine {
                docker_host: host,
                podman: None,
            });
        }
        if answers(Path::new("/var/run/docker.sock")) {
            return Ok(ContainerEngine {
                docker_host: "unix:///var/run/docker.sock".into(),
                podman: None,
            });
        }
        Self::start_podman()
    }

    /// `podman system service` on a socket in a temporary folder. Its stdin is a pipe from this
    /// process, and a shell stops the service when the pipe closes, so a test run that dies
    /// does not leave it behind.
    fn start_podman() -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("infracrew-engine-")
            .tempdir()?;
        let socket = dir.path().join("podman.sock");
        let config = podman_config_dir();
        let child = Command::new("sh")
            .args([
                "-c",
                "podman system service --time=0 \"unix://$1\" & pid=$!; cat >/dev/null; kill $pid; wait $pid",
                "engine",
            ])
            .arg(&socket)
            .env("CONTAINERS_CONF", config.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", config.join("storage.conf"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                binary: "podman".into(),
                source,
            })?;
        let engine = ContainerEngine {
            docker_host: format!("unix://{}", socket.display()),
            podman: Some((child, dir)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers(&socket) {
            if Instant::now() > deadline {
                return Err(HarnessError::EngineNotReady(format!(
                    "podman system service did not answer on {} within {START_TIMEOUT:?}; \
                     is Podman installed (`make deps`)?",
                    socket.display()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(engine)
    }

    /// The engine's address, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }
}

impl Drop for ContainerEngine {
    fn drop(&mut self) {
        if let Some((mut child, _dir)) = self.podman.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// The folder of this repository's Podman settings.
pub fn podman_config_dir() -> PathBuf {
    workspace_root().join("config/podman")
}

/// Whether a Docker Engine API answers `/_ping` on `socket`.
fn answers(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
}
