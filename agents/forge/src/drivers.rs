//! Which driver serves which environment: dev on the container engine and prod on the dry-run
//! driver, say, from one Forge.

use std::collections::BTreeMap;

use infracrew_protocol::ServiceState;

use crate::{
    ci_dispatch::CiDispatchDriver,
    container::ContainerDriver,
    driver::{Apply, ApplyContext, Driver, DriverError},
    dry_run::DryRunDriver,
};

/// Every driver Forge can run, behind one type.
#[derive(Debug, Clone)]
pub enum AnyDriver {
    // Boxed: they differ a lot in size.
    DryRun(Box<DryRunDriver>),
    Container(Box<ContainerDriver>),
    CiDispatch(Box<CiDispatchDriver>),
}

impl Driver for AnyDriver {
    fn name(&self) -> &'static str {
        match self {
            AnyDriver::DryRun(driver) => driver.name(),
            AnyDriver::Container(driver) => driver.name(),
            AnyDriver::CiDispatch(driver) => driver.name(),
        }
    }

    async fn current(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        match self {
            AnyDriver::DryRun(driver) => driver.current(environment, service).await,
            AnyDriver::Container(driver) => driver.current(environment, service).await,
            AnyDriver::CiDispatch(driver) => driver.current(environment, service).await,
        }
    }

    async fn previous(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        match self {
            AnyDriver::DryRun(driver) => driver.previous(environment, service).await,
            AnyDriver::Container(driver) => driver.previous(environment, service).await,
            AnyDriver::CiDispatch(driver) => driver.previous(environment, service).await,
        }
    }
}

impl Apply for AnyDriver {
    fn rolls_back(&self) -> bool {
        match self {
            AnyDriver::DryRun(driver) => driver.rolls_back(),
            AnyDriver::Container(driver) => driver.rolls_back(),
            AnyDriver::CiDispatch(driver) => driver.rolls_back(),
        }
    }

    fn apply_verifies(&self) -> bool {
        match self {
            AnyDriver::DryRun(driver) => driver.apply_verifies(),
            AnyDriver::Container(driver) => driver.apply_verifies(),
            AnyDriver::CiDispatch(driver) => driver.apply_verifies(),
        }
    }

    async fn check(&self) -> Result<String, DriverError> {
        match self {
            AnyDriver::DryRun(driver) => driver.check().await,
            AnyDriver::Container(driver) => driver.check().await,
            AnyDriver::CiDispatch(driver) => driver.check().await,
        }
    }

    async fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> Result<(), DriverError> {
        match self {
            AnyDriver::DryRun(driver) => driver.apply(environment, service, state, context).await,
            AnyDriver::Container(driver) => {
                driver.apply(environment, service, state, context).await
            }
            AnyDriver::CiDispatch(driver) => {
                driver.apply(environment, service, state, context).await
            }
        }
    }

    async fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> Result<(), DriverError> {
        match self {
            AnyDriver::DryRun(driver) => driver.verify(environment, service, state).await,
            AnyDriver::Container(driver) => driver.verify(environment, service, state).await,
            AnyDriver::CiDispatch(driver) => driver.verify(environment, service, state).await,
        }
    }
}

/// The driver of each service and of each environment, and the one for the rest: a
/// service's own driver comes first, then its environment's.
#[derive(Debug, Clone)]
pub struct DriverMap<D> {
    default: D,
    by_environment: BTreeMap<String, D>,
    by_service: BTreeMap<String, D>,
}

impl<D> DriverMap<D> {
    /// `default` for every environment.
    pub fn new(default: D) -> Self {
        DriverMap {
            default,
            by_environment: BTreeMap::new(),
            by_service: BTreeMap::new(),
        }
    }

    /// `driver` for `environment`.
    pub fn with(mut self, environment: impl Into<String>, driver: D) -> Self {
        self.by_environment.insert(environment.into(), driver);
        self
    }

    /// `driver` for `service`, in every environment.
    pub fn with_service(mut self, service: impl Into<String>, driver: D) -> Self {
        self.by_service.insert(service.into(), driver);
        self
    }

    /// The driver of `service` in `environment`.
    pub fn get(&self, environment: &str, service: &str) -> &D {
        self.by_service
            .get(service)
            .or_else(|| self.by_environment.get(environment))
            .unwrap_or(&self.default)
    }

    /// The default driver, then each environment's and each service's.
    pub fn all(&self) -> impl Iterator<Item = &D> {
        std::iter::once(&self.default)
            .chain(self.by_environment.values())
            .chain(self.by_service.values())
    }
}

/// A driver Forge can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    /// Records what runs in a KV bucket: real diffs, applies only recorded.
    DryRun,
    /// Containers on a Docker Engine API (Docker, or Podman's compatible service).
    Container,
    /// A GitHub Actions workflow, dispatched and followed (--ci-repository, --ci-workflow).
    CiDispatch,
}

