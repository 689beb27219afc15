//! A real `nats-server` with JetStream on a free loopback port and a temporary store, for the
//! tests and for `crew up`: stopped (and its store removed) when dropped.
//!
//! The binary is `$NATS_SERVER_BIN`, else the one `make deps` installs in `.tools/`, else
//! `nats-server` on `PATH`. It must be 2.10 or newer.

use std::{
    fs,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

pub mod engine;
pub mod github;
pub mod http;
pub mod images;
pub mod otlp;
pub mod ports;
pub mod prometheus;
pub mod slack;
pub mod speed;

pub use ports::free_port;

/// How long a server may take to start before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a test server could not run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("no nats-server found ({0}); run `make deps` to install one")]
    NotFound(String),
    #[error(
        "{binary} is {version}, but infracrew needs nats-server 2.10 or newer; run `make deps`"
    )]
    TooOld { binary: String, version: String },
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("nats-server did not become ready within {timeout:?}; its log:\n{log}")]
    NotReady { timeout: Duration, log: String },
    #[error("{0}")]
    EngineNotReady(String),
    #[error("test harness I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A running nats-server owned by a test.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    jetstream: bool,
    /// Holds the store, the ports file and the log; removed on drop.
    dir: TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free port with a fresh store.
    pub fn start() -> Result<Self, HarnessError> {
        Self::launch(true, &[])
    }

    /// Starts a server with JetStream off, to test how the crew reports it.
    pub fn start_without_jetstream() -> Result<Self, HarnessError> {
        Self::launch(false, &[])
    }

    /// Starts a server with extra command-line arguments (for example `-c FILE`).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Self, HarnessError> {
        Self::launch(true, extra_args)
    }

    fn launch(jetstream: bool, extra_args: &[&str]) -> Result<Self, HarnessError> {
        let binary = find_binary()?;
        let mut server = NatsServer {
            binary,
            port: 0,
            child: None,
            jetstream,
            dir: tempfile::Builder::new()
                .prefix("infracrew-nats-")
                .tempdir()?,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        server.spawn()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory, kept across [`NatsServer::restart`].
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Stops the server (SIGKILL, as a crash would) and keeps its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store, after [`NatsServer::kill`] or
    /// while it still runs (then it is killed first).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let ports_dir = self.dir.path().join("ports");
        let _ = fs::remove_dir_all(&ports_dir);
        fs::create_dir_all(&ports_dir)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))?;
        // The first start lets the server pick a free port; a restart keeps it, so clients
        // reconnect to the same address.
        let port = if self.port == 0 {
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        let child = Command::new(&self.binary)
            .args(self.jetstream.then_some("-js"))
            .args(["-a", "127.0.0.1", "-p", &port])
            .arg("-sd")
            .arg(self.store_dir())
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                binary: self.binary.display().to_string(),
                source,
            })?;
        self.child = Some(child);
        self.port = self.wait_for_port(&ports_dir)?;
        Ok(())
    }

    /// Waits for the ports file the server writes once it listens, then for a TCP connect.
    fn wait_for_port(&mut self, ports_dir: &Path) -> Result<u16, HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(HarnessError::NotReady {
                    timeout: START_TIMEOUT,
                    log: format!("(exited with {status})\n{}", self.log()),
                });
            }
            if let Some(port) = read_ports_file(ports_dir)
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(port);
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady {
            timeout: START_TIMEOUT,
            log: self.log(),
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads `{"nats": ["nats://127.0.0.1:PORT"], ...}` from the server's `*.ports` file.
fn read_ports_file(dir: &Path) -> Option<u16> {
    let entry = fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|entry| entry.path().extension().is_some_and(|ext| ext == "ports"))?;
    let value: serde_json::Value = serde_json::from_slice(&fs::read(entry.path()).ok()?).ok()?;
    let url = value["nats"].get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// The nats-server the tests use; see the crate documentation for the search order.
pub fn find_binary() -> Result<PathBuf, HarnessError> {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from),
        Some(workspace_root().join(".tools/venv/bin/nats-server")),
    ]
    .into_iter()
    .flatten()
    .chain(std::env::var_os("PATH").into_iter().flat_map(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .collect::<Vec<_>>()
    }))
    .collect();
    let binary = candidates
        .iter()
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| HarnessError::NotFound(format!("looked at {candidates:?}")))?;
    check_version(binary)?;
    Ok(binary.clone())
}

/// The workspace root, where `make deps` puts its tools.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn check_version(binary: &Path) -> Result<(), HarnessError> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|source| HarnessError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let version = text.rsplit('v').next().unwrap_or_default();
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        return Err(HarnessError::TooOld {
            binary: binary.display().to_string(),
            version: text,
        });
    }
    Ok(())
}

/// Waits until `condition` holds, checking every 20 ms, or panics after `patience` with
/// `what` (test helper: a bounded wait instead of a bare sleep).
pub fn wait_until(patience: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The path of a workspace binary in the running test's profile folder (the parent of its
/// `deps/`). `cargo test` builds only the tested package's binaries: build the others with
/// `cargo build --workspace --bins` first, as `make test` does.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .filter(|dir| dir.ends_with("deps"))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"));
    profile_dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_kills_and_restarts_on_the_same_port_and_store() {
        let mut server = NatsServer::start().unwrap();
        let port = server.port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(server.store_dir().exists());
        assert!(server.log().contains("Server is ready"), "{}", server.log());
    }
}
