//! Finding the container engine: `DOCKER_HOST` when set, otherwise the usual sockets, Docker's
//! first, then Podman's Docker-compatible service.

use std::{fmt, path::Path};

use bollard::{API_DEFAULT_VERSION, Docker};

/// The engine Forge talks to.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    /// Where it answered, for example `unix:///run/podman/podman.sock`.
    pub endpoint: String,
    /// `Docker` or `Podman`, with the engine's version.
    pub product: String,
    pub api_version: String,
}

impl fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (API {}) at {}",
            self.product, self.api_version, self.endpoint
        )
    }
}

/// No engine answered; every place tried, and why it was not used.
#[derive(Debug, thiserror::Error)]
#[error(
    "no container engine answers: {}. Start one: Docker (`systemctl start docker`), or Podman's \
     Docker-compatible service (`make engine` starts one with this repository's settings; by hand: \
     `podman system service --time=0 unix:///run/podman/podman.sock`), and name it in DOCKER_HOST \
     if it listens elsewhere",
    .tried.iter().map(|(place, why)| format!("{place} ({why})")).collect::<Vec<_>>().join("; ")
)]
pub struct NoEngine {
    pub tried: Vec<(String, String)>,
}

/// Where to look, in order, when `DOCKER_HOST` is not set.
fn usual_sockets() -> Vec<String> {
    let mut sockets = vec!["/var/run/docker.sock".to_owned()];
    if let Ok(runtime_dir) = std::env::var("XDG_RUNTIME_DIR") {
        sockets.push(format!("{runtime_dir}/podman/podman.sock"));
    }
    sockets.push("/run/podman/podman.sock".to_owned());
    sockets
}

/// Connects to `docker_host`, or when none is named, to the one `DOCKER_HOST` names or else the
/// first of the usual sockets that answers.
pub async fn connect(docker_host: Option<&str>) -> Result<(Docker, EngineInfo), NoEngine> {
    let named = docker_host
        .map(str::to_owned)
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .filter(|host| !host.is_empty());
    let candidates = match named {
        Some(host) => vec![host],
        None => usual_sockets()
            .into_iter()
            .map(|path| format!("unix://{path}"))
            .collect(),
    };
    let mut tried = Vec::new();
    for endpoint in candidates {
        if let Some(path) = endpoint.strip_prefix("unix://")
            && !Path::new(path).exists()
        {
            tried.push((endpoint, "no such socket".to_owned()));
            continue;
        }
        match try_engine(&endpoint).await {
            Ok(found) => return Ok(found),
            Err(reason) => tried.push((endpoint, reason)),
        }
    }
    Err(NoEngine { tried })
}

async fn try_engine(endpoint: &str) -> Result<(Docker, EngineInfo), String> {
    let docker = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_host(endpoint)
    }
    .map_err(|error| error.to_string())?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|error| format!("it does not answer: {error}"))?;
    let version = docker
        .version()
        .await
        .map_err(|error| format!("it does not answer: {error}"))?;
    let podman = version
        .components
        .iter()
        .flatten()
        .any(|component| component.name.to_lowercase().contains("podman"));
    let product = format!(
        "{} {}",
        if podman { "Podman" } else { "Docker" },
        version.version.unwrap_or_default()
    );
    let info = EngineInfo {
        endpoint: endpoint.to_owned(),
        product,
        api_version: version.api_version.unwrap_or_default(),
    };
    Ok((docker, info))
}
