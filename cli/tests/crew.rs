//! The `crew` binary against a real nats-server.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{path::PathBuf, process::Output};

use infracrew_bus::{Bus, streams};
use infracrew_e2e::crew_bus;
use infracrew_testkit::NatsServer;

fn goal(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/goals")
        .join(path)
}

fn crew(server: &NatsServer, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_crew"))
        .args(args)
        .env("NATS_URL", server.url())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn stored_goals(bus: &Bus) -> u64 {
    let mut stream = bus.jetstream().get_stream(streams::WORK).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_checks_the_goal_first_and_sends_it_once() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;

    let invalid = goal("invalid/unknown-field.json");
    let refused = crew(&server, &["submit", invalid.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("unknown-field.json"),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("at /servce: unknown field"),
        "names the path: {stderr}"
    );
    assert!(
        stderr.contains("at /service: missing required field"),
        "every error: {stderr}"
    );
    assert_eq!(
        stored_goals(&bus).await,
        0,
        "nothing is sent for an invalid goal"
    );

    let valid = goal("valid/social-intel-staging.json");
    let submitted = crew(&server, &["submit", "--json", valid.to_str().unwrap()]);
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    let report: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(report["duplicate"], false);
    assert_eq!(report["stream"], streams::WORK);

    let again = crew(&server, &["submit", "--json", valid.to_str().unwrap()]);
    let second: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(second["duplicate"], true);
    assert_eq!(
        second["plan_id"], report["plan_id"],
        "the same goal names the same plan"
    );
    assert_eq!(stored_goals(&bus).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_which_agents_are_missing() {
    let server = NatsServer::start().unwrap();
    crew_bus(&server).await;
    let status = crew(&server, &["status"]);
    assert_eq!(
        status.status.code(),
        Some(3),
        "non-zero while agents are missing"
    );
    let stdout = text(&status.stdout);
    for agent in ["atlas", "forge", "sentinel", "conductor"] {
        assert!(
            stdout.lines().any(|line| line.starts_with(agent)
                && line.contains("DOWN")
                && line.contains("never")),
            "{stdout}"
        );
    }
}

#[test]
fn validate_reports_each_file() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_crew"))
        .arg("validate")
        .arg(goal("valid/social-intel-staging.json"))
        .arg(goal("invalid/wrong-types.json"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output.stdout).contains("social-intel-staging.json: valid"));
    assert!(text(&output.stderr).contains("at /replicas: \"two\" is not of types"));
}

#[test]
fn a_down_server_is_named_with_the_fix() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_crew"))
        .args(["dlq", "--nats-url", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("NATS_URL"), "{stderr}");
}
