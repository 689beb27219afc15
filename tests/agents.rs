//! The four agent binaries as separate processes on a real nats-server: they connect,
//! provision, report by heartbeat, and stop cleanly on SIGTERM.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use infracrew_testkit::{NatsServer, binary};

const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];

fn start_agent(name: &str, server: &NatsServer) -> Child {
    Command::new(binary(name))
        .env("NATS_URL", server.url())
        .env("INFRACREW_HEARTBEAT_INTERVAL", "200ms")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot start {name} (built by cargo test --workspace): {error}")
        })
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_four_agents_connect_report_and_stop_on_sigterm() {
    let server = NatsServer::start().unwrap();
    let mut agents: Vec<Child> = AGENTS
        .iter()
        .map(|name| start_agent(name, &server))
        .collect();

    let status = Command::new(binary("crew"))
        .args(["status", "--json", "--wait", "20s", "--stale-after", "5s"])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for (agent, name) in report["agents"].as_array().unwrap().iter().zip(AGENTS) {
        assert_eq!(agent["agent"], name);
        assert_eq!(agent["alive"], true, "{agent}");
        assert_eq!(
            agent["last_heartbeat"]["version"],
            env!("CARGO_PKG_VERSION")
        );
    }
    assert_eq!(
        report["consumers"].as_array().unwrap().len(),
        4,
        "one durable consumer per role"
    );

    for agent in &mut agents {
        assert!(terminate(agent).success(), "a clean stop exits 0");
    }
}

#[test]
fn an_agent_without_a_server_says_where_it_looked_and_fails() {
    let down = NatsServer::start().unwrap().url();
    let output = Command::new(binary("sentinel"))
        .env("NATS_URL", &down)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach NATS at {down}")),
        "{stderr}"
    );
}
