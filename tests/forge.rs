//! Forge and Sentinel as running binaries on a real nats-server: a routed plan is rendered
//! against the dry-run driver's records, judged, and reported as ready, blocked or nothing
//! to change; an approved plan is applied step by step, and a forged ApplyRequest is refused
//! with its reason and changes nothing.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use chrono::Utc;
use infracrew_bus::{Bus, Kv, buckets};
use infracrew_e2e::{
    AgentProcess, conductor_key, crew_bus, messages_on, wait_for, wait_until_drained,
};
use infracrew_forge::{
    ApplyLease, BuildRecord,
    driver::{Apply, ApplyContext, Progress},
    dry_run::DryRunDriver,
};
use infracrew_protocol::{
    ApplyRequest, BuildOutcome, BuildStatus, ChangeAction, DesiredState, GateCheck, GoalId, Intent,
    LockRecord, OpsEvent, OpsEventKind, PlanDigest, PlanId, PlanRecord, PlanSpec, PlanState,
    SchemaVersion, ServiceState, Strategy, ValidateRequest, ValidationResult, examples, lock_key,
    signing::Signer, subjects,
};
use infracrew_testkit::{NatsServer, free_port, http};
use uuid::Uuid;

/// The sample plan for `service` in `environment`, with its own ids.
fn plan(
    n: u128,
    service: &str,
    environment: &str,
    state: impl FnOnce(&mut DesiredState),
) -> PlanSpec {
    let mut plan = examples::plan_spec();
    plan.goal_id = GoalId(Uuid::from_u128(n));
    plan.plan_id = PlanId::for_goal(plan.goal_id);
    (plan.service, plan.environment) = (service.into(), environment.into());
    (plan.desired[0].service, plan.desired[0].environment) = (service.into(), environment.into());
    if let DesiredState::Running(spec) = &mut plan.desired[0].state {
        spec.image = format!("infracrew/{service}:1.4.0");
    }
    state(&mut plan.desired[0].state);
    plan
}

fn running(plan: &PlanSpec) -> ServiceState {
    let DesiredState::Running(spec) = &plan.desired[0].state else {
        unreachable!()
    };
    ServiceState::from_spec(spec)
}

async fn record_running(bus: &Bus, environment: &str, service: &str, state: &ServiceState) {
    let records = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    records
        .put(&format!("{environment}.{service}"), state)
        .await
        .unwrap();
}

/// The dry-run driver writes a service its change was rendered without (`expected: None`)
/// without reading it first; one that is recorded after all (the create of an earlier try
/// whose ack was lost) is compared, and a state recorded already is not recorded again. Each
/// way leaves the record as wanted, which is why Forge takes the apply as its verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_driver_records_each_state_once_whatever_it_expected() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let driver = DryRunDriver::open(&bus).await.unwrap();
    assert!(driver.apply_verifies());
    let records = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    let first = running(&plan(70, "dry-create", "dev", |_| {}));
    let second = one_more_replica(&first);
    let revisions = || async { records.history("dev.dry-create").await.unwrap().len() };

    apply_dry_run(&driver, Some(&first), None).await;
    assert_eq!(revisions().await, 1, "created in one write");
    apply_dry_run(&driver, Some(&first), None).await;
    assert_eq!(revisions().await, 1, "the state was recorded already");
    apply_dry_run(&driver, Some(&second), None).await;
    driver
        .verify("dev", "dry-create", Some(&second))
        .await
        .unwrap();
    assert_eq!(
        revisions().await,
        2,
        "a record found where none was expected is updated, not created again"
    );

    // A record this driver last wrote is written over unread; one another Forge changed
    // since fails that write and is read, and a state recorded already is left as it is.
    let third = one_more_replica(&second);
    apply_dry_run(&driver, Some(&third), Some(&second)).await;
    assert_eq!(revisions().await, 3);
    let elsewhere = DryRunDriver::open(&bus).await.unwrap();
    let fourth = one_more_replica(&third);
    apply_dry_run(&elsewhere, Some(&fourth), Some(&third)).await;
    apply_dry_run(&driver, Some(&second), Some(&third)).await;
    apply_dry_run(&driver, Some(&second), Some(&third)).await;
    driver
        .verify("dev", "dry-create", Some(&second))
        .await
        .unwrap();
    assert_eq!(
        revisions().await,
        5,
        "the stale write was refused and the state written once over what was there"
    );

    apply_dry_run(&driver, None, Some(&second)).await;
    driver.verify("dev", "dry-create", None).await.unwrap();
}

