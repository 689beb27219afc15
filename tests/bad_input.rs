//! The bad-input catalogue: each kind of bad input fed through the entry point a person or a
//! program would use (the CLI, the bus, the Conductor's HTTP endpoint), checked for the exact
//! error that names what is wrong and where, and for nothing having changed.
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::time::Duration;

use bytes::Bytes;
use infracrew_bus::{Bus, PublishError, buckets, streams};
use infracrew_e2e::{AgentProcess, PATIENCE, crew, crew_bus, free_port, start_crew, text};
use infracrew_protocol::{
    DeadLetter, DeadLetterKind, MAX_MESSAGE_BYTES, PlanId, PlanRecord, PlanState, examples,
    subjects,
};
use infracrew_testkit::{
    NatsServer,
    slack::{SlackSimulator, send_signed, send_with_signature, sign, slash_command, unix_now},
    workspace_root,
};
use serde_json::Value;

/// Messages stored on `subject` in the work stream.
async fn stored(bus: &Bus, subject: &str) -> u64 {
    let stream = bus.jetstream().get_stream(streams::WORK).await.unwrap();
    let mut count = 0;
    let mut next = 1;
    while let Ok(message) = stream
        .direct_get_next_for_subject(subject, Some(next))
        .await
    {
        count += 1;
        next = message.sequence + 1;
    }
    count
}

async fn plan_keys(bus: &Bus) -> Vec<String> {
    bus.kv::<PlanRecord>(buckets::PLANS)
        .await
        .unwrap()
        .keys()
        .await
        .unwrap()
}

