//! What every agent process shares: its flags, logging, connecting and provisioning the bus,
//! heartbeats, health and metrics over HTTP, and a graceful stop on SIGTERM or Ctrl-C.

mod heartbeat;
mod http;
pub mod logging;
pub mod metrics;
pub mod readiness;

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::connection::State as ConnectionState;
use chrono::{DateTime, Utc};
use infracrew_bus::{
    Bus, ConnectArgs, ConnectError, ConsumerSettings, ConsumerSpec, Handler, Inbound, Kv,
    ProvisionError, ProvisionOptions, Shutdown, Topology, WorkStats, consumers, parse_duration,
    shutdown_on_signal,
};
use infracrew_protocol::AgentRole;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    metrics::{AgentMetrics, Backlog, InstanceLabels},
    readiness::{Check, Readiness},
};

/// Flags every agent takes.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub bus: ConnectArgs,
    #[command(flatten)]
    pub log: logging::LogArgs,
    /// How often this agent publishes its heartbeat.
    #[arg(long, env = "INFRACREW_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Copies of each stream and bucket when provisioning (3 on a three-node cluster).
    #[arg(long, env = "INFRACREW_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Where /health/live, /health/ready and /metrics are served (and the Conductor's Slack
    /// endpoint). Default 127.0.0.1 port 8780 for the Conductor, 8781 Atlas, 8782 Sentinel,
    /// 8783 Forge; port 0 picks a free one.
    #[arg(long, env = "INFRACREW_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// The HTTP address a role uses when none is given, distinct per role so a local crew fits
/// on one host.
pub fn default_listen(role: AgentRole) -> SocketAddr {
    let port = match role {
        AgentRole::Conductor => 8780,
        AgentRole::Atlas => 8781,
        AgentRole::Sentinel => 8782,
        AgentRole::Forge => 8783,
    };
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("provisioning the bus failed: {0}")]
    Provision(#[from] ProvisionError),
    #[error(
        "cannot serve health and metrics on {address}: {reason}; set --listen (INFRACREW_LISTEN) to a free address"
    )]
    Listen { address: SocketAddr, reason: String },
}

/// Who this agent process is, as its heartbeats say.
#[derive(Debug)]
pub struct Identity {
    pub instance_id: Uuid,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub interval: Duration,
}

/// A started agent: connected, with the crew's streams, consumers and buckets in place.
#[derive(Debug, Clone)]
pub struct Agent {
    pub role: AgentRole,
    pub bus: Bus,
    pub topology: Topology,
    pub stats: Arc<WorkStats>,
    pub identity: Arc<Identity>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<AgentMetrics>,
    /// The durable consumers this process reads, whose backlogs it reports.
    consumers: Arc<Mutex<BTreeSet<String>>>,
    mounted: Arc<http::Mounted>,
}

/// Why an agent's work stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("consumer {durable} is not usable: {reason}")]
    Consumer { durable: String, reason: String },
    #[error("cannot use {what}: {reason}")]
    Dependency { what: String, reason: String },
    #[error(transparent)]
    Consume(#[from] infracrew_bus::ConsumeError),
}

fn unusable(durable: &str, error: impl std::fmt::Display) -> WorkError {
    WorkError::Consumer {
        durable: durable.to_owned(),
        reason: error.to_string(),
    }
}

/// Runs an agent process from its parsed flags: logging, its HTTP address, start, `work`
/// until SIGTERM or Ctrl-C, and a clean stop. Errors are printed for a person; the exit code
/// says failure.
pub async fn main<W, Fut>(role: AgentRole, args: AgentArgs, work: W) -> ExitCode
where
    W: FnOnce(Agent, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), WorkError>>,
{
    let _telemetry = logging::init(&args.log, &format!("infracrew-{role}"));
    let started = async {
        let address = args.listen.unwrap_or_else(|| default_listen(role));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| StartError::Listen {
                address,
                reason: error.to_string(),
            })?;
        Ok::<_, StartError>((Agent::start(role, &args).await?, listener))
    };
    let (agent, listener) = match started.await {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(%error, "{role} could not start");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_on_signal();
    let work = work(agent.clone(), shutdown.clone());
    match agent.run(Some(listener), shutdown, work).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{role} stopped on an error");
            ExitCode::FAILURE
        }
    }
}