fn one_more_replica(state: &ServiceState) -> ServiceState {
    ServiceState {
        replicas: state.replicas + 1,
        ..state.clone()
    }
}

/// Applies `state` to dev's `dry-create` with the dry-run driver, as rendered against `expected`.
async fn apply_dry_run(
    driver: &DryRunDriver,
    state: Option<&ServiceState>,
    expected: Option<&ServiceState>,
) {
    let context = ApplyContext {
        plan_id: examples::plan_spec().plan_id,
        digest: "sha256:dry-run-test".into(),
        strategy: Strategy::Rolling,
        expected: expected.cloned(),
        progress: Progress::silent(),
    };
    driver
        .apply("dev", "dry-create", state, &context)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_plans_are_rendered_judged_and_reported() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let sentinel = AgentProcess::start("sentinel", &server, &[]);
    let forge = AgentProcess::start("forge", &server, &["--driver", "dry-run"]);

    // What the dry-run driver records as running: mission-control 1.3.0, twice applied.
    let mut old = running(&plan(0, "mission-control", "staging", |_| {}));
    old.port = 3007;
    old.published_port = Some(3007);
    for version in ["1.2.0", "1.3.0"] {
        old.image = format!("infracrew/mission-control:{version}");
        record_running(&bus, "staging", "mission-control", &old).await;
    }
    let with_port = |state: &mut DesiredState| {
        if let DesiredState::Running(spec) = state {
            spec.port = 3007;
        }
    };

    let first_deploy = plan(1, "social-intel", "staging", |_| {});
    let unpinned = plan(2, "social-intel", "dev", |state| {
        if let DesiredState::Running(spec) = state {
            spec.image = "infracrew/social-intel:latest".into();
        }
    });
    let remove_nothing = plan(3, "alfred-bot", "dev", |state| {
        *state = DesiredState::Absent
    });
    let scale_nothing = plan(4, "financial-tax", "dev", |state| {
        *state = DesiredState::Scaled { replicas: 3 }
    });
    let upgrade = plan(5, "mission-control", "staging", with_port);
    let mut rollback = plan(6, "mission-control", "staging", |state| {
        *state = DesiredState::PreviousRevision
    });
    rollback.intent = Intent::Rollback;
    let plans = [
        &first_deploy,
        &unpinned,
        &remove_nothing,
        &scale_nothing,
        &upgrade,
        &rollback,
    ];
    for plan in plans {
        bus.publish(subjects::PLAN_ROUTED, plan).await.unwrap();
    }

    let statuses: Vec<BuildStatus> = wait_for(
        &bus,
        subjects::BUILD_STATUS,
        plans.len(),
        &[&forge, &sentinel],
    )
    .await;
    let status = |plan: &PlanSpec| {
        statuses
            .iter()
            .find(|s| s.plan_id == plan.plan_id)
            .unwrap()
            .clone()
    };

    let ready = status(&first_deploy);
    assert_eq!(ready.outcome, BuildOutcome::Ready, "{:?}", ready.findings);
    assert_eq!(
        ready.digest,
        ready.change.digest().unwrap(),
        "the digest is the reported change's"
    );
    assert_eq!(ready.change.driver, "dry-run");
    assert_eq!(ready.change.resources[0].action, ChangeAction::Create);
    assert!(
        ready
            .diff_text
            .starts_with("+ service/staging/social-intel (create)"),
        "{}",
        ready.diff_text
    );
    assert!(ready.policy_set.starts_with("sha256:") && ready.cost.is_some());

    let blocked = status(&unpinned);
    assert_eq!(blocked.outcome, BuildOutcome::Blocked);
    assert!(
        blocked.findings.iter().any(|f| f.rule == "image_pinned"),
        "{:?}",
        blocked.findings
    );

    let nothing = status(&remove_nothing);
    assert_eq!(nothing.outcome, BuildOutcome::NoChange);
    assert!(
        nothing
            .diff_text
            .contains("0 to create, 0 to change, 0 to remove"),
        "{}",
        nothing.diff_text
    );

    let cannot = status(&scale_nothing);
    assert_eq!(cannot.outcome, BuildOutcome::Blocked);
    assert!(
        cannot.findings[0]
            .message
            .contains("nothing runs, so there is nothing to scale"),
        "{:?}",
        cannot.findings
    );

    let upgraded = status(&upgrade);
    assert_eq!(
        upgraded.outcome,
        BuildOutcome::Ready,
        "{:?}",
        upgraded.findings
    );
    assert_eq!(upgraded.change.resources[0].changed_fields, ["image"]);
    assert!(
        upgraded
            .diff_text
            .contains("image: infracrew/mission-control:1.3.0 -> infracrew/mission-control:1.4.0"),
        "{}",
        upgraded.diff_text
    );

    let rolled = status(&rollback);
    assert!(
        rolled
            .diff_text
            .contains("image: infracrew/mission-control:1.3.0 -> infracrew/mission-control:1.2.0"),
        "{}",
        rolled.diff_text
    );
}

