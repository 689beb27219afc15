//! Reading what runs back from the engine, by the labels Forge puts on every container.

use std::collections::{BTreeMap, HashMap};

use bollard::{
    Docker, models::ContainerInspectResponse, query_parameters::ListContainersOptionsBuilder,
};
use infracrew_protocol::{HealthPaths, PlanDigest, Resources, ServiceState};

pub const MANAGED_BY: &str = "infracrew.managed-by";
pub const ENVIRONMENT: &str = "infracrew.environment";
pub const SERVICE: &str = "infracrew.service";
pub const ROLE: &str = "infracrew.role";
pub const PLAN: &str = "infracrew.plan";
pub const REVISION: &str = "infracrew.revision";
pub const SLOT: &str = "infracrew.slot";
pub const PORT: &str = "infracrew.port";
pub const HEALTH_LIVE: &str = "infracrew.health.live";
pub const HEALTH_READY: &str = "infracrew.health.ready";
pub const IMAGE: &str = "infracrew.image";
/// The environment variables Forge set, comma-separated: engines add their own (HOSTNAME, PATH
/// from the image, ...), which are not part of the service's state.
pub const ENV_KEYS: &str = "infracrew.env-keys";
/// The state a revision replaced, as JSON: what `rollback` returns to.
pub const PREVIOUS: &str = "infracrew.previous";
pub const PUBLISHED_PORT: &str = "infracrew.published-port";

pub const FORGE: &str = "infracrew-forge";
pub const ROLE_REPLICA: &str = "replica";
pub const ROLE_EDGE: &str = "edge";

const MIB: i64 = 1024 * 1024;

/// The engine network of an environment.
pub fn network_name(environment: &str) -> String {
    format!("infracrew-{environment}")
}

/// The edge container of a service.
pub fn edge_name(environment: &str, service: &str) -> String {
    format!("infracrew-{environment}-{service}-edge")
}

/// A replica container: its name says which revision and slot it is, so a second start of the
/// same replica (after a crash, say) finds the first instead of making a duplicate.
pub fn replica_name(environment: &str, service: &str, revision: &str, slot: u32) -> String {
    format!("infracrew-{environment}-{service}-{revision}-{slot}")
}

/// What identifies a revision: everything about a replica except how many there are and where
/// the edge publishes them.
pub fn revision(state: &ServiceState) -> String {
    let identity = ServiceState {
        replicas: 0,
        published_port: None,
        ..state.clone()
    };
    let digest = PlanDigest::of(&identity).map(|digest| digest.as_str().to_owned());
    let digest = digest.unwrap_or_default();
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

/// A replica container as the engine reports it.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// On the environment network.
    pub ip: Option<String>,
    pub slot: u32,
    /// Seconds since the epoch.
    pub created: i64,
    /// What the container runs, one replica of it.
    pub state: ServiceState,
    /// Revision of `state`, computed from what the engine reports, not from the label.
    pub revision: String,
    pub previous: Option<ServiceState>,
}

/// The edge container of a service.
#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    pub running: bool,
    pub published_port: Option<u16>,
}

/// Everything Forge runs for one service.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub edge: Option<Edge>,
    pub replicas: Vec<Replica>,
}

impl Observed {
    /// The newest revision that has running replicas, counted.
    pub fn current(&self) -> Option<ServiceState> {
        let newest = self
            .replicas
            .iter()
            .filter(|replica| replica.running)
            .max_by_key(|replica| (replica.created, replica.slot))?;
        let replicas = self
            .replicas
            .iter()
            .filter(|replica| replica.running && replica.revision == newest.revision)
            .count();
        Some(ServiceState {
            replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
            published_port: self.edge.as_ref().and_then(|edge| edge.published_port),
            ..newest.state.clone()
        })
    }

    /// What the current revision replaced.
    pub fn previous(&self) -> Option<ServiceState> {
        let current = self.current()?;
        let revision = revision(&current);
        self.replicas
            .iter()
            .filter(|replica| replica.running && replica.revision == revision)
            .find_map(|replica| replica.previous.clone())
    }
}

/// A state in one line, for errors.
pub fn describe(state: Option<&ServiceState>) -> String {
    match state {
        Some(state) => format!("{} replica(s) of {}", state.replicas, state.image),
        None => "nothing runs".to_owned(),
    }
}