/// `SERVICE=DRIVER`, as `--service-driver` takes it.
pub fn parse_service_driver(text: &str) -> Result<(String, DriverKind), String> {
    parse_driver_of("SERVICE", "alfred-bot=ci-dispatch", text)
}

/// `ENV=DRIVER`, as `--environment-driver` takes it.
pub fn parse_environment_driver(text: &str) -> Result<(String, DriverKind), String> {
    parse_driver_of("ENVIRONMENT", "dev=container", text)
}

/// `NAME=DRIVER`, where NAME is a `what` (`SERVICE`, `ENVIRONMENT`).
fn parse_driver_of(what: &str, example: &str, text: &str) -> Result<(String, DriverKind), String> {
    use clap::ValueEnum as _;
    let (name, driver) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not {what}=DRIVER, for example {example}"))?;
    let driver = DriverKind::from_str(driver, true).map_err(|_| {
        format!("{driver:?} is not a driver; the drivers are dry-run, container and ci-dispatch")
    })?;
    if name.is_empty() {
        return Err(format!("{text:?} names no {}", what.to_lowercase()));
    }
    Ok((name.to_owned(), driver))
}

/// Forge's driver flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DriverArgs {
    /// The driver of every environment not named in --environment-driver.
    #[arg(long, env = "INFRACREW_DRIVER", value_enum, default_value_t = DriverKind::DryRun)]
    pub driver: DriverKind,
    /// The driver of one environment, as ENV=DRIVER (repeatable; the variable takes a
    /// comma-separated list), for example dev=container.
    #[arg(
        long = "environment-driver",
        env = "INFRACREW_ENVIRONMENT_DRIVERS",
        value_delimiter = ',',
        value_parser = parse_environment_driver
    )]
    pub by_environment: Vec<(String, DriverKind)>,
    /// The driver of one service in every environment, as SERVICE=DRIVER (repeatable; the
    /// variable takes a comma-separated list); it comes before its environment's.
    #[arg(
        long = "service-driver",
        env = "INFRACREW_SERVICE_DRIVERS",
        value_delimiter = ',',
        value_parser = parse_service_driver
    )]
    pub by_service: Vec<(String, DriverKind)>,
    /// The repository whose workflow deploys (ci-dispatch driver), OWNER/REPO.
    #[arg(long, env = "INFRACREW_CI_REPOSITORY")]
    pub ci_repository: Option<String>,
    /// The workflow file (or id) the ci-dispatch driver dispatches.
    #[arg(long, env = "INFRACREW_CI_WORKFLOW", default_value = "deploy.yml")]
    pub ci_workflow: String,
    /// The branch or tag the workflow runs on.
    #[arg(long, env = "INFRACREW_CI_REF", default_value = "main")]
    pub ci_ref: String,
    /// How often a workflow run is looked at.
    #[arg(long, env = "INFRACREW_CI_POLL", default_value = "5s", value_parser = infracrew_bus::parse_duration)]
    pub ci_poll: std::time::Duration,
    /// How long a workflow run may take before the apply fails.
    #[arg(long, env = "INFRACREW_CI_TIMEOUT", default_value = "30m", value_parser = infracrew_bus::parse_duration)]
    pub ci_timeout: std::time::Duration,
    /// The GitHub REST API (GitHub Enterprise Server: https://HOST/api/v3).
    #[arg(
        long,
        env = "INFRACREW_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// A token that may dispatch the workflow and read its runs (Actions: read and write).
    #[arg(long, env = "INFRACREW_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// How long a new replica may take to answer its readiness path before the rollout is
    /// rolled back (container driver).
    #[arg(long, env = "INFRACREW_HEALTH_TIMEOUT", default_value = "60s", value_parser = infracrew_bus::parse_duration)]
    pub health_timeout: std::time::Duration,
    /// How long a replica taken out of the edge may finish its connections before it is
    /// removed (container driver).
    #[arg(long, env = "INFRACREW_DRAIN", default_value = "1s", value_parser = infracrew_bus::parse_duration)]
    pub drain: std::time::Duration,
    /// The image of the edge that fronts every service (container driver); built from
    /// --busybox when the engine does not have it.
    #[arg(long, env = "INFRACREW_EDGE_IMAGE", default_value = "infracrew/edge:1")]
    pub edge_image: String,
    /// The container engine's address; without it, DOCKER_HOST or else the usual sockets
    /// (Docker's, then Podman's).
    #[arg(long, env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// A static busybox binary, for building the edge image.
    #[arg(long, env = "INFRACREW_BUSYBOX", default_value = "/bin/busybox")]
    pub busybox: std::path::PathBuf,
}