/// Records `plan` as the Conductor would have it in `state`, decided on `build`.
async fn record_plan(
    plans: &Kv<PlanRecord>,
    plan: &PlanSpec,
    state: PlanState,
    build: &BuildStatus,
) {
    let record = PlanRecord {
        build: Some(build.clone()),
        decision_opened_at: Some(Utc::now()),
        ..PlanRecord::new(plan.clone(), state)
    };
    plans.put(&plan.plan_id.to_string(), &record).await.unwrap();
}

/// What the Conductor does on an approval: the record says APPROVED with `build`, and the
/// plan holds the lock with fencing token `token`.
async fn approve_as_the_conductor(
    bus: &Bus,
    plans: &Kv<PlanRecord>,
    plan: &PlanSpec,
    build: &BuildStatus,
    token: u64,
) {
    record_plan(plans, plan, PlanState::Approved, build).await;
    hold_lock(bus, plan, plan.plan_id, token).await;
}

async fn hold_lock(bus: &Bus, plan: &PlanSpec, holder_plan: PlanId, token: u64) {
    let locks = bus.kv::<LockRecord>(buckets::LOCKS).await.unwrap();
    let lock = LockRecord {
        plan_id: holder_plan,
        holder: "test".into(),
        token,
        acquired_at: Utc::now(),
        renewed_at: Utc::now(),
        waiting: Vec::new(),
    };
    locks
        .put(&lock_key(&plan.environment, &plan.service), &lock)
        .await
        .unwrap();
}

/// Forge and Sentinel on a server of their own, and the plan numbered `number` for `service` in
/// staging, routed, built and approved as the Conductor approves.
struct ApprovedPlan {
    bus: Bus,
    forge: AgentProcess,
    plan: PlanSpec,
    build: BuildStatus,
    /// Held so Sentinel and the server run as long as the test.
    _sentinel: AgentProcess,
    _server: NatsServer,
}

impl ApprovedPlan {
    /// Sends the plan's ApplyRequest as the Conductor signs it, with fencing token `token`,
    /// expiring `expires_in` seconds from now.
    async fn request_apply(&self, token: u64, expires_in: i64) {
        let request = apply_request(&self.plan, &self.build, token, expires_in);
        self.bus
            .publish(subjects::APPLY_REQUEST, &request)
            .await
            .unwrap();
    }
}