/// The sample goal files that must be refused, with the exact errors written beside them.
fn invalid_goal_files() -> Vec<(String, Vec<u8>, String)> {
    let dir = workspace_root().join("examples/goals/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let errors = std::fs::read_to_string(path.with_extension("errors")).unwrap();
            (
                path.display().to_string(),
                std::fs::read(&path).unwrap(),
                errors.trim_end().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_goals_through_the_cli_and_the_bus_are_refused_with_their_reason_and_change_nothing() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew(&server);
    let dir = tempfile::tempdir().unwrap();

    // The CLI: malformed JSON, wrong types, unknown fields, missing fields, a newer major
    // version, and the rest of the samples, each refused before anything is sent.
    let cases = invalid_goal_files();
    assert!(cases.len() >= 7, "{cases:?}");
    for (path, _, errors) in &cases {
        let output = crew(&server, &["submit", path]);
        assert!(!output.status.success(), "{path} was accepted");
        let said = text(&output.stderr);
        assert!(
            said.contains(errors.as_str()),
            "{path}: {said}\nwanted: {errors}"
        );
    }
    let oversized = dir.path().join("oversized.json");
    std::fs::write(&oversized, vec![b' '; MAX_MESSAGE_BYTES + 1]).unwrap();
    let output = crew(&server, &["submit", oversized.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains(&format!(
            "is {} bytes, over the {MAX_MESSAGE_BYTES} bytes a message on the bus may have",
            MAX_MESSAGE_BYTES + 1
        )),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        stored(&bus, subjects::GOAL_SUBMITTED).await,
        0,
        "nothing was sent"
    );

    // The bus: the same bytes published straight onto crew.goal.submitted are dead-lettered
    // by Atlas with the same reason and their original bytes; no plan is made.
    for (index, (path, bytes, _)) in cases.iter().enumerate() {
        bus.publish_bytes(
            subjects::GOAL_SUBMITTED,
            "goal_statement",
            &format!("bad-input-{index}"),
            Bytes::from(bytes.clone()),
        )
        .await
        .unwrap_or_else(|error| panic!("{path}: {error}"));
    }
    let letters = wait_for_dead_letters(&server, cases.len(), &agents).await;
    for (path, bytes, errors) in &cases {
        let letter = letters
            .iter()
            .find(|letter| letter.payload().ok().as_deref() == Some(bytes.as_slice()))
            .unwrap_or_else(|| panic!("no dead letter for {path}: {letters:?}"));
        assert_eq!(letter.subject, subjects::GOAL_SUBMITTED);
        assert_eq!(letter.consumer, "atlas");
        assert_eq!(&letter.reason, errors, "{path}");
        let expected_kind = if errors.contains("is not valid JSON") {
            DeadLetterKind::Malformed
        } else if errors.contains("this build reads only") {
            DeadLetterKind::UnsupportedVersion
        } else {
            DeadLetterKind::Invalid
        };
        assert_eq!(letter.kind, expected_kind, "{path}");
    }

    // Over the bus's maximum: the server refuses it, and says so; nothing is stored.
    let too_big = bus
        .publish_bytes(
            subjects::GOAL_SUBMITTED,
            "goal_statement",
            "bad-input-oversized",
            Bytes::from(vec![b'x'; MAX_MESSAGE_BYTES + 1]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(too_big, PublishError::TooLarge { .. }),
        "{too_big}"
    );
    assert!(
        too_big.to_string().contains("over the server's limit"),
        "{too_big}"
    );

    // A goal the schema accepts for a service the catalog does not know: Atlas rejects it
    // with the reason and the valid choices.
    let unknown = dir.path().join("unknown-service.json");
    let mut goal: Value = serde_json::from_slice(
        &std::fs::read(workspace_root().join("examples/goals/valid/social-intel-staging.json"))
            .unwrap(),
    )
    .unwrap();
    goal["service"] = "no-such-service".into();
    std::fs::write(&unknown, goal.to_string()).unwrap();
    let output = crew(
        &server,
        &[
            "submit",
            "--wait",
            "--timeout",
            "20s",
            unknown.to_str().unwrap(),
        ],
    );
    let said = text(&output.stdout);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("rejected: the goal cannot be planned"),
        "{said}"
    );
    assert!(said.contains("no-such-service"), "{said}");
    assert!(
        said.contains("social-intel"),
        "the valid choices are named: {said}"
    );

    // A plan id that does not exist.
    let output = crew(&server, &["approve", "deadbeef", "--as", "alice"]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("no plan id starts with \"deadbeef\""),
        "{}",
        text(&output.stderr)
    );

    assert!(plan_keys(&bus).await.is_empty(), "no plan was made");
}

async fn wait_for_dead_letters(
    server: &NatsServer,
    count: usize,
    agents: &[AgentProcess],
) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = crew(server, &["dlq", "--json"]);
        let letters: Vec<DeadLetter> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if letters.len() >= count {
            return letters;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{} dead letters, not {count}\n{}",
                letters.len(),
                infracrew_e2e::logs_of(agents)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_of_a_plan_in_any_state_but_ready_is_refused_and_changes_nothing() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let _agents = start_crew(&server);
    let ready = crew(&server, &["status", "--wait", "20s"]);
    assert!(ready.status.success(), "{}", text(&ready.stdout));
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();

    use PlanState::*;
    let states = [
        (
            Submitted,
            "only a READY plan can be approved; this plan is SUBMITTED",
        ),
        (
            Planned,
            "only a READY plan can be approved; this plan is PLANNED",
        ),
        (
            Validating,
            "only a READY plan can be approved; this plan is VALIDATING",
        ),
        (
            Blocked,
            "only a READY plan can be approved; this plan is BLOCKED",
        ),
        (
            Approved,
            "only a READY plan can be approved; this plan is APPROVED",
        ),
        (
            Applying,
            "only a READY plan can be approved; this plan is APPLYING",
        ),
        (
            NoChange,
            "the plan is already NO_CHANGE; no decision changes it now",
        ),
        (
            Applied,
            "the plan is already APPLIED; no decision changes it now",
        ),
        (
            Failed,
            "the plan is already FAILED; no decision changes it now",
        ),
        (
            RolledBack,
            "the plan is already ROLLED_BACK; no decision changes it now",
        ),
        (
            Rejected,
            "the plan is already REJECTED; no decision changes it now",
        ),
        (
            Expired,
            "the plan is already EXPIRED; no decision changes it now",
        ),
        (
            Superseded,
            "the plan is already SUPERSEDED; no decision changes it now",
        ),
    ];
    for (state, refusal) in states {
        let mut plan = examples::plan_spec();
        plan.plan_id = PlanId(uuid::Uuid::new_v4());
        let record = PlanRecord {
            build: Some(examples::build_status()),
            decision_opened_at: Some(chrono::Utc::now()),
            ..PlanRecord::new(plan, state)
        };
        let key = record.plan.plan_id.to_string();
        let revision = plans.put(&key, &record).await.unwrap();

        let output = crew(&server, &["approve", &key, "--as", "alice"]);
        let said = text(&output.stderr);
        assert!(
            !output.status.success(),
            "{state}: {}",
            text(&output.stdout)
        );
        assert!(said.contains(refusal), "{state}: {said}");
        let after = plans.get(&key).await.unwrap().unwrap();
        assert_eq!(
            after.revision, revision,
            "{state}: the record was not written"
        );
        assert_eq!(after.value, record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_requests_with_a_bad_signature_a_stale_timestamp_or_a_replayed_body_are_refused() {
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const BOT: &str = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy";
    let server = NatsServer::start().unwrap();
    let slack = SlackSimulator::start(BOT, "xapp-unused").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let config = dir.path().join("conductor.toml");
    std::fs::write(
        &config,
        format!(
            "{demo}\n[slack]\napi_url = \"{}\"\n[slack.users]\nU0ALICE = \"alice\"\n",
            slack.api_url()
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let conductor = AgentProcess::start_with_env(
        "conductor",
        &server,
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        &[("SLACK_BOT_TOKEN", BOT), ("SLACK_SIGNING_SECRET", SECRET)],
    );
    let commands = format!("http://{listen}/slack/commands");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !matches!(
        infracrew_testkit::http::get(&format!("http://{listen}/health/ready")).await,
        Ok((200, _))
    ) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            conductor.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let body = slash_command("/plan", "deadbeef", "U0ALICE", &slack.response_url("alice"));
    let now = unix_now();
    let signature = sign(SECRET, now, &body);
    let cases: Vec<(&str, String, u64, &str)> = vec![
        (
            "bad signature",
            sign("not the secret", now, &body),
            now,
            "the request's signature does not match the signing secret",
        ),
        (
            "stale timestamp",
            sign(SECRET, now - 6 * 60, &body),
            now - 6 * 60,
            "the request's timestamp is more than five minutes from now",
        ),
    ];
    for (case, signature, timestamp, reason) in cases {
        let (status, said) = send_with_signature(&commands, &body, &signature, timestamp).await;
        assert_eq!(status, 401, "{case}: {said}");
        assert!(said.starts_with(reason), "{case}: {said}");
    }
    let (first, _) = send_with_signature(&commands, &body, &signature, now).await;
    assert_eq!(first, 200, "the genuine request is taken");
    let (status, said) = send_signed(&commands, &body, SECRET, now).await;
    assert_eq!(
        (status, said.as_str()),
        (
            401,
            "this exact request was already received; a replay is refused"
        ),
        "replayed body"
    );
    assert!(slack.messages().is_empty(), "nothing was posted");
}