impl Agent {
    /// Connects as `infracrew-<role>` and provisions what is missing.
    pub async fn start(role: AgentRole, args: &AgentArgs) -> Result<Self, StartError> {
        let bus = Bus::connect(&args.bus, &format!("infracrew-{role}")).await?;
        let options = ProvisionOptions {
            replicas: args.replicas,
            ..ProvisionOptions::default()
        };
        let topology = Topology::crew(&options);
        let report = topology.provision_as(&bus, role).await?;
        for item in report.changes() {
            tracing::info!(%item, "provisioned");
        }
        let identity = Identity {
            instance_id: Uuid::new_v4(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Utc::now(),
            interval: args.heartbeat_interval,
        };
        tracing::info!(
            agent = %role,
            instance = %identity.instance_id,
            nats = bus.url(),
            "connected to NATS with JetStream"
        );
        let stats = Arc::new(WorkStats::default());
        let metrics = AgentMetrics::new(
            InstanceLabels {
                agent: role.to_string(),
                instance_id: identity.instance_id.to_string(),
            },
            &identity.version,
            &stats,
        );
        // The role's consumers are needs from the start, so no heartbeat says "ready" before
        // the work is bound.
        let readiness = Readiness::default();
        for durable in consumers::read_by(role) {
            readiness.fail(&consumer_check(durable), "not bound yet");
        }
        Ok(Agent {
            role,
            bus,
            topology,
            stats,
            identity: Arc::new(identity),
            readiness: Arc::new(readiness),
            metrics: Arc::new(metrics),
            consumers: Arc::default(),
            mounted: Arc::default(),
        })
    }

    /// Opens a provisioned KV bucket the agent depends on.
    pub async fn bucket<T>(&self, name: &str) -> Result<Kv<T>, WorkError> {
        self.bus
            .kv(name)
            .await
            .map_err(|error| WorkError::Dependency {
                what: format!("the {name} bucket"),
                reason: error.to_string(),
            })
    }

    /// Serves `routes` beside health and metrics on the agent's HTTP address; false when
    /// routes were mounted already.
    pub fn mount(&self, routes: axum::Router) -> bool {
        self.mounted.set(routes)
    }

    /// Reads this role's work through its durable consumer until shutdown, counted in the
    /// statistics its heartbeats report.
    pub async fn consume<T, H>(
        &self,
        settings: ConsumerSettings,
        handler: H,
        shutdown: Shutdown,
    ) -> Result<(), WorkError>
    where
        T: Inbound,
        H: Handler<T>,
    {
        self.consume_from(consumers::for_role(self.role), settings, handler, shutdown)
            .await
    }

    /// Reads one of the crew's durable consumers (the role's own, or one it keeps beside it)
    /// until shutdown. The consumer is a readiness need while it runs.
    pub async fn consume_from<T, H>(
        &self,
        durable: &str,
        settings: ConsumerSettings,
        handler: H,
        shutdown: Shutdown,
    ) -> Result<(), WorkError>
    where
        T: Inbound,
        H: Handler<T>,
    {
        let spec = self.spec_of(durable)?;
        let check = consumer_check(durable);
        let backlog = self.backlog(&spec).await.inspect_err(|error| {
            self.readiness.fail(&check, error.to_string());
        })?;
        self.metrics.set_backlog(durable, backlog);
        self.consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(durable.to_owned());
        self.readiness
            .pass(&check, format!("bound on stream {}", spec.stream));
        let outcome = self
            .bus
            .consume(&spec, settings, self.stats.clone(), handler, shutdown)
            .await;
        if let Err(error) = &outcome {
            self.readiness.fail(&check, error.to_string());
        }
        Ok(outcome?)
    }

    /// Creates one of the crew's on-demand consumers if it is missing (it then reads the
    /// messages published from now on).
    pub async fn create_consumer(&self, durable: &str) -> Result<(), WorkError> {
        let provisioned = self
            .spec_of(durable)?
            .ensure(&self.bus)
            .await
            .map_err(|error| unusable(durable, error))?;
        if provisioned.created {
            tracing::info!(item = %provisioned, "provisioned");
        }
        Ok(())
    }

    /// Whether one of the crew's consumers exists.
    pub async fn has_consumer(&self, durable: &str) -> Result<bool, WorkError> {
        self.spec_of(durable)?
            .exists(&self.bus)
            .await
            .map_err(|error| unusable(durable, error))
    }

    fn spec_of(&self, durable: &str) -> Result<ConsumerSpec, WorkError> {
        self.topology
            .consumer(durable)
            .cloned()
            .ok_or_else(|| unusable(durable, "not in the crew's topology"))
    }

    async fn backlog(&self, spec: &ConsumerSpec) -> Result<Backlog, WorkError> {
        let stream = self
            .bus
            .jetstream()
            .get_stream_no_info(&spec.stream)
            .await
            .map_err(|error| unusable(&spec.durable, error))?;
        let info = stream
            .consumer_info(&spec.durable)
            .await
            .map_err(|error| unusable(&spec.durable, error))?;
        Ok(Backlog {
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
        })
    }

    /// Refreshes the backlog metrics of the consumers this process reads.
    async fn observe_consumers(&self) {
        let durables: Vec<String> = self
            .consumers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .cloned()
            .collect();
        for durable in durables {
            let Ok(spec) = self.spec_of(&durable) else {
                continue;
            };
            match self.backlog(&spec).await {
                Ok(backlog) => self.metrics.set_backlog(&durable, backlog),
                Err(error) => tracing::debug!(%error, "backlog not read"),
            }
        }
    }

    /// Every need with its state: the NATS connection, the consumers, and the role's own.
    pub fn checks(&self) -> BTreeMap<String, Check> {
        let mut checks = self.readiness.checks();
        let state = self.bus.client().connection_state();
        checks.insert(
            "nats".to_owned(),
            Check {
                ok: state == ConnectionState::Connected,
                detail: format!("{} ({state})", self.bus.url()),
            },
        );
        checks
    }

    /// The needs not met, each as "need: what is wrong"; empty when the agent is ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.checks()
            .into_iter()
            .filter(|(_, check)| !check.ok)
            .map(|(name, check)| format!("{name}: {}", check.detail))
            .collect()
    }

    /// Runs `work` with heartbeats and the HTTP endpoint (when given a listener) beside it
    /// until it ends or `shutdown` fires, then stops them and drains the connection.
    pub async fn run<W, E>(
        self,
        listener: Option<TcpListener>,
        shutdown: Shutdown,
        work: W,
    ) -> Result<(), E>
    where
        W: Future<Output = Result<(), E>>,
    {
        let heartbeats = tokio::spawn(heartbeat::publish_heartbeats(
            self.clone(),
            shutdown.clone(),
        ));
        let http = listener.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(
                    "serving /health/live, /health/ready and /metrics on http://{address}"
                );
            }
            let routes = http::router(self.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, routes)
                    .with_graceful_shutdown(async move { shutdown.cancelled().await })
                    .await
                {
                    tracing::error!(%error, "the HTTP endpoint stopped");
                }
            })
        });
        let outcome = work.await;
        shutdown.cancel();
        let _ = heartbeats.await;
        if let Some(http) = http {
            let _ = http.await;
        }
        self.bus.drain().await;
        tracing::info!(agent = %self.role, "stopped");
        outcome
    }
}

fn consumer_check(durable: &str) -> String {
    format!("consumer {durable}")
}