/// Approved as the Conductor approves, with fencing token `token`.
async fn an_approved_plan(number: u128, service: &str, token: u64) -> ApprovedPlan {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let sentinel = AgentProcess::start("sentinel", &server, &[]);
    let forge = AgentProcess::start("forge", &server, &[]);
    let plan = plan(number, service, "staging", |_| {});
    bus.publish(subjects::PLAN_ROUTED, &plan).await.unwrap();
    let mut built: Vec<BuildStatus> =
        wait_for(&bus, subjects::BUILD_STATUS, 1, &[&forge, &sentinel]).await;
    let build = built.remove(0);
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    approve_as_the_conductor(&bus, &plans, &plan, &build, token).await;
    ApprovedPlan {
        bus,
        forge,
        plan,
        build,
        _sentinel: sentinel,
        _server: server,
    }
}

/// Another Forge holds the plan's apply lease, last renewed `renewed_ago`; the builds bucket,
/// for reading the lease later.
async fn lease_held_by(
    bus: &Bus,
    plan: &PlanSpec,
    holder: &str,
    renewed_ago: chrono::Duration,
) -> Kv<BuildRecord> {
    let builds = bus.kv::<BuildRecord>(buckets::BUILDS).await.unwrap();
    let key = plan.plan_id.to_string();
    let mut build = builds.get(&key).await.unwrap().unwrap();
    build.value.applying = Some(ApplyLease {
        holder: holder.to_owned(),
        renewed_at: Utc::now() - renewed_ago,
        ended: None,
    });
    builds
        .update(&key, &build.value, build.revision)
        .await
        .unwrap();
    builds
}

fn apply_request(
    plan: &PlanSpec,
    build: &BuildStatus,
    token: u64,
    expires_in: i64,
) -> ApplyRequest {
    ApplyRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan.plan_id,
        digest: build.digest.clone(),
        fencing_token: token,
        approvers: vec!["alice".into()],
        issued_at: Utc::now(),
        expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
        signature: String::new(),
    }
    .signed_by(&conductor_key().0)
}

/// A Forge that did not build a plan (here, one restarted between the build and its verdict)
/// remembers nothing of it: it reports the verdict with the change from the build record,
/// ignores a verdict on another rendering, and its gate reads the plan's lock after the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forge_that_did_not_build_a_plan_reports_and_applies_it_from_the_records() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let forge = AgentProcess::start("forge", &server, &[]);
    let plan = plan(80, "legal-compliance", "staging", |_| {});
    bus.publish(subjects::PLAN_ROUTED, &plan).await.unwrap();
    let judged: Vec<ValidateRequest> =
        wait_for(&bus, subjects::VALIDATE_PENDING, 1, &[&forge]).await;
    let judged = &judged[0];
    drop(forge);
    let forge = AgentProcess::start("forge", &server, &[]);

    let verdict = |digest: &PlanDigest| ValidationResult {
        plan_id: plan.plan_id,
        digest: digest.clone(),
        findings: Vec::new(),
        ..examples::validation_result()
    };
    let other_rendering = examples::validation_result().digest;
    assert_ne!(other_rendering, judged.digest);
    for digest in [&other_rendering, &judged.digest] {
        bus.publish(subjects::VALIDATE_RESULT, &verdict(digest))
            .await
            .unwrap();
    }
    wait_until_drained(&bus, "forge").await;
    let built: Vec<BuildStatus> = messages_on(&bus, subjects::BUILD_STATUS).await;
    assert_eq!(built.len(), 1, "one verdict reported: {built:#?}");
    let build = &built[0];
    assert_eq!(build.outcome, BuildOutcome::Ready);
    assert_eq!(
        (&build.digest, &build.change),
        (&judged.digest, &judged.change)
    );
    assert!(
        forge
            .log()
            .contains("a validation result for an older rendering"),
        "{}",
        forge.log()
    );

    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    approve_as_the_conductor(&bus, &plans, &plan, build, 5).await;
    bus.publish(subjects::APPLY_REQUEST, &apply_request(&plan, build, 5, 60))
        .await
        .unwrap();
    let events: Vec<OpsEvent> = wait_for(&bus, subjects::OPS, 2, &[&forge]).await;
    assert_eq!(
        events.last().map(|event| event.kind),
        Some(OpsEventKind::ApplyDone),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_plan_is_applied_step_by_step_and_recorded() {
    let approved = an_approved_plan(1, "social-intel", 7).await;
    let ApprovedPlan {
        bus,
        forge,
        plan,
        build,
        ..
    } = &approved;
    assert_eq!(build.outcome, BuildOutcome::Ready, "{:?}", build.findings);

    approved.request_apply(7, 60).await;

    let events: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 2, &[forge]).await;
    let kinds: Vec<OpsEventKind> = events.iter().map(|e| e.kind).collect();
    use OpsEventKind::*;
    // An apply, and a step, that end within a second report their start (events 1 and 2)
    // with their end.
    assert_eq!(kinds, [StepSucceeded, ApplyDone], "{events:#?}");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    let (step, done) = (&events[0], &events[1]);
    assert_eq!(
        step.step.as_deref(),
        Some("apply service/staging/social-intel")
    );
    let step_started = step.started_at.expect("the step's start, with its end");
    assert!(step_started <= step.at, "{step:#?}");
    assert!(
        done.started_at
            .is_some_and(|started| started <= step_started && step.at <= done.at),
        "{done:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.digest == build.digest && e.driver == "dry-run")
    );
    // The Conductor reads only the apply's start and end; the steps have their own subject.
    let moving: Vec<OpsEventKind> = messages_on::<OpsEvent>(bus, subjects::OPS_EVENT)
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(moving, [ApplyDone]);
    let records = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    let recorded = records
        .get("staging.social-intel")
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        recorded,
        running(plan),
        "the dry-run driver recorded the approved state"
    );

    // A copy of the routing that comes after the plan moved on (the Conductor's sweeper sends
    // one when it thinks the first lost) is not built again: the approved build stays.
    bus.publish_with_id(subjects::PLAN_ROUTED, plan, "plan-copy-0")
        .await
        .unwrap();
    wait_until_drained(bus, "forge").await;
    let statuses: Vec<BuildStatus> = messages_on(bus, subjects::BUILD_STATUS).await;
    assert_eq!(statuses.len(), 1, "built once: {statuses:#?}");
    assert!(
        forge.log().contains("routed again after it was built"),
        "{}",
        forge.log()
    );
}

