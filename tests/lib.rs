//! Helpers for the end-to-end tests beside this file: the crew's binaries as processes, and
//! reading what they published.

use std::{
    fs::File,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use infracrew_bus::{Bus, ConnectArgs, ProvisionOptions, Topology, streams};
use infracrew_protocol::{Message, decode};
use infracrew_testkit::{NatsServer, binary, workspace_root};

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
        let dir = tempfile::tempdir().expect("a temporary folder");
        let log = dir.path().join(format!("{name}.log"));
        let file = File::create(&log).expect("a log file");
        let child = Command::new(binary(name))
            .args(args)
            .env("NATS_URL", server.url())
            .env("INFRACREW_HEARTBEAT_INTERVAL", "200ms")
            .env("INFRACREW_PLAYBOOKS", workspace_root().join("playbooks"))
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

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .expect("the work stream");
    let mut found = Vec::new();
    let mut next = 1;
    while let Ok(message) = stream
        .direct_get_next_for_subject(subject, Some(next))
        .await
    {
        found.push(decode::<M>(&message.payload).expect("a valid message"));
        next = message.sequence + 1;
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
            let logs: Vec<String> = agents
                .iter()
                .map(|agent| format!("--- {}\n{}", agent.name, agent.log()))
                .collect();
            panic!(
                "{} of {count} messages on {subject} after {PATIENCE:?}\n{}",
                found.len(),
                logs.join("\n")
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
