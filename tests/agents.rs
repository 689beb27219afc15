//! The four agent binaries as separate processes on a real nats-server: they connect,
//! provision, report by heartbeat, and stop cleanly on SIGTERM.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{process::Command, time::Duration};

use infracrew_bus::consumers;
use infracrew_e2e::AgentProcess;
use infracrew_testkit::{NatsServer, binary};

const AGENTS: [&str; 4] = ["atlas", "forge", "sentinel", "conductor"];

#[test]
fn the_four_agents_connect_report_and_stop_on_sigterm() {
    let server = NatsServer::start().unwrap();
    let mut agents: Vec<AgentProcess> = AGENTS
        .iter()
        .map(|name| AgentProcess::start(name, &server, &[]))
        .collect();

    let status = Command::new(binary("crew"))
        .args(["status", "--json", "--wait", "20s", "--stale-after", "5s"])
        .env("NATS_URL", server.url())
        .output()
        .unwrap();
    let logs: Vec<String> = agents
        .iter()
        .map(|a| format!("--- {}\n{}", a.name, a.log()))
        .collect();
    assert!(
        status.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&status.stdout),
        logs.join("\n")
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
    let consumers: Vec<&str> = report["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|backlog| backlog["consumer"].as_str().unwrap())
        .collect();
    assert_eq!(
        consumers,
        [
            "atlas",
            "forge",
            "sentinel",
            "conductor",
            consumers::NEW_PLANS
        ],
        "one durable consumer per role and the Conductor's for new plans; none for reviews without Slack or GitHub"
    );

    for agent in &mut agents {
        assert_eq!(
            agent.terminate(Duration::from_secs(10)),
            Some(0),
            "{}: {}",
            agent.name,
            agent.log()
        );
    }
}

#[test]
fn an_agent_without_a_server_says_where_it_looked_and_fails() {
    let down = NatsServer::start().unwrap();
    let url = down.url();
    drop(down);
    let server_elsewhere = NatsServer::start().unwrap();
    let mut forge = AgentProcess::start("forge", &server_elsewhere, &["--nats-url", &url]);
    assert_eq!(forge.wait(Duration::from_secs(10)), Some(1));
    assert!(
        forge.log().contains(&format!("cannot reach NATS at {url}")),
        "{}",
        forge.log()
    );
}

#[test]
fn crew_up_starts_a_whole_crew_and_one_interrupt_stops_it() {
    use std::io::{BufRead, BufReader};
    let mut up = Command::new(binary("crew"))
        .args(["up", "--driver", "dry-run"])
        .env_remove("NATS_URL")
        .env("INFRACREW_HEARTBEAT_INTERVAL", "200ms")
        .current_dir(infracrew_testkit::workspace_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("NATS_URL="))
        .expect("crew up names the NATS it started");
    let setting = |name: &str| {
        started
            .split(&format!("{name}="))
            .nth(1)
            .map(|rest| rest.split(';').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("crew up names {name}: {started}"))
    };
    let url = setting("NATS_URL");
    assert_eq!(setting("NATS_USER"), "cli", "the CLI has its own user");
    let status = Command::new(binary("crew"))
        .args(["status", "--wait", "20s", "--stale-after", "5s"])
        .env("NATS_URL", &url)
        .env("NATS_USER", "cli")
        .env("NATS_PASSWORD", setting("NATS_PASSWORD"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = up.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "crew up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|line| line.contains("crew up: stopped"))
    );
    let after = Command::new(binary("crew"))
        .args(["status"])
        .env("NATS_URL", &url)
        .output()
        .unwrap();
    assert!(
        !after.status.success(),
        "the NATS crew up started is gone with it"
    );
}

#[test]
fn crew_bench_drives_plans_through_a_whole_crew_and_prints_its_figures() {
    let output = Command::new(binary("crew"))
        // Two services for five plans: three wait on a lock and follow its release.
        .args([
            "bench",
            "--plans",
            "5",
            "--services",
            "2",
            "--patience",
            "60s",
        ])
        .env_remove("NATS_URL")
        .current_dir(infracrew_testkit::workspace_root())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for figure in [
        "throughput: ",
        "(5 of 5 plans APPLIED",
        "submit -> APPLIED",
        "PlanSpec -> READY",
        "JetStream hop (publish, ack, consume), during the run, one every",
        "JetStream hop, back to back after the run:",
        "x the floor",
        "answers from the server in sequence",
        "handling per message (mean, ack included): atlas: goal.submitted ",
        "forge: apply.request ",
        "peak resident memory: atlas ",
    ] {
        assert!(printed.contains(figure), "{figure:?} missing:\n{printed}");
    }
}