/// Lists and inspects what Forge runs for `service` in `environment`.
pub async fn observe(
    docker: &Docker,
    environment: &str,
    service: &str,
) -> Result<Observed, String> {
    let filters = HashMap::from([(
        "label",
        vec![
            format!("{MANAGED_BY}={FORGE}"),
            format!("{ENVIRONMENT}={environment}"),
            format!("{SERVICE}={service}"),
        ],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let summaries = docker
        .list_containers(Some(options))
        .await
        .map_err(|error| format!("listing containers: {error}"))?;
    let mut observed = Observed::default();
    for summary in summaries {
        let Some(id) = summary.id else { continue };
        let inspected = match docker.inspect_container(&id, None).await {
            Ok(inspected) => inspected,
            // Removed between the listing and now.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => continue,
            Err(error) => return Err(format!("inspecting container {id}: {error}")),
        };
        let labels = summary.labels.unwrap_or_default();
        let running = inspected
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        if labels.get(ROLE).map(String::as_str) == Some(ROLE_EDGE) {
            observed.edge = Some(Edge {
                id,
                running,
                published_port: labels.get(PUBLISHED_PORT).and_then(|p| p.parse().ok()),
            });
            continue;
        }
        let created = summary.created.unwrap_or_default();
        observed
            .replicas
            .push(replica(environment, id, created, &labels, &inspected));
    }
    observed.replicas.sort_by_key(|replica| replica.slot);
    Ok(observed)
}

/// A replica from its engine record: `labels` are the container's, `created` its creation time.
fn replica(
    environment: &str,
    id: String,
    created: i64,
    labels: &HashMap<String, String>,
    inspected: &ContainerInspectResponse,
) -> Replica {
    let running = inspected
        .state
        .as_ref()
        .and_then(|state| state.running)
        .unwrap_or(false);
    let state = replica_state(labels, inspected);
    Replica {
        name: inspected
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        running,
        ip: inspected
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .and_then(|networks| networks.get(&network_name(environment)))
            .and_then(|network| network.ip_address.clone())
            .filter(|ip| !ip.is_empty()),
        slot: labels.get(SLOT).and_then(|s| s.parse().ok()).unwrap_or(0),
        created,
        revision: revision(&state),
        state,
        previous: labels
            .get(PREVIOUS)
            .and_then(|json| serde_json::from_str(json).ok()),
        id,
    }
}

/// A replica Forge has just started, read with one inspection.
pub async fn started_replica(
    docker: &Docker,
    environment: &str,
    id: &str,
) -> Result<Replica, String> {
    let inspected = docker
        .inspect_container(id, None)
        .await
        .map_err(|error| format!("inspecting container {id}: {error}"))?;
    let labels = inspected
        .config
        .as_ref()
        .and_then(|config| config.labels.clone())
        .unwrap_or_default();
    let created = chrono::Utc::now().timestamp();
    Ok(replica(
        environment,
        id.to_owned(),
        created,
        &labels,
        &inspected,
    ))
}

/// One replica's state from what the engine reports; what the engine cannot tell (the health
/// paths, the port the service listens on) comes from the labels Forge set.
fn replica_state(
    labels: &HashMap<String, String>,
    inspected: &ContainerInspectResponse,
) -> ServiceState {
    let config = inspected.config.clone().unwrap_or_default();
    let host = inspected.host_config.clone().unwrap_or_default();
    let keys = labels.get(ENV_KEYS).map(String::as_str).unwrap_or_default();
    let keys: Vec<&str> = keys.split(',').filter(|key| !key.is_empty()).collect();
    let env: BTreeMap<String, String> = config
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let (key, value) = entry.split_once('=')?;
            keys.contains(&key)
                .then(|| (key.to_owned(), value.to_owned()))
        })
        .collect();
    let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
    let millis = |value: Option<i64>, per: i64| {
        u32::try_from((value.unwrap_or_default().max(0) * 1000 + per / 2) / per).unwrap_or(u32::MAX)
    };
    ServiceState {
        image: labels
            .get(IMAGE)
            .cloned()
            .or(config.image)
            .unwrap_or_default(),
        replicas: 1,
        port: label(PORT).parse().unwrap_or_default(),
        published_port: None,
        env,
        resources: Resources {
            cpu_request_millis: millis(host.cpu_shares, 1024),
            cpu_limit_millis: millis(host.nano_cpus, 1_000_000_000),
            memory_request_mib: u32::try_from(host.memory_reservation.unwrap_or_default() / MIB)
                .unwrap_or(u32::MAX),
            memory_limit_mib: u32::try_from(host.memory.unwrap_or_default() / MIB)
                .unwrap_or(u32::MAX),
        },
        health: HealthPaths {
            live: label(HEALTH_LIVE),
            ready: label(HEALTH_READY),
        },
        privileged: host.privileged.unwrap_or(false),
        host_network: host.network_mode.as_deref() == Some("host"),
    }
}
