//! The container driver: services run as containers on a Docker Engine API (Docker, or Podman's
//! Docker-compatible service), one network per environment, an edge per service on its
//! published port, and the replicas behind it. What runs is read back from the engine by the
//! labels on every container, so a restarted Forge or a hand-made change is seen as it is.

pub mod edge;
pub mod engine;
pub mod image;
mod observe;
mod rollout;

use std::{path::PathBuf, time::Duration};

use bollard::Docker;
use infracrew_protocol::ServiceState;

pub use self::engine::EngineInfo;
use crate::driver::{Apply, ApplyContext, Driver, DriverError};

/// How the container driver rolls out and checks health.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// The engine's address (`unix:///...`, `tcp://...`); `DOCKER_HOST` or the usual sockets
    /// when not set.
    pub docker_host: Option<String>,
    /// How long a new replica may take to answer its readiness path.
    pub health_timeout: Duration,
    /// Time between readiness probes.
    pub probe_interval: Duration,
    /// How long a replica taken out of the edge keeps serving its open connections.
    pub drain: Duration,
    /// The edge image; built from `busybox` when the engine does not have it.
    pub edge_image: String,
    /// A static busybox binary, for building the edge image.
    pub busybox: PathBuf,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        ContainerSettings {
            docker_host: None,
            health_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_millis(250),
            drain: Duration::from_secs(1),
            edge_image: "infracrew/edge:1".to_owned(),
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

/// Deploys services as containers.
#[derive(Debug, Clone)]
pub struct ContainerDriver {
    docker: Docker,
    engine: EngineInfo,
    settings: ContainerSettings,
}

/// Why the container driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    NoEngine(#[from] engine::NoEngine),
    #[error(
        "the edge image {image} is not on the engine and cannot be built: reading {busybox}: {reason} \
         (install a static busybox, Debian's busybox-static, or name one with --busybox)"
    )]
    NoBusybox {
        image: String,
        busybox: String,
        reason: String,
    },
    #[error(transparent)]
    EdgeImage(#[from] image::BuildError),
}

impl ContainerDriver {
    pub const NAME: &'static str = "container";

    /// Finds the engine and makes sure the edge image is there.
    pub async fn connect(settings: ContainerSettings) -> Result<Self, ConnectError> {
        let (docker, engine) = engine::connect(settings.docker_host.as_deref()).await?;
        tracing::info!(%engine, "using the container engine");
        if docker.inspect_image(&settings.edge_image).await.is_err() {
            let busybox =
                std::fs::read(&settings.busybox).map_err(|error| ConnectError::NoBusybox {
                    image: settings.edge_image.clone(),
                    busybox: settings.busybox.display().to_string(),
                    reason: error.to_string(),
                })?;
            tracing::info!(image = %settings.edge_image, "building the edge image");
            edge::build_edge_image(&docker, &settings.edge_image, busybox).await?;
        }
        Ok(ContainerDriver {
            docker,
            engine,
            settings,
        })
    }

    pub fn engine(&self) -> &EngineInfo {
        &self.engine
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    async fn observe(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<observe::Observed, DriverError> {
        match observe::observe(&self.docker, environment, service).await {
            Ok(observed) => Ok(observed),
            Err(reason) => Err(self.failure(reason).await),
        }
    }

    fn failed(reason: impl Into<String>) -> DriverError {
        DriverError::step_failed(Self::NAME, reason)
    }

    /// What a failure says about the step: the engine's errors arrive as text, so the engine is
    /// asked. Still answering, the step failed; silent, whether the step took is unknown, and
    /// the apply is taken up again instead of rolled back.
    async fn failure(&self, reason: String) -> DriverError {
        match self.docker.ping().await {
            Ok(_) => Self::failed(reason),
            Err(error) => DriverError::unreachable(
                Self::NAME,
                format!(
                    "{reason} ({} does not answer: {error})",
                    self.engine.endpoint
                ),
            ),
        }
    }
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn current(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        let observed = self.observe(environment, service).await?;
        Ok(observed.current())
    }

    async fn previous(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        let observed = self.observe(environment, service).await?;
        Ok(observed.previous())
    }
}

impl Apply for ContainerDriver {
    async fn check(&self) -> Result<String, DriverError> {
        self.docker
            .ping()
            .await
            .map(|_| self.engine.to_string())
            .map_err(|error| {
                DriverError::unreachable(
                    Self::NAME,
                    format!("{} does not answer: {error}", self.engine.endpoint),
                )
            })
    }

    async fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> Result<(), DriverError> {
        let rollout = rollout::Rollout {
            docker: &self.docker,
            settings: &self.settings,
            environment,
            service,
            context,
        };
        match rollout.converge(state).await {
            Ok(()) => Ok(()),
            Err(reason) => Err(self.failure(reason).await),
        }
    }

    /// Every replica of the desired revision runs and answers its readiness path.
    async fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> Result<(), DriverError> {
        let observed = self.observe(environment, service).await?;
        let current = observed.current();
        if current.as_ref() != state {
            return Err(Self::failed(format!(
                "{environment}/{service} does not run as approved: {}",
                observe::describe(current.as_ref())
            )));
        }
        if let (Some(state), Some(edge)) = (state, &observed.edge) {
            for replica in observed.replicas.iter().filter(|r| r.running) {
                let ip = replica.ip.as_deref().unwrap_or_default();
                if let Err(error) =
                    edge::probe(&self.docker, &edge.id, ip, state.port, &state.health.ready).await
                {
                    return Err(self.failure(format!("{}: {error}", replica.name)).await);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use infracrew_protocol::{Strategy, examples};

    use super::*;
    use crate::driver::{FailureKind, Progress};

    #[tokio::test]
    async fn steps_on_an_engine_that_does_not_answer_are_unreachable_not_failed() {
        let socket =
            std::env::temp_dir().join(format!("infracrew-no-engine-{}.sock", std::process::id()));
        let endpoint = format!("unix://{}", socket.display());
        // The socket file stays after its listener is gone: an engine that went away after
        // Forge started.
        let _ = std::fs::remove_file(&socket);
        drop(std::os::unix::net::UnixListener::bind(&socket).expect("a socket to bind"));
        let docker = Docker::connect_with_unix(&endpoint, 5, bollard::API_DEFAULT_VERSION)
            .expect("a client for the socket");
        let driver = ContainerDriver {
            docker,
            engine: EngineInfo {
                endpoint: endpoint.clone(),
                product: "Podman 5.4.2".into(),
                api_version: "1.41".into(),
            },
            settings: ContainerSettings::default(),
        };
        let context = ApplyContext {
            plan_id: examples::plan_spec().plan_id,
            digest: examples::build_status().digest.to_string(),
            strategy: Strategy::Rolling,
            expected: None,
            progress: Progress::silent(),
        };
        let errors = [
            driver.current("dev", "social-intel").await.err(),
            driver
                .apply("dev", "social-intel", None, &context)
                .await
                .err(),
            driver.verify("dev", "social-intel", None).await.err(),
        ];
        for error in errors {
            let error = error.expect("no engine, no success");
            assert_eq!(error.kind, FailureKind::Unreachable, "{error}");
            assert!(error.reason.contains(&endpoint), "{error}");
        }
        let _ = std::fs::remove_file(&socket);
    }
}