/// The Forge that built a plan takes its apply's lease beside the gate's reads; a request the
/// gate refuses frees it again, so the next request applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_leaves_the_build_free_for_the_next() {
    let approved = an_approved_plan(4, "financial-tax", 6).await;
    let ApprovedPlan {
        bus, forge, plan, ..
    } = &approved;
    let builds = bus.kv::<BuildRecord>(buckets::BUILDS).await.unwrap();
    let key = plan.plan_id.to_string();
    let built = builds.get(&key).await.unwrap().unwrap();

    approved.request_apply(5, 60).await;
    let refused: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 1, &[forge]).await;
    assert_eq!(refused[0].refused_by, Some(GateCheck::Lock), "{refused:#?}");
    wait_until_drained(bus, "forge").await;
    let freed = builds.get(&key).await.unwrap().unwrap();
    assert!(
        freed.revision > built.revision,
        "the lease was taken beside the gate"
    );
    assert_eq!(freed.value.applying, None, "the refusal freed the lease");

    approved.request_apply(6, 60).await;
    let events: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 3, &[forge]).await;
    assert_eq!(
        events.last().unwrap().kind,
        OpsEventKind::ApplyDone,
        "{events:#?}"
    );
    assert!(
        !forge
            .log()
            .contains("another apply of this plan is under way"),
        "{}",
        forge.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_under_way_is_not_applied_by_a_second_request_until_its_lease_lapses_nor_after_it_ended()
 {
    let approved = an_approved_plan(2, "alfred-bot", 3).await;
    let ApprovedPlan {
        bus, forge, plan, ..
    } = &approved;

    // Another Forge took the plan's apply 12 s ago and has not renewed its lease since: it
    // lapses 3 s from now, and only then may this request apply.
    let builds = lease_held_by(bus, plan, "forge elsewhere", chrono::Duration::seconds(12)).await;
    let key = plan.plan_id.to_string();
    approved.request_apply(3, 60).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let early: Vec<OpsEvent> = messages_on(bus, subjects::OPS).await;
    assert!(
        early.is_empty(),
        "applied while another held the lease: {early:#?}"
    );
    assert!(
        forge
            .log()
            .contains("another apply of this plan is under way"),
        "{}",
        forge.log()
    );

    let events: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 2, &[forge]).await;
    assert_eq!(
        events.last().unwrap().kind,
        OpsEventKind::ApplyDone,
        "{events:#?}"
    );
    // The lease is marked ended once the last event is confirmed, before the request's ack.
    wait_until_drained(bus, "forge").await;
    let lease = builds
        .get(&key)
        .await
        .unwrap()
        .unwrap()
        .value
        .applying
        .unwrap();
    assert!(
        lease.holder.starts_with("forge ") && lease.holder != "forge elsewhere",
        "{lease:?}"
    );
    assert_eq!(lease.ended.as_deref(), Some("applied"));

    // A second request for the same build (the sweeper resends one it thinks lost) finds the
    // apply ended and changes nothing, whatever the plan's record still says.
    approved.request_apply(3, 60).await;
    wait_until_drained(bus, "forge").await;
    let after: Vec<OpsEvent> = messages_on(bus, subjects::OPS).await;
    assert_eq!(after.len(), events.len(), "applied again: {after:#?}");
    assert!(forge.log().contains("has ended already"), "{}", forge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_carries_on_only_an_apply_that_started_in_time() {
    let approved = an_approved_plan(3, "legal-compliance", 5).await;
    let ApprovedPlan {
        bus,
        forge,
        plan,
        build,
        ..
    } = &approved;

    // APPROVED: no apply of the plan has started, so an expired request starts none.
    approved.request_apply(5, -5).await;
    let refused: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 1, &[forge]).await;
    assert_eq!(refused[0].kind, OpsEventKind::ApplyRefused);
    assert_eq!(refused[0].refused_by, Some(GateCheck::Expiry));

    // APPLYING, and the Forge that started it died (its lease lapsed, never ended): the
    // request's redelivery, expired by now, carries the apply on.
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    record_plan(&plans, plan, PlanState::Applying, build).await;
    let builds = lease_held_by(bus, plan, "forge that died", chrono::Duration::minutes(1)).await;
    let key = plan.plan_id.to_string();
    approved.request_apply(5, -5).await;
    let events: Vec<OpsEvent> = wait_for(bus, subjects::OPS, 3, &[forge]).await;
    let kinds: Vec<OpsEventKind> = events.iter().skip(1).map(|e| e.kind).collect();
    use OpsEventKind::*;
    assert_eq!(kinds, [StepSucceeded, ApplyDone], "{events:#?}");
    // The lease is marked ended once the last event is confirmed, before the request's ack.
    wait_until_drained(bus, "forge").await;
    let lease = builds.get(&key).await.unwrap().unwrap().value.applying;
    assert_eq!(lease.unwrap().ended.as_deref(), Some("applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_apply_requests_are_refused_with_the_reason_and_change_nothing() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let forge = AgentProcess::start("forge", &server, &["--listen", &listen]);
    let plans = bus.kv::<PlanRecord>(buckets::PLANS).await.unwrap();
    let build = examples::build_status();

    let mut cases: Vec<(ApplyRequest, GateCheck, &str)> = Vec::new();
    let unknown = plan(10, "social-intel", "staging", |_| {});
    cases.push((
        apply_request(&unknown, &build, 1, 60),
        GateCheck::Plan,
        "has no record: it was not submitted through the Conductor",
    ));

    let unapproved = plan(11, "alfred-bot", "staging", |_| {});
    record_plan(&plans, &unapproved, PlanState::Ready, &build).await;
    cases.push((
        apply_request(&unapproved, &build, 1, 60),
        GateCheck::Plan,
        "is READY, not APPROVED",
    ));

    let swapped = plan(12, "legal-compliance", "staging", |_| {});
    record_plan(&plans, &swapped, PlanState::Approved, &build).await;
    let mut other_change = build.clone();
    other_change.digest =
        infracrew_protocol::PlanDigest::of_value(&serde_json::json!({"a": "different change"}));
    cases.push((
        apply_request(&swapped, &other_change, 1, 60),
        GateCheck::Plan,
        "but the approved change is",
    ));

    let stale = plan(13, "financial-tax", "staging", |_| {});
    approve_as_the_conductor(&bus, &plans, &stale, &build, 9).await;
    cases.push((
        apply_request(&stale, &build, 8, 60),
        GateCheck::Lock,
        "fencing token 8 is stale",
    ));

    let taken = plan(14, "mission-control", "staging", |_| {});
    record_plan(&plans, &taken, PlanState::Approved, &build).await;
    hold_lock(&bus, &taken, PlanId(Uuid::nil()), 3).await;
    cases.push((
        apply_request(&taken, &build, 3, 60),
        GateCheck::Lock,
        "is held by plan 00000000",
    ));

    let late = plan(15, "social-intel", "dev", |_| {});
    approve_as_the_conductor(&bus, &plans, &late, &build, 1).await;
    cases.push((
        apply_request(&late, &build, 1, -5),
        GateCheck::Expiry,
        "the request expired",
    ));

    // Approved plans with a free lock: only the signature stands between them and an apply.
    let mut signed_wrong = Vec::new();
    for (number, environment) in [(16, "dev"), (17, "prod"), (18, "qa")] {
        let approved = plan(number, "alfred-bot", environment, |_| {});
        approve_as_the_conductor(&bus, &plans, &approved, &build, 1).await;
        signed_wrong.push(apply_request(&approved, &build, 1, 60));
    }
    let mut unsigned = signed_wrong.remove(0);
    unsigned.signature.clear();
    cases.push((
        unsigned,
        GateCheck::Signature,
        "the request is not the Conductor's: it is not signed",
    ));
    let (mallory, _) = Signer::generate();
    let other_key = signed_wrong.remove(0).signed_by(&mallory);
    cases.push((
        other_key,
        GateCheck::Signature,
        "its signature was not made by the trusted key",
    ));
    let mut tampered = signed_wrong.remove(0);
    tampered.approvers = vec!["mallory".into()];
    cases.push((
        tampered,
        GateCheck::Signature,
        "its signature was not made by the trusted key",
    ));

    for (request, _, _) in &cases {
        bus.publish(subjects::APPLY_REQUEST, request).await.unwrap();
    }
    let events: Vec<OpsEvent> = wait_for(&bus, subjects::OPS, cases.len(), &[&forge]).await;
    for (request, check, reason) in &cases {
        let event = events
            .iter()
            .find(|e| e.plan_id == request.plan_id)
            .unwrap();
        assert_eq!(event.kind, OpsEventKind::ApplyRefused, "{event:?}");
        assert_eq!(event.refused_by, Some(*check), "{event:?}");
        assert!(
            event.message.contains(reason),
            "{reason}: {}",
            event.message
        );
        assert!(event.message.ends_with("nothing was changed"));
    }
    assert_eq!(
        events.len(),
        cases.len(),
        "one refusal each, no step of any apply"
    );
    // Counted by check on /metrics (where the unsigned-request alert reads them) before each
    // request is acknowledged.
    wait_until_drained(&bus, "forge").await;
    let (_, metrics) = http::get(&format!("http://{listen}/metrics"))
        .await
        .unwrap();
    for check in GateCheck::ALL {
        let expected = cases.iter().filter(|(_, by, _)| *by == check).count();
        let sample =
            format!("infracrew_apply_requests_refused_total{{check=\"{check}\"}} {expected}");
        assert!(
            metrics.lines().any(|line| line == sample),
            "{sample} in\n{metrics}"
        );
    }
    let records = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    for key in [
        "staging.social-intel",
        "staging.alfred-bot",
        "staging.legal-compliance",
        "staging.financial-tax",
        "staging.mission-control",
        "dev.social-intel",
        "dev.alfred-bot",
        "prod.alfred-bot",
        "qa.alfred-bot",
    ] {
        assert!(
            records.get(key).await.unwrap().is_none(),
            "{key} was not applied"
        );
    }
}
