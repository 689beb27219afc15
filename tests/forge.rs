//! Forge and Sentinel as running binaries on a real nats-server: a routed plan is rendered
//! against the dry-run driver's records, judged, and reported as ready, blocked or nothing
//! to change; an ApplyRequest is refused because this Forge does not apply yet.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use infracrew_bus::{Bus, buckets};
use infracrew_e2e::{AgentProcess, crew_bus, wait_for};
use infracrew_protocol::{
    ApplyRequest, BuildOutcome, BuildStatus, ChangeAction, DesiredState, GoalId, Intent, OpsEvent,
    OpsEventKind, PlanId, PlanSpec, ServiceState, examples, subjects,
};
use infracrew_testkit::NatsServer;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_request_is_refused_and_changes_nothing() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let forge = AgentProcess::start("forge", &server, &[]);
    let request: ApplyRequest = examples::apply_request();
    bus.publish(subjects::APPLY_REQUEST, &request)
        .await
        .unwrap();
    let events: Vec<OpsEvent> = wait_for(&bus, subjects::OPS_EVENT, 1, &[&forge]).await;
    assert_eq!(events[0].kind, OpsEventKind::ApplyRefused);
    assert_eq!(events[0].plan_id, request.plan_id);
    let records = bus.kv::<ServiceState>(buckets::DRY_RUN).await.unwrap();
    assert!(
        records.get("staging.social-intel").await.unwrap().is_none(),
        "nothing recorded as applied"
    );
}
