//! The whole crew: four agent processes on a real nats-server, driven through the `crew` CLI,
//! from a goal to an applied change with a person's approval in the middle.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::process::Command;

use infracrew_bus::{ProvisionOptions, Topology, buckets, consumers};
use infracrew_e2e::{
    AgentProcess, PATIENCE, approve, crew, crew_bus, messages_on, published_moves, recorded_moves,
    start_crew, start_crew_with, submit, text, wait_for_state, wait_until, wait_until_drained,
};
use infracrew_protocol::{
    AgentRole, ApplyRequest, DecisionChannel, DecisionKind, DecisionOutcome, DecisionReply,
    DecisionRequest, LockRecord, OpsEvent, OpsEventKind, PlanId, PlanRecord, PlanState,
    PlanTransitioned, SchemaVersion, examples, signing::Signer, subjects,
};
use infracrew_testkit::{NatsServer, binary, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goal_is_approved_by_an_allowed_person_and_applied() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    // The reviews consumer an earlier configuration with Slack left: this Conductor has no
    // review channel, and reads it anyway so it keeps no backlog.
    Topology::crew(&ProvisionOptions::default())
        .consumer(consumers::REVIEWS)
        .unwrap()
        .ensure(&bus)
        .await
        .unwrap();
    let agents = start_crew(&server);
    // Requested by alice, who approves staging: she still may not approve her own plan.
    let dir = tempfile::tempdir().unwrap();
    let goal = dir.path().join("by-alice.json");
    let original = std::fs::read_to_string(
        workspace_root().join("examples/goals/valid/social-intel-staging.json"),
    )
    .unwrap();
    std::fs::write(&goal, original.replace("\"dave\"", "\"alice\"")).unwrap();
    let plan = submit(&server, goal.to_str().unwrap());
    let ready = wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    assert!(
        ready
            .build
            .as_ref()
            .unwrap()
            .diff_text
            .contains("+ service/staging/social-intel")
    );

    // A forged ApplyRequest for the plan, straight onto the bus: Forge refuses it, nothing is
    // applied, and the plan still waits for its decision.
    let forged = ApplyRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan,
        digest: ready.build.as_ref().unwrap().digest.clone(),
        fencing_token: ready.lock_token.unwrap(),
        approvers: vec!["mallory".into()],
        issued_at: chrono::Utc::now(),
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
        signature: String::new(),
    };
    bus.publish(subjects::APPLY_REQUEST, &forged).await.unwrap();
    let refusal = loop {
        let events: Vec<OpsEvent> = messages_on(&bus, subjects::OPS).await;
        if let Some(event) = events.into_iter().find(|e| e.plan_id == plan) {
            break event;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(refusal.kind, OpsEventKind::ApplyRefused);
    assert!(
        refusal
            .message
            .contains("the request is not the Conductor's: it is not signed"),
        "{}",
        refusal.message
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let still = bus
        .kv::<PlanRecord>(buckets::PLANS)
        .await
        .unwrap()
        .get(&plan.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        still.state,
        PlanState::Ready,
        "a forged request changes nothing"
    );
    let records = bus
        .kv::<infracrew_protocol::ServiceState>(buckets::DRY_RUN)
        .await
        .unwrap();
    assert!(
        records.get("staging.social-intel").await.unwrap().is_none(),
        "nothing applied"
    );

    for (who, rule) in [
        (
            "alice",
            "alice requested this plan and cannot approve or override it",
        ),
        (
            "carol",
            "carol may not decide plans in staging; its approvers are alice, bob",
        ),
        ("mallory", "mallory may not decide plans in staging"),
    ] {
        let refused = approve(&server, plan, who);
        assert!(!refused.status.success(), "{who} must be refused");
        assert!(
            text(&refused.stderr).contains(rule),
            "{who}: {}",
            text(&refused.stderr)
        );
    }
    let approved = approve(&server, plan, "bob");
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    assert!(
        text(&approved.stdout).contains("approved by bob"),
        "{}",
        text(&approved.stdout)
    );

    let applied = wait_for_state(&bus, plan, PlanState::Applied, &agents).await;
    assert!(
        applied.approvals[0].unauthenticated,
        "a demo takes --as on its word, and records that it did"
    );
    let states: Vec<PlanState> = applied.history.iter().map(|t| t.to).collect();
    use PlanState::*;
    assert_eq!(
        states,
        [
            Submitted, Planned, Validating, Ready, Approved, Applying, Applied
        ]
    );
    let events: Vec<OpsEvent> = messages_on(&bus, subjects::OPS).await;
    let kinds: Vec<OpsEventKind> = events
        .iter()
        .filter(|e| e.plan_id == plan)
        .map(|e| e.kind)
        .collect();
    use OpsEventKind::*;
    assert_eq!(
        kinds,
        [ApplyRefused, StepSucceeded, ApplyDone],
        "an apply, and a step, that end at once report their start with their end"
    );
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    assert!(
        locks.get("staging.social-intel").await.unwrap().is_none(),
        "the lock was released"
    );

    let again = approve(&server, plan, "alice");
    assert!(
        text(&again.stderr).contains("the plan is already APPLIED"),
        "{}",
        text(&again.stderr)
    );
    let shown = crew(&server, &["show", &plan.to_string()]);
    assert!(
        text(&shown.stdout).contains("APPLIED"),
        "{}",
        text(&shown.stdout)
    );

    // The moves replayed from the stream, one readable line each, in order.
    let mut watch = Command::new(binary("crew"))
        .args(["watch", "crew.plan.state", "--from-seq", "1"])
        .env("NATS_URL", server.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    let mut seen = Vec::new();
    for line in reader.map_while(Result::ok) {
        let done = line.contains("APPLIED by forge");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let order = [
        "SUBMITTED by",
        "PLANNED -> VALIDATING by conductor",
        "VALIDATING -> READY by forge",
        "READY -> APPROVED by bob",
        "APPROVED -> APPLYING",
        "APPLYING -> APPLIED by forge",
    ];
    let mut lines = seen.iter();
    for expected in order {
        assert!(
            lines.any(|line| line.contains(expected)),
            "{expected} missing or out of order in:\n{}",
            seen.join("\n")
        );
    }
    wait_until_drained(&bus, consumers::REVIEWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_forge_never_starts_fails_when_its_approval_expires_with_the_lock_released() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    // Forge trusts another key than the Conductor's (a rotation half done): it refuses every
    // request as not the Conductor's, refusals that move no plan.
    let (other, _) = Signer::generate();
    let mut agents: Vec<AgentProcess> = ["atlas", "sentinel"]
        .iter()
        .map(|name| AgentProcess::start(name, &server, &[]))
        .collect();
    agents.push(AgentProcess::start_with_env(
        "forge",
        &server,
        &[],
        &[("INFRACREW_CONDUCTOR_PUBLIC_KEY", &other.public_key())],
    ));
    agents.push(AgentProcess::start(
        "conductor",
        &server,
        &["--apply-request-ttl-seconds", "2", "--sweep-seconds", "1"],
    ));
    let plan = submit(&server, "examples/goals/valid/social-intel-staging.json");
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    let approved = approve(&server, plan, "alice");
    assert!(approved.status.success(), "{}", text(&approved.stderr));

    // Two seconds to start, and one patience (ten seconds) for clocks a little apart.
    let failed = infracrew_e2e::wait_for_state_within(
        &bus,
        plan,
        PlanState::Failed,
        &agents,
        std::time::Duration::from_secs(40),
    )
    .await;
    let states: Vec<PlanState> = failed.history.iter().map(|t| t.to).collect();
    assert_eq!(
        states[states.len() - 2..],
        [PlanState::Approved, PlanState::Failed]
    );
    let why = &failed.history.last().unwrap().why;
    assert!(
        why.contains("Forge did not start the apply before its approval's requests expired"),
        "{why}"
    );
    let events: Vec<OpsEvent> = messages_on(&bus, subjects::OPS).await;
    assert!(
        events.iter().all(|e| e.kind == OpsEventKind::ApplyRefused
            && e.refused_by == Some(infracrew_protocol::GateCheck::Signature)),
        "{events:#?}"
    );
    assert!(!events.is_empty());
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    assert!(
        locks.get("staging.social-intel").await.unwrap().is_none(),
        "the lock was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_for_the_same_target_queue_on_its_lock_and_follow_in_order() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew(&server);
    let dir = tempfile::tempdir().unwrap();
    let lock = || social_intel_staging_lock(&bus);

    let [first, second, third] =
        three_versions_of_social_intel_in_staging(&server, &bus, &agents, &dir).await;
    // Give the Conductor the time to try, then check both wait rather than being routed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held = lock().await;
    assert_eq!(held.plan_id, first);
    assert_eq!(
        queued(&held),
        [second, third],
        "queued on the lock, oldest first"
    );
    let waiting_now = bus
        .kv::<PlanRecord>(buckets::PLANS)
        .await
        .unwrap()
        .get(&second.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(waiting_now.state, PlanState::Planned, "{waiting_now:?}");
    assert_eq!(
        waiting_now.waiting_for_lock.as_deref(),
        Some("staging.social-intel")
    );
    let shown = crew(&server, &["show", &second.to_string()]);
    assert!(
        text(&shown.stdout).contains(&format!(
            "waits for the lock on staging.social-intel, held by plan {first}"
        )),
        "{}",
        text(&shown.stdout)
    );

    assert!(approve(&server, first, "bob").status.success());
    let first_done = wait_for_state(&bus, first, PlanState::Applied, &agents).await;
    let ready = wait_for_state(&bus, second, PlanState::Ready, &agents).await;
    let handed = lock().await;
    assert_eq!(handed.plan_id, second, "the release handed the lock on");
    assert!(handed.token > held.token, "with a newer fencing token");
    assert_eq!(ready.lock_token, Some(handed.token));
    assert_eq!(
        queued(&handed),
        [third],
        "the rest of the queue went with it"
    );
    assert_changes_image(&ready, "1.4.0", "1.5.0");
    assert!(approve(&server, second, "alice").status.success());
    let second_done = wait_for_state(&bus, second, PlanState::Applied, &agents).await;
    let third_ready = wait_for_state(&bus, third, PlanState::Ready, &agents).await;
    assert_changes_image(&third_ready, "1.5.0", "1.6.0");
    assert!(
        first_done.history.last().unwrap().at <= second_done.history[2].at
            && second_done.history.last().unwrap().at <= third_ready.history[2].at,
        "started in submission order"
    );
}

/// Social-intel 1.4.0, 1.5.0 and 1.6.0 for staging, submitted in that order: the first once
/// READY (holding the lock), the others each once PLANNED (waiting for it).
async fn three_versions_of_social_intel_in_staging(
    server: &NatsServer,
    bus: &infracrew_bus::Bus,
    agents: &[AgentProcess],
    dir: &tempfile::TempDir,
) -> [PlanId; 3] {
    let first_goal = "examples/goals/valid/social-intel-staging.json";
    let original = std::fs::read_to_string(workspace_root().join(first_goal)).unwrap();
    let later_goal = |version: &str| {
        let path = dir.path().join(format!("{version}.json"));
        std::fs::write(&path, original.replace("1.4.0", version)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let first = submit(server, first_goal);
    wait_for_state(bus, first, PlanState::Ready, agents).await;
    let mut plans = vec![first];
    for version in ["1.5.0", "1.6.0"] {
        let plan = submit(server, &later_goal(version));
        wait_for_state(bus, plan, PlanState::Planned, agents).await;
        plans.push(plan);
    }
    plans.try_into().unwrap()
}

async fn social_intel_staging_lock(bus: &infracrew_bus::Bus) -> LockRecord {
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    locks
        .get("staging.social-intel")
        .await
        .unwrap()
        .unwrap()
        .value
}

/// The plan's diff moves social-intel's image from version `from` to `to`.
fn assert_changes_image(record: &PlanRecord, from: &str, to: &str) {
    let diff = &record.build.as_ref().expect("a built plan").diff_text;
    assert!(
        diff.contains(&format!("{from} -> infracrew/social-intel:{to}")),
        "{diff}"
    );
}

fn queued(lock: &LockRecord) -> Vec<PlanId> {
    lock.waiting.iter().map(|waiter| waiter.plan_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_past_the_locks_queue_limit_waits_outside_it_and_the_sweeper_queues_it() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let config = dir.path().join("conductor.toml");
    std::fs::write(&config, format!("lock_queue_limit = 1\n{demo}")).unwrap();
    let agents = start_crew_with(
        &server,
        &["--config", config.to_str().unwrap(), "--sweep-seconds", "1"],
    );
    let lock = || social_intel_staging_lock(&bus);

    let [first, second, third] =
        three_versions_of_social_intel_in_staging(&server, &bus, &agents, &dir).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(queued(&lock().await), [second], "one plan in the queue");
    let outside = wait_for_state(&bus, third, PlanState::Planned, &agents).await;
    assert_eq!(
        outside.waiting_for_lock.as_deref(),
        Some("staging.social-intel"),
        "the third waits outside the full queue"
    );

    assert!(approve(&server, first, "bob").status.success());
    wait_for_state(&bus, second, PlanState::Ready, &agents).await;
    wait_until(
        "the sweeper to queue the third plan",
        &agents,
        String::new,
        || async { queued(&lock().await) == [third] },
    )
    .await;
    assert!(approve(&server, second, "alice").status.success());
    let third_ready = wait_for_state(&bus, third, PlanState::Ready, &agents).await;
    assert_changes_image(&third_ready, "1.5.0", "1.6.0");
}

/// A goal file in `dir` from `json`.
fn goal_file(dir: &tempfile::TempDir, name: &str, json: serde_json::Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, json.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_blocks_overrides_and_prod_approvals_follow_the_rules() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew(&server);
    let dir = tempfile::tempdir().unwrap();

    // An unknown service: rejected by Atlas, with the valid choices, and the CLI says so.
    let unknown = goal_file(
        &dir,
        "unknown.json",
        serde_json::json!({
            "intent": "deploy", "service": "social-intell", "environment": "staging",
            "version": "1.4.0", "requested_by": "dave"
        }),
    );
    let rejected = crew(&server, &["submit", "--wait", &unknown]);
    assert_eq!(
        rejected.status.code(),
        Some(1),
        "{}",
        text(&rejected.stdout)
    );
    let stdout = text(&rejected.stdout);
    assert!(stdout.contains("at /service: social-intell is not in the service catalog (valid: alfred-bot, financial-tax, legal-compliance, mission-control, social-intel)"), "{stdout}");

    // One replica in prod breaks a soft-mandatory policy: BLOCKED, exit 2, and no approval.
    let thin = goal_file(
        &dir,
        "thin.json",
        serde_json::json!({
            "intent": "deploy", "service": "alfred-bot", "environment": "prod",
            "version": "2.0.0", "replicas": 1, "requested_by": "dave"
        }),
    );
    let blocked = crew(&server, &["submit", "--wait", &thin]);
    assert_eq!(
        blocked.status.code(),
        Some(2),
        "{}{}",
        text(&blocked.stdout),
        text(&blocked.stderr)
    );
    assert!(
        text(&blocked.stdout).contains("prod_min_replicas"),
        "{}",
        text(&blocked.stdout)
    );
    let plans = crew(&server, &["plans", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&plans.stdout).unwrap();
    let plan: PlanId = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["service"] == "alfred-bot")
        .unwrap()["plan_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let refused = approve(&server, plan, "alice");
    assert!(
        text(&refused.stderr).contains("only a READY plan can be approved; this plan is BLOCKED (blocked by prod_min_replicas on service/prod/alfred-bot)"),
        "{}",
        text(&refused.stderr)
    );

    // erin owns the policies: her override, with a reason, makes it READY.
    let overridden = crew(
        &server,
        &[
            "override",
            &plan.to_string(),
            "--as",
            "erin",
            "--reason",
            "one replica during the migration",
        ],
    );
    assert!(overridden.status.success(), "{}", text(&overridden.stderr));
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;

    // Prod needs two distinct approvers; the same one twice does not count.
    let first = approve(&server, plan, "alice");
    assert!(
        text(&first.stdout).contains("1 more needed"),
        "{}",
        text(&first.stdout)
    );
    let repeat = approve(&server, plan, "alice");
    assert!(
        text(&repeat.stderr).contains("alice has already approved this change"),
        "{}",
        text(&repeat.stderr)
    );
    let second = approve(&server, plan, "bob");
    assert!(
        text(&second.stdout).contains("approved by alice, bob"),
        "{}",
        text(&second.stdout)
    );
    let applied = wait_for_state(&bus, plan, PlanState::Applied, &agents).await;
    assert_eq!(applied.overrides[0].owner, "erin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_goal_submitted_twice_makes_one_plan() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew(&server);
    let goal = "examples/goals/valid/social-intel-staging.json";
    let first = crew(&server, &["submit", "--wait", goal]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("ready: approve with crew approve"),
        "{}",
        text(&first.stdout)
    );
    let second = crew(&server, &["submit", "--wait", goal]);
    assert!(
        text(&second.stdout).contains("was submitted before"),
        "{}",
        text(&second.stdout)
    );
    assert!(
        second.status.success(),
        "the second submission follows the same plan: {}",
        text(&second.stdout)
    );
    let plans = crew(&server, &["plans", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&plans.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    drop(agents);
    drop(bus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plan_found_already_recorded_has_the_records_moves_published() {
    // What a failover can leave: the Conductor's create landed but its answer was lost, so
    // the client read the key, found it and reported it taken. Nothing else publishes the
    // moves that write recorded.
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    let plan = examples::plan_spec();
    let mut record = PlanRecord::new(plan.clone(), PlanState::Submitted);
    record
        .move_to(PlanState::Planned, "atlas", "planned", chrono::Utc::now())
        .unwrap();
    record_and_send_again(&bus, record).await;
    // The whole crew builds the routed plan, so the sweeper, which publishes the moves of a
    // routed plan left unbuilt, does not cover for the Conductor.
    let agents = start_crew(&server);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let record = plans
            .get(&plan.plan_id.to_string())
            .await
            .unwrap()
            .unwrap()
            .value;
        let recorded = recorded_moves(&record);
        let published = published_moves(
            &messages_on::<PlanTransitioned>(&bus, subjects::PLAN_STATE).await,
            plan.plan_id,
        );
        if record.build.is_some() && published == recorded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}, built: {}; recorded {recorded:?}, published {published:?}\n{}",
            record.state,
            record.build.is_some(),
            infracrew_e2e::logs_of(&agents)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_finished_plan_leaves_its_targets_lock_free() {
    // What new plans moving to their own consumer reads again (those the Conductor's consumer
    // settled past its ack floor), or a PlanSpec sent again after the duplicate window.
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    let plan = examples::plan_spec();
    let mut record = PlanRecord::new(plan.clone(), PlanState::Planned);
    record.state = PlanState::Applied;
    record_and_send_again(&bus, record).await;
    let conductor = AgentProcess::start("conductor", &server, &[]);

    wait_until_drained(&bus, consumers::NEW_PLANS).await;
    let lock = infracrew_protocol::lock_key(&plan.environment, &plan.service);
    assert!(
        locks.get(&lock).await.unwrap().is_none(),
        "{lock} held by a finished plan\n{}",
        infracrew_e2e::logs_of([&conductor])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plan_waits_while_the_crew_is_behind_on_started_plans_and_starts_when_it_catches_up()
{
    use infracrew_conductor::room::STARTED_WORK_AT_MOST;
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    // Forge is not running: routed plans it has not built are the crew's backlog.
    for n in 0..STARTED_WORK_AT_MOST {
        bus.publish_with_id(
            subjects::PLAN_ROUTED,
            &examples::plan_spec(),
            &format!("routed-{n}"),
        )
        .await
        .unwrap();
    }
    let agents = [start_conductor_ready(&server).await];
    let plan = examples::plan_spec();
    bus.publish(subjects::PLAN_PENDING, &plan).await.unwrap();

    // The room is read every 200 ms: two seconds are ten reads that found none.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let work = bus
        .jetstream()
        .get_stream_no_info(infracrew_bus::streams::WORK)
        .await
        .unwrap();
    let waiting = work.consumer_info(consumers::NEW_PLANS).await.unwrap();
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    assert!(
        waiting.num_pending == 1
            && plans
                .get(&plan.plan_id.to_string())
                .await
                .unwrap()
                .is_none(),
        "a new plan was taken while the crew was behind ({} waiting on {})\n{}",
        waiting.num_pending,
        consumers::NEW_PLANS,
        infracrew_e2e::logs_of(&agents)
    );

    // The backlog goes, as when Forge catches up.
    work.purge().filter(subjects::PLAN_ROUTED).await.unwrap();
    wait_for_state(&bus, plan.plan_id, PlanState::Validating, &agents).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_of_the_conductors_consumers_deleted_stops_it_naming_the_consumer() {
    for durable in [
        consumers::NEW_PLANS,
        consumers::for_role(AgentRole::Conductor),
    ] {
        let server = NatsServer::start().unwrap();
        let bus = crew_bus(&server).await;
        let mut conductor = start_conductor_ready(&server).await;
        bus.jetstream()
            .get_stream_no_info(infracrew_bus::streams::WORK)
            .await
            .unwrap()
            .delete_consumer(durable)
            .await
            .unwrap();
        let code = conductor.wait(PATIENCE);
        let log = conductor.log();
        assert!(
            matches!(code, Some(code) if code != 0)
                && log.contains(&format!(
                    "consumer {durable} on stream {} no longer exists",
                    infracrew_bus::streams::WORK
                )),
            "the Conductor without {durable}: exit {code:?}\n{log}"
        );
    }
}

/// A Conductor on `server`, once it is ready (its consumers bound).
async fn start_conductor_ready(server: &NatsServer) -> AgentProcess {
    let listen = format!("127.0.0.1:{}", infracrew_e2e::free_port());
    let agents = [AgentProcess::start(
        "conductor",
        server,
        &["--listen", &listen],
    )];
    let ready = format!("http://{listen}/health/ready");
    wait_until("the Conductor is ready", &agents, String::new, || async {
        matches!(infracrew_testkit::http::get(&ready).await, Ok((200, _)))
    })
    .await;
    let [conductor] = agents;
    conductor
}

/// Records `record` and publishes its PlanSpec again, as a copy of a plan the Conductor has.
async fn record_and_send_again(bus: &infracrew_bus::Bus, mut record: PlanRecord) {
    record.group_new_moves(0);
    bus.kv::<PlanRecord>(buckets::PLANS)
        .await
        .unwrap()
        .create(&record.plan.plan_id.to_string(), &record)
        .await
        .unwrap();
    bus.publish(subjects::PLAN_PENDING, &record.plan)
        .await
        .unwrap();
}

/// The demo configuration with a short approval window and dev auto-approving.
fn fast_config(dir: &tempfile::TempDir) -> String {
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let config = demo
        .replace("approval_window_seconds = 3600\nauto_approve = false", "approval_window_seconds = 3600\nauto_approve = true")
        .replace("[approvals.environments.staging]\napprovers = [\"alice\", \"bob\"]\nrequired_approvals = 1\napproval_window_seconds = 3600", "[approvals.environments.staging]\napprovers = [\"alice\", \"bob\"]\nrequired_approvals = 1\napproval_window_seconds = 1")
;
    // Top-level keys go before the first table.
    let config = format!("sweep_seconds = 1\n{config}");
    let path = dir.path().join("conductor.toml");
    std::fs::write(&path, config).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_expire_and_dev_auto_approves_when_configured() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(&dir);
    let agents = start_crew_with(&server, &["--config", &config]);

    let staging = submit(&server, "examples/goals/valid/social-intel-staging.json");
    wait_for_state(&bus, staging, PlanState::Ready, &agents).await;
    let expired = wait_for_state(&bus, staging, PlanState::Expired, &agents).await;
    assert!(
        expired
            .history
            .last()
            .unwrap()
            .why
            .starts_with("no decision before"),
        "{:?}",
        expired.history
    );
    let late = approve(&server, staging, "alice");
    assert!(
        text(&late.stderr).contains("the plan is already EXPIRED"),
        "{}",
        text(&late.stderr)
    );

    let dev = goal_file(
        &dir,
        "dev.json",
        serde_json::json!({
            "intent": "deploy", "service": "alfred-bot", "environment": "dev",
            "version": "2.0.0", "requested_by": "dave"
        }),
    );
    let plan = submit(&server, &dev);
    let applied = wait_for_state(&bus, plan, PlanState::Applied, &agents).await;
    let approval = &applied.approvals[0];
    assert_eq!(
        (approval.approver.as_str(), approval.channel),
        ("auto", infracrew_protocol::DecisionChannel::Auto)
    );
    assert!(
        applied
            .history
            .iter()
            .any(|t| t.why.starts_with("auto-approved")),
        "recorded as such: {:?}",
        applied.history
    );
}

#[test]
fn a_bad_conductor_configuration_stops_it_with_the_key_and_reason() {
    let server = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        demo.replacen("required_approvals = 2", "required_approvals = \"two\"", 1),
    )
    .unwrap();
    let mut conductor =
        AgentProcess::start("conductor", &server, &["--config", path.to_str().unwrap()]);
    assert_eq!(
        conductor.wait(std::time::Duration::from_secs(10)),
        Some(78),
        "{}",
        conductor.log()
    );
    let log = conductor.log();
    assert!(
        log.contains("bad.toml: at /approvals/environments/prod/required_approvals"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_holder_died_is_taken_over_with_a_new_fencing_token() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    // A lock left by a plan whose Conductor died long ago, never renewed since.
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    let long_ago = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let stale = LockRecord {
        plan_id: PlanId(uuid::Uuid::nil()),
        holder: "a-dead-conductor".into(),
        token: 1,
        acquired_at: long_ago,
        renewed_at: long_ago,
        waiting: Vec::new(),
    };
    locks.put("staging.social-intel", &stale).await.unwrap();

    let agents = start_crew(&server);
    let plan = submit(&server, "examples/goals/valid/social-intel-staging.json");
    let ready = wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    let lock = locks
        .get("staging.social-intel")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(lock.plan_id, plan, "the abandoned lock was taken over");
    assert!(lock.token > stale.token, "with a newer fencing token");
    assert_eq!(ready.lock_token, Some(lock.token));
}

/// A Conductor takes a lock it released again from the deletion it wrote, without a read; the
/// lock taken by another replica since fails that write, and the plan waits in its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_elsewhere_since_this_conductor_let_it_go_is_waited_for() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let agents = start_crew(&server);
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first_goal = "examples/goals/valid/social-intel-staging.json";

    let first = submit(&server, first_goal);
    let first_ready = wait_for_state(&bus, first, PlanState::Ready, &agents).await;
    assert!(approve(&server, first, "bob").status.success());
    wait_for_state(&bus, first, PlanState::Applied, &agents).await;
    // The lock is released just after the record says APPLIED.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while locks.get("staging.social-intel").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lock was not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let elsewhere = PlanId(uuid::Uuid::from_u128(7));
    let now = chrono::Utc::now();
    let taken = locks
        .create_with("staging.social-intel", |replaced| LockRecord {
            plan_id: elsewhere,
            holder: "another-conductor".into(),
            token: replaced + 1,
            acquired_at: now,
            renewed_at: now,
            waiting: Vec::new(),
        })
        .await
        .unwrap();
    assert!(Some(taken.value.token) > first_ready.lock_token);

    let original = std::fs::read_to_string(workspace_root().join(first_goal)).unwrap();
    let later_goal = dir.path().join("1.5.0.json");
    std::fs::write(&later_goal, original.replace("1.4.0", "1.5.0")).unwrap();
    let second = submit(&server, later_goal.to_str().unwrap());
    let waiting = wait_for_state(&bus, second, PlanState::Planned, &agents).await;
    assert_eq!(
        waiting.waiting_for_lock.as_deref(),
        Some("staging.social-intel")
    );
    // The plan is recorded waiting before it joins the lock's queue.
    wait_until(
        "the second plan queued on the lock",
        &agents,
        String::new,
        || async { !social_intel_staging_lock(&bus).await.waiting.is_empty() },
    )
    .await;
    let lock = social_intel_staging_lock(&bus).await;
    assert_eq!(lock.plan_id, elsewhere, "the lock stays with its holder");
    assert_eq!(lock.token, taken.value.token);
    assert_eq!(queued(&lock), [second]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_plan_whose_apply_request_was_lost_is_applied_by_the_sweeper() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(&dir);
    let agents = start_crew_with(&server, &["--config", &config]);
    let goal = goal_file(
        &dir,
        "prod.json",
        serde_json::json!({
            "intent": "deploy", "service": "mission-control", "environment": "prod",
            "version": "3.1.0", "requested_by": "dave"
        }),
    );
    let plan = submit(&server, &goal);
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;

    // What a Conductor that died right after recording the approvals leaves behind: an
    // APPROVED record, and neither its move nor an ApplyRequest on the bus.
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    let current = plans.get(&plan.to_string()).await.unwrap().unwrap();
    let mut record = current.value;
    let a_while_ago = chrono::Utc::now() - chrono::Duration::seconds(30);
    record
        .move_to(
            PlanState::Approved,
            "alice",
            "approved by alice, bob",
            a_while_ago,
        )
        .unwrap();
    plans
        .update(&plan.to_string(), &record, current.revision)
        .await
        .unwrap();

    let applied = wait_for_state(&bus, plan, PlanState::Applied, &agents).await;
    assert_eq!(applied.history.last().unwrap().by, "forge");
    // The lost move was published too: the subject tells the plan's whole story (the last
    // move is published just after the record is written).
    let recorded: Vec<(u32, PlanState)> = (1..).zip(applied.history.iter().map(|t| t.to)).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let moves: Vec<(u32, PlanState)> =
            messages_on::<infracrew_protocol::PlanTransitioned>(&bus, subjects::PLAN_STATE)
                .await
                .iter()
                .filter(|m| m.plan_id == plan)
                .flat_map(|m| m.moves().map(|(seq, moved)| (seq, moved.to)))
                .collect();
        if moves == recorded || std::time::Instant::now() > deadline {
            assert_eq!(moves, recorded);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_demo_cli_decisions_must_be_signed_by_the_approvers_own_key() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_seed) = Signer::generate();
    let (_, mallory_seed) = Signer::generate();
    let demo = std::fs::read_to_string(workspace_root().join("config/demo.toml")).unwrap();
    let config = dir.path().join("conductor.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[approver_keys]\nalice = \"{}\"\n",
            demo.replace("demo = true", "demo = false"),
            alice.public_key()
        ),
    )
    .unwrap();
    let seed_file = |name: &str, seed: &str| {
        let path = dir.path().join(format!("{name}.nk"));
        std::fs::write(&path, format!("# {name}'s seed\n{seed}\n")).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (alices, mallorys) = (
        seed_file("alice", &alice_seed),
        seed_file("mallory", &mallory_seed),
    );
    let conductor_args = ["--config", config.to_str().unwrap()];
    let mut agents = start_crew_with(&server, &conductor_args);
    let plan = submit(&server, "examples/goals/valid/social-intel-staging.json");
    wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    let id = plan.to_string();

    for (args, refusal) in [
        (
            vec!["approve", &id, "--as", "alice"],
            "an unsigned decision is taken only in a demo installation; sign it with alice's key",
        ),
        (
            vec!["approve", &id, "--as", "alice", "--key", &mallorys],
            "the decision is not alice's: its signature was not made by the trusted key",
        ),
        (
            vec!["approve", &id, "--as", "bob", "--key", &alices],
            "no key is configured for bob",
        ),
    ] {
        let refused = crew(&server, &args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            text(&refused.stderr).contains(refusal),
            "{args:?}: {}",
            text(&refused.stderr)
        );
    }
    let record = wait_for_state(&bus, plan, PlanState::Ready, &agents).await;
    assert!(record.approvals.is_empty(), "{:?}", record.approvals);

    // Signed by alice: taken, and recorded as hers. The very same bytes again: a replay.
    let request = DecisionRequest {
        schema_version: SchemaVersion::CURRENT,
        request_id: uuid::Uuid::new_v4(),
        plan_id: plan,
        kind: DecisionKind::Approve,
        who: "alice".into(),
        channel: DecisionChannel::Cli,
        reason: None,
        issued_at: None,
        signature: None,
    }
    .signed_by(&alice);
    let bytes = infracrew_protocol::encode(&request).unwrap();
    // Asked until a Conductor answers (one may be starting).
    let ask = || async {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            match bus
                .client()
                .request(subjects::APPROVAL_REQUEST, bytes.clone().into())
                .await
            {
                Ok(answer) => {
                    break infracrew_protocol::decode::<DecisionReply>(&answer.payload).unwrap();
                }
                Err(error) if std::time::Instant::now() > deadline => {
                    panic!("no Conductor answered: {error}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    };
    let first = ask().await;
    assert_eq!(
        first.outcome,
        DecisionOutcome::Accepted,
        "{}",
        first.message
    );
    let replayed = ask().await;
    assert_eq!(replayed.outcome, DecisionOutcome::Refused);
    assert_eq!(
        replayed.message,
        "this exact decision was already received; a replay is refused"
    );
    let applied = wait_for_state(&bus, plan, PlanState::Applied, &agents).await;
    assert_eq!(applied.approvals.len(), 1);
    assert!(!applied.approvals[0].unauthenticated);

    // Another replica refuses it too, here one started after the first is gone: the ids are
    // in a bucket every Conductor shares, not in one process's memory (a Conductor that
    // forgot would refuse it for the plan's state, with another reason).
    agents[3].kill();
    agents.push(AgentProcess::start("conductor", &server, &conductor_args));
    let replayed_elsewhere = ask().await;
    assert_eq!(replayed_elsewhere.outcome, DecisionOutcome::Refused);
    assert_eq!(replayed_elsewhere.message, replayed.message);
}
