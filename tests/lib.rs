//! Helpers for the end-to-end tests beside this file: the crew's binaries as processes, and
//! reading what they published.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use infracrew_bus::{Bus, ConnectArgs, ProvisionOptions, Topology, buckets, streams};
use infracrew_protocol::{
    Message, PlanId, PlanRecord, PlanState, PlanTransitioned, decode, signing::Signer,
};
pub use infracrew_testkit::free_port;
use infracrew_testkit::{NatsServer, binary, workspace_root};

/// The Conductor's signing key in these tests (and its seed): every Conductor started here
/// signs with it, every Forge trusts it.
pub fn conductor_key() -> &'static (Signer, String) {
    static KEY: OnceLock<(Signer, String)> = OnceLock::new();
    KEY.get_or_init(Signer::generate)
}

/// How long an end-to-end wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// An agent process, killed when dropped; its log is kept for the failure message.
#[derive(Debug)]
pub struct AgentProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    /// Starts `name` against `server` with extra arguments and a fast heartbeat.
    pub fn start(name: &str, server: &NatsServer, args: &[&str]) -> Self {
        Self::start_with_env(name, server, args, &[])
    }

    /// Starts `name` with extra arguments and environment variables.
    pub fn start_with_env(
        name: &str,
        server: &NatsServer,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_at(name, &server.url(), args, env)
    }

    /// Starts `name` against the NATS at `url` (one server, or a cluster's comma-separated
    /// list).
    pub fn start_at(name: &str, url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let log = dir.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("a log file");
        let key = conductor_key();
        let mut command = Command::new(binary(name));
        match name {
            "conductor" => command.env("INFRACREW_CONDUCTOR_SIGNING_SEED", &key.1),
            "forge" => command.env("INFRACREW_CONDUCTOR_PUBLIC_KEY", key.0.public_key()),
            _ => &mut command,
        };
        let child = command
            .args(args)
            .env("NATS_URL", url)
            .env("INFRACREW_HEARTBEAT_INTERVAL", "200ms")
            // Many crews run at once: each agent takes a free port unless a test names one.
            .env("INFRACREW_LISTEN", "127.0.0.1:0")
            .env("INFRACREW_PLAYBOOKS", workspace_root().join("playbooks"))
            .envs(env.iter().copied())
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start {name}: {error}; build the binaries first (cargo build --workspace --bins, as make test does)")
            });
        AgentProcess {
            name: name.to_owned(),
            child,
            log,
            _dir: dir,
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status (a clean stop exits 0).
    pub fn terminate(&mut self, patience: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait(patience)
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub fn wait(&mut self, patience: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl AgentProcess {
    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every agent's log, each under its name, for a failure message.
pub fn logs_of<'a>(agents: impl IntoIterator<Item = &'a AgentProcess>) -> String {
    agents
        .into_iter()
        .map(|agent| format!("--- {}\n{}", agent.name, agent.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connects to `server` and provisions the crew's bus.
pub async fn crew_bus(server: &NatsServer) -> Bus {
    let bus = Bus::connect(&ConnectArgs::for_url(server.url()), "e2e")
        .await
        .expect("connect");
    Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .expect("provision");
    bus
}

/// Every message on `subject` in the work stream so far, decoded.
pub async fn messages_on<M: Message>(bus: &Bus, subject: &str) -> Vec<M> {
    use futures::StreamExt;
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .expect("the work stream");
    // An ordered consumer reads through the stream's leader: on a cluster a direct get may
    // be answered by a replica still catching up, which would show a gap.
    let mut consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .expect("an ordered consumer on the work stream");
    let stored = consumer.info().await.expect("its info").num_pending;
    let mut messages = consumer.messages().await.expect("its messages");
    let mut found = Vec::new();
    while (found.len() as u64) < stored {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .ok()
            .flatten()
            .expect("the stored messages")
            .expect("a message");
        found.push(decode::<M>(&message.payload).expect("a valid message"));
    }
    found
}

/// Waits until at least `count` messages are on `subject`, and returns them; on time-out the
/// failure names the subject and shows the agents' logs.
pub async fn wait_for<M: Message>(
    bus: &Bus,
    subject: &str,
    count: usize,
    agents: &[&AgentProcess],
) -> Vec<M> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = messages_on::<M>(bus, subject).await;
        if found.len() >= count {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "{} of {count} messages on {subject} after {PATIENCE:?}\n{}",
                found.len(),
                logs_of(agents.iter().copied())
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `durable` on the work stream has nothing pending and nothing unacknowledged:
/// every message published so far was handled.
pub async fn wait_until_drained(bus: &Bus, durable: &str) {
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .expect("the work stream");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = stream.consumer_info(durable).await.expect("the consumer");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{durable} still has work after {PATIENCE:?}: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs `crew` with `args` against `server`.
pub fn crew(server: &NatsServer, args: &[&str]) -> Output {
    Command::new(binary("crew"))
        .args(args)
        .env("NATS_URL", server.url())
        .current_dir(workspace_root())
        .output()
        .expect("the crew binary runs (cargo build --workspace --bins)")
}

/// Output bytes as text, for failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The four agents with their defaults (Forge on the dry-run driver).
pub fn start_crew(server: &NatsServer) -> Vec<AgentProcess> {
    start_crew_with(server, &[])
}

/// The four agents, the Conductor with `conductor_args`.
pub fn start_crew_with(server: &NatsServer, conductor_args: &[&str]) -> Vec<AgentProcess> {
    let mut agents: Vec<AgentProcess> = ["atlas", "forge", "sentinel"]
        .iter()
        .map(|name| AgentProcess::start(name, server, &[]))
        .collect();
    agents.push(AgentProcess::start("conductor", server, conductor_args));
    agents
}

/// Submits a goal file through `crew submit` and returns its plan id.
pub fn submit(server: &NatsServer, goal: &str) -> PlanId {
    let output = crew(server, &["submit", "--json", goal]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("crew submit --json prints JSON");
    report["plan_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("crew submit --json names the plan id")
}

/// The crew with the Conductor serving HTTP on a free port (its configuration in
/// `conductor_args`, its secrets in `env`) and Forge started with `forge_args`, once the
/// Conductor is ready: its consumers bound and its routes mounted. Returns the agents and the
/// Conductor's `http://` address.
pub async fn start_crew_serving(
    server: &NatsServer,
    conductor_args: &[&str],
    env: &[(&str, &str)],
    forge_args: &[&str],
) -> (Vec<AgentProcess>, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut agents: Vec<AgentProcess> = ["atlas", "forge", "sentinel"]
        .iter()
        .map(|name| {
            let args = if *name == "forge" { forge_args } else { &[] };
            AgentProcess::start(name, server, args)
        })
        .collect();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(conductor_args);
    agents.push(AgentProcess::start_with_env(
        "conductor",
        server,
        &args,
        env,
    ));
    let ready = format!("http://{listen}/health/ready");
    wait_until("the Conductor is ready", &agents, String::new, || async {
        matches!(infracrew_testkit::http::get(&ready).await, Ok((200, _)))
    })
    .await;
    (agents, format!("http://{listen}"))
}

/// Waits (up to [`PATIENCE`]) until `condition` holds; on time-out, fails with what the
/// simulator saw (`seen`) and every agent's log.
pub async fn wait_until<F, Fut>(
    what: &str,
    agents: &[AgentProcess],
    seen: impl Fn() -> String,
    mut condition: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        if tokio::time::Instant::now() > deadline {
            panic!(
                "waited {PATIENCE:?} for {what}; {}\n{}",
                seen(),
                logs_of(agents)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plan's moves as its record has them: each move's position (from 1) and the state it
/// moved to.
pub fn recorded_moves(record: &PlanRecord) -> Vec<(u32, PlanState)> {
    record
        .history
        .iter()
        .zip(1..)
        .map(|(moved, seq)| (seq, moved.to))
        .collect()
}

/// `plan`'s moves as `messages` from `crew.plan.state` carry them, in the order of their
/// positions: under a failover a move may be stored after a later one.
pub fn published_moves(messages: &[PlanTransitioned], plan: PlanId) -> Vec<(u32, PlanState)> {
    let mut moves: Vec<_> = messages
        .iter()
        .filter(|message| message.plan_id == plan)
        .flat_map(|message| message.moves().map(|(seq, moved)| (seq, moved.to)))
        .collect();
    moves.sort_by_key(|(seq, _)| *seq);
    moves
}

/// Waits (up to [`PATIENCE`]) until the plan's record is in `state`.
pub async fn wait_for_state(
    bus: &Bus,
    plan: PlanId,
    state: PlanState,
    crew: &[AgentProcess],
) -> PlanRecord {
    wait_for_state_within(bus, plan, state, crew, PATIENCE).await
}

/// Waits until the plan's record is in `state`; on timeout, fails with every agent's log.
pub async fn wait_for_state_within(
    bus: &Bus,
    plan: PlanId,
    state: PlanState,
    crew: &[AgentProcess],
    patience: Duration,
) -> PlanRecord {
    let plans = bus
        .kv::<PlanRecord>(buckets::PLANS)
        .await
        .expect("the plans bucket");
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let record = plans
            .get(&plan.to_string())
            .await
            .expect("reading the plan's record")
            .map(|r| r.value);
        if let Some(record) = &record
            && record.state == state
        {
            return record.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "plan {plan} is {:?}, not {state}, after {patience:?}\n{}",
                record.map(|r| r.state),
                logs_of(crew)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Approves `plan` through `crew approve --as who`.
pub fn approve(server: &NatsServer, plan: PlanId, who: &str) -> Output {
    crew(server, &["approve", &plan.to_string()[..8], "--as", who])
}
