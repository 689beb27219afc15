//! What every agent process shares: its flags, logging, connecting and provisioning the bus,
//! heartbeats, and a graceful stop on SIGTERM or Ctrl-C.

pub mod logging;

use std::{future::Future, process::ExitCode, sync::Arc, time::Duration};

use infracrew_bus::{
    Bus, ConnectArgs, ConnectError, ConsumerSettings, ConsumerSpec, Handler, HeartbeatSettings,
    Inbound, Kv, ProvisionError, ProvisionOptions, Shutdown, Topology, WorkStats, consumers,
    parse_duration, publish_heartbeats, role_subjects, shutdown_on_signal,
};
use infracrew_protocol::AgentRole;

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
}

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("provisioning the bus failed: {0}")]
    Provision(#[from] ProvisionError),
}

/// A started agent: connected, with the crew's streams, consumers and buckets in place.
#[derive(Debug, Clone)]
pub struct Agent {
    pub role: AgentRole,
    pub bus: Bus,
    pub topology: Topology,
    pub stats: Arc<WorkStats>,
    heartbeat: HeartbeatSettings,
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

/// Runs an agent process from its parsed flags: logging, start, `work` until SIGTERM or
/// Ctrl-C, and a clean stop. Errors are printed for a person; the exit code says failure.
pub async fn main<W, Fut>(role: AgentRole, args: AgentArgs, work: W) -> ExitCode
where
    W: FnOnce(Agent, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), WorkError>>,
{
    logging::init(&args.log);
    let agent = match Agent::start(role, &args).await {
        Ok(agent) => agent,
        Err(error) => {
            tracing::error!(%error, "{role} could not start");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_on_signal();
    let work = work(agent.clone(), shutdown.clone());
    match agent.run(shutdown, work).await {
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
        let report = topology.provision(&bus).await?;
        for item in report.created() {
            tracing::info!(%item, "provisioned");
        }
        let heartbeat = HeartbeatSettings {
            agent: role,
            instance_id: uuid::Uuid::new_v4(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: chrono::Utc::now(),
            interval: args.heartbeat_interval,
        };
        tracing::info!(
            agent = %role,
            instance = %heartbeat.instance_id,
            nats = bus.url(),
            "connected to NATS with JetStream"
        );
        Ok(Agent {
            role,
            bus,
            topology,
            stats: Arc::default(),
            heartbeat,
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
    /// until shutdown.
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
        self.bus
            .consume(&spec, settings, self.stats.clone(), handler, shutdown)
            .await?;
        Ok(())
    }

    fn spec_of(&self, durable: &str) -> Result<ConsumerSpec, WorkError> {
        self.topology
            .consumer(durable)
            .cloned()
            .ok_or_else(|| WorkError::Consumer {
                durable: durable.to_owned(),
                reason: "not in the crew's topology".into(),
            })
    }

    /// Runs `work` with heartbeats beside it until it ends or `shutdown` fires, then stops
    /// the heartbeats and drains the connection.
    pub async fn run<W, E>(self, shutdown: Shutdown, work: W) -> Result<(), E>
    where
        W: Future<Output = Result<(), E>>,
    {
        let heartbeats = tokio::spawn(publish_heartbeats(
            self.bus.clone(),
            self.heartbeat.clone(),
            self.stats.clone(),
            shutdown.clone(),
        ));
        let outcome = work.await;
        shutdown.cancel();
        let _ = heartbeats.await;
        self.bus.drain().await;
        tracing::info!(agent = %self.role, "stopped");
        outcome
    }
}

/// Checks that the role's durable consumer is bound, says so, and waits for shutdown without
/// taking any message: for a role whose handling is not built yet, so its work stays queued.
pub async fn hold_work(agent: Agent, shutdown: Shutdown) -> Result<(), WorkError> {
    let durable = consumers::for_role(agent.role);
    let spec = agent.spec_of(durable)?;
    let stream = agent
        .bus
        .jetstream()
        .get_stream_no_info(&spec.stream)
        .await
        .map_err(|error| WorkError::Consumer {
            durable: durable.to_owned(),
            reason: error.to_string(),
        })?;
    let info = stream
        .consumer_info(durable)
        .await
        .map_err(|error| WorkError::Consumer {
            durable: durable.to_owned(),
            reason: error.to_string(),
        })?;
    tracing::warn!(
        consumer = durable,
        subjects = ?role_subjects(agent.role),
        pending = info.num_pending,
        "ready, but {} does not handle messages in this build: they stay queued on its consumer",
        agent.role
    );
    shutdown.cancelled().await;
    Ok(())
}
