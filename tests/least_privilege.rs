//! The crew on a NATS server with one user per agent and one for the CLI, each allowed only
//! its role's subjects (deploy/nats/users.conf): every agent does its work; a user publishing
//! outside its allow list is refused by the server and says so; and a leaked bus credential
//! alone cannot make Forge apply.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::process::{Command, Output};

use infracrew_bus::{Bus, ConnectArgs, PublishError, permissions};
use infracrew_e2e::{AgentProcess, PATIENCE, conductor_key, text, wait_for_state};
use infracrew_protocol::{
    ApplyRequest, OpsEvent, OpsEventKind, PlanId, PlanRecord, PlanState, SchemaVersion,
    signing::Signer, subjects,
};
use infracrew_testkit::{NatsServer, binary, workspace_root};

const GOAL: &str = "examples/goals/valid/social-intel-staging.json";

fn password(user: &str) -> String {
    format!("test-{user}-password")
}

/// nats-server with JetStream and the crew's users.
fn server(dir: &tempfile::TempDir) -> NatsServer {
    let config = dir.path().join("users.conf");
    std::fs::write(
        &config,
        permissions::users_conf_with_passwords(&|user| password(user.name)),
    )
    .unwrap();
    NatsServer::start_with_args(&["-c", config.to_str().unwrap()]).unwrap()
}

fn credentials(user: &str) -> [(&'static str, String); 2] {
    [
        ("NATS_USER", user.to_owned()),
        ("NATS_PASSWORD", password(user)),
    ]
}

fn start_as(name: &str, user: &str, server: &NatsServer) -> AgentProcess {
    let env = credentials(user);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    AgentProcess::start_with_env(name, server, &[], &env)
}

/// `crew` as the CLI's user.
fn crew(server: &NatsServer, args: &[&str]) -> Output {
    Command::new(binary("crew"))
        .args(args)
        .env("NATS_URL", server.url())
        .envs(credentials("cli"))
        .current_dir(workspace_root())
        .output()
        .unwrap()
}

async fn connect_as(server: &NatsServer, user: &str) -> Bus {
    let mut args = ConnectArgs::for_url(server.url());
    args.nats_user = Some(user.to_owned());
    args.nats_password = Some(password(user));
    Bus::connect(&args, &format!("test-as-{user}"))
        .await
        .unwrap()
}

fn submit(server: &NatsServer) -> PlanId {
    let output = crew(server, &["submit", "--json", GOAL]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["plan_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_works_as_its_own_user_and_nothing_else_gets_through() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(&dir);
    let mut agents: Vec<AgentProcess> = ["atlas", "forge", "sentinel", "conductor"]
        .iter()
        .map(|name| start_as(name, name, &server))
        .collect();
    let ready = crew(&server, &["status", "--wait", "20s"]);
    assert!(ready.status.success(), "{}", text(&ready.stdout));
    let reader = connect_as(&server, "cli").await;

    // The whole flow, each agent as its own user and the person through the CLI's.
    let plan = submit(&server);
    let record = wait_for_state(&reader, plan, PlanState::Ready, &agents).await;
    let approved = crew(&server, &["approve", &plan.to_string(), "--as", "alice"]);
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    wait_for_state(&reader, plan, PlanState::Applied, &agents).await;

    // Outside its allow list, the server refuses, and the error says so.
    let atlas = connect_as(&server, "atlas").await;
    let forged = ApplyRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan,
        digest: record.build.as_ref().unwrap().digest.clone(),
        fencing_token: record.lock_token.unwrap_or_default(),
        approvers: vec!["mallory".into()],
        issued_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        signature: String::new(),
    };
    let refused = atlas
        .publish(subjects::APPLY_REQUEST, &forged)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, PublishError::NotAllowed { .. }),
        "{refused}"
    );
    let said = refused.to_string();
    assert!(
        said.contains("does not let this user publish apply_request on crew.apply.request")
            && said.to_lowercase().contains("permissions violation"),
        "{said}"
    );
    let cli_publish = reader
        .publish(
            subjects::OPS_EVENT,
            &infracrew_protocol::examples::ops_event(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(cli_publish, PublishError::NotAllowed { .. }),
        "{cli_publish}"
    );

    // An agent run with another role's user: its publish is refused, and its log says why.
    let sentinel = agents.iter().position(|a| a.name == "sentinel").unwrap();
    agents[sentinel].kill();
    agents[sentinel] = start_as("sentinel", "atlas", &server);
    submit_other(&server, "alfred-bot");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let log = agents[sentinel].log();
        if log.contains(
            "the NATS server does not let this user publish validation_result on crew.validate.result",
        ) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    agents[sentinel].kill();
    agents[sentinel] = start_as("sentinel", "sentinel", &server);

    // A leaked Conductor credential: the server lets it publish an ApplyRequest, but Forge
    // applies only what the Conductor's key signed, and only for an APPROVED plan, in time.
    let conductor = connect_as(&server, "conductor").await;
    let third = submit_other(&server, "financial-tax");
    let ready = wait_for_state(&reader, third, PlanState::Ready, &agents).await;
    let request = |approvers: &str, expires_in: i64| ApplyRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: third,
        digest: ready.build.as_ref().unwrap().digest.clone(),
        fencing_token: ready.lock_token.unwrap_or_default(),
        approvers: vec![approvers.to_owned()],
        issued_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now() + chrono::Duration::seconds(expires_in),
        signature: String::new(),
    };
    let (mallory, _) = Signer::generate();
    let cases = [
        (
            request("unsigned", 60),
            "the request is not the Conductor's: it is not signed",
        ),
        (
            request("other-key", 60).signed_by(&mallory),
            "its signature was not made by the trusted key",
        ),
        (
            request("expired", -5).signed_by(&conductor_key().0),
            "the request expired",
        ),
        (
            request("not-approved", 60).signed_by(&conductor_key().0),
            "is READY, not APPROVED",
        ),
    ];
    for (forged, reason) in cases {
        conductor
            .publish(subjects::APPLY_REQUEST, &forged)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let events: Vec<OpsEvent> =
                infracrew_e2e::messages_on(&reader, subjects::OPS_EVENT).await;
            if events.iter().any(|e| {
                e.plan_id == third
                    && e.kind == OpsEventKind::ApplyRefused
                    && e.message.contains(reason)
            }) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no refusal saying {reason:?}: {events:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let still: PlanRecord = reader
        .kv::<PlanRecord>(infracrew_bus::buckets::PLANS)
        .await
        .unwrap()
        .get(&third.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(still.state, PlanState::Ready, "nothing was applied");
}

fn submit_other(server: &NatsServer, service: &str) -> PlanId {
    let dir = tempfile::tempdir().unwrap();
    let goal = dir.path().join("goal.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(workspace_root().join(GOAL)).unwrap()).unwrap();
    value["service"] = service.into();
    std::fs::write(&goal, value.to_string()).unwrap();
    let output = crew(server, &["submit", "--json", goal.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["plan_id"].as_str().unwrap().parse().unwrap()
}