/// Why a driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the dry-run driver's bucket: {0}")]
    DryRun(#[from] infracrew_bus::KvError),
    #[error("the container driver: {0}")]
    Container(#[from] crate::container::ConnectError),
    #[error("the ci-dispatch driver: {0}")]
    CiDispatch(String),
}

impl DriverArgs {
    /// Opens each driver the flags name, once, and maps the environments to them.
    pub async fn open(&self, bus: &infracrew_bus::Bus) -> Result<DriverMap<AnyDriver>, OpenError> {
        let mut opened: BTreeMap<&'static str, AnyDriver> = BTreeMap::new();
        let mut map = DriverMap::new(self.opened(bus, self.driver, &mut opened).await?);
        for (environment, kind) in &self.by_environment {
            let driver = self.opened(bus, *kind, &mut opened).await?;
            map = map.with(environment.clone(), driver);
        }
        for (service, kind) in &self.by_service {
            let driver = self.opened(bus, *kind, &mut opened).await?;
            map = map.with_service(service.clone(), driver);
        }
        Ok(map)
    }

    async fn opened(
        &self,
        bus: &infracrew_bus::Bus,
        kind: DriverKind,
        opened: &mut BTreeMap<&'static str, AnyDriver>,
    ) -> Result<AnyDriver, OpenError> {
        let name = kind_name(kind);
        if let Some(driver) = opened.get(name) {
            return Ok(driver.clone());
        }
        let driver = match kind {
            DriverKind::DryRun => AnyDriver::DryRun(Box::new(DryRunDriver::open(bus).await?)),
            DriverKind::Container => {
                let settings = crate::container::ContainerSettings {
                    docker_host: self.docker_host.clone(),
                    health_timeout: self.health_timeout,
                    drain: self.drain,
                    edge_image: self.edge_image.clone(),
                    busybox: self.busybox.clone(),
                    ..Default::default()
                };
                AnyDriver::Container(Box::new(ContainerDriver::connect(settings).await?))
            }
            DriverKind::CiDispatch => {
                let repository = self.ci_repository.clone().ok_or_else(|| {
                    OpenError::CiDispatch(
                        "it needs --ci-repository (INFRACREW_CI_REPOSITORY), the OWNER/REPO whose workflow deploys".into(),
                    )
                })?;
                let settings = crate::ci_dispatch::CiDispatchSettings {
                    api_url: self.github_api_url.clone(),
                    token: self.github_token.clone(),
                    repository,
                    workflow: self.ci_workflow.clone(),
                    git_ref: self.ci_ref.clone(),
                    poll: self.ci_poll,
                    timeout: self.ci_timeout,
                };
                AnyDriver::CiDispatch(Box::new(
                    CiDispatchDriver::open(bus, settings)
                        .await
                        .map_err(OpenError::CiDispatch)?,
                ))
            }
        };
        opened.insert(name, driver.clone());
        Ok(driver)
    }

    /// Which driver serves what, for the start-up log.
    pub fn describe(&self) -> String {
        let mut text = format!("{} by default", kind_name(self.driver));
        for (environment, kind) in &self.by_environment {
            text.push_str(&format!(", {} in {environment}", kind_name(*kind)));
        }
        for (service, kind) in &self.by_service {
            text.push_str(&format!(", {} for {service}", kind_name(*kind)));
        }
        text
    }
}

fn kind_name(kind: DriverKind) -> &'static str {
    match kind {
        DriverKind::DryRun => DryRunDriver::NAME,
        DriverKind::Container => ContainerDriver::NAME,
        DriverKind::CiDispatch => CiDispatchDriver::NAME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_environment_gets_its_driver_and_the_rest_the_default() {
        let map = DriverMap::new("dry-run")
            .with("dev", "container")
            .with_service("alfred-bot", "ci-dispatch");
        assert_eq!(*map.get("dev", "social-intel"), "container");
        assert_eq!(*map.get("prod", "social-intel"), "dry-run");
        assert_eq!(*map.get("dev", "alfred-bot"), "ci-dispatch");
    }

    #[test]
    fn environment_driver_flags_name_what_is_wrong() {
        assert_eq!(
            parse_environment_driver("dev=container"),
            Ok(("dev".to_owned(), DriverKind::Container))
        );
        assert_eq!(
            parse_environment_driver("dev"),
            Err("\"dev\" is not ENVIRONMENT=DRIVER, for example dev=container".to_owned())
        );
        assert_eq!(
            parse_environment_driver("dev=k8s"),
            Err(
                "\"k8s\" is not a driver; the drivers are dry-run, container and ci-dispatch"
                    .to_owned()
            )
        );
        assert!(parse_environment_driver("=container").is_err());
        assert_eq!(
            parse_service_driver("alfred-bot=ci-dispatch"),
            Ok(("alfred-bot".to_owned(), DriverKind::CiDispatch))
        );
        assert_eq!(
            parse_service_driver("=container"),
            Err("\"=container\" names no service".to_owned())
        );
    }
}
