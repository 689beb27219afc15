//! Atlas as a running binary on a real nats-server: goals in, plans or rejections out.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::time::Duration;

use infracrew_e2e::{AgentProcess, crew_bus, messages_on, wait_for, wait_until_drained};
use infracrew_protocol::{
    DesiredState, GoalRejected, GoalStatement, Intent, PlanId, PlanSpec, RiskLevel, examples,
    subjects,
};
use infracrew_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_goal_becomes_the_expected_plan_once() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let atlas = AgentProcess::start("atlas", &server, &[]);
    let goal = examples::goal();

    bus.publish(subjects::GOAL_SUBMITTED, &goal).await.unwrap();
    // The same goal again, as a redelivery or a second submission would bring it, after the
    // first was planned.
    let plans: Vec<PlanSpec> = wait_for(&bus, subjects::PLAN_PENDING, 1, &[&atlas]).await;
    bus.publish_bytes(
        subjects::GOAL_SUBMITTED,
        "goal_statement",
        "a-second-copy",
        serde_json::to_vec(&goal).unwrap().into(),
    )
    .await
    .unwrap();
    // Handled, not merely received: the consumer has acknowledged the second copy.
    wait_until_drained(&bus, "atlas").await;
    let plans_after: Vec<PlanSpec> = messages_on(&bus, subjects::PLAN_PENDING).await;
    assert_eq!(plans_after.len(), 1, "the same goal yields one PlanSpec");

    let plan = &plans[0];
    assert_eq!(plan.plan_id, PlanId::for_goal(goal.id()));
    assert_eq!(
        (plan.service.as_str(), plan.environment.as_str()),
        ("social-intel", "staging")
    );
    assert_eq!(plan.requested_by, "dave");
    assert_eq!(
        (plan.playbook.name.as_str(), plan.playbook.version.as_str()),
        ("deploy", "1.0.0")
    );
    assert_eq!(plan.risk.level, RiskLevel::Medium);
    let DesiredState::Running(spec) = &plan.desired[0].state else {
        panic!("{plan:?}")
    };
    assert_eq!(spec.image, "infracrew/social-intel:1.4.0");
    assert_eq!((spec.replicas, spec.port), (2, 9000));
    assert!(
        messages_on::<GoalRejected>(&bus, subjects::GOAL_REJECTED)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_bad_goal_is_rejected_with_its_reason() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let atlas = AgentProcess::start("atlas", &server, &[]);

    let variant = |tweak: &dyn Fn(&mut GoalStatement)| {
        let mut goal = examples::goal();
        goal.goal_id = None;
        tweak(&mut goal);
        goal.with_id()
    };
    let cases: Vec<(GoalStatement, &str, &str, Option<&str>)> = vec![
        (
            variant(&|g| g.service = "social-intell".into()),
            "/service",
            "not in the service catalog",
            Some("social-intel"),
        ),
        (
            variant(&|g| g.environment = "qa".into()),
            "/environment",
            "not a configured environment",
            Some("prod"),
        ),
        (
            variant(&|g| g.version = Some("latest".into())),
            "/version",
            "is not pinned",
            None,
        ),
        (
            variant(&|g| {
                g.intent = Intent::Scale;
                g.strategy = None;
            }),
            "/version",
            "the scale playbook does not take version (it takes replicas)",
            Some("replicas"),
        ),
        (
            variant(&|g| {
                g.intent = Intent::Decommission;
                g.version = None;
                g.replicas = None;
                g.strategy = None;
                g.env.insert("A".into(), "b".into());
            }),
            "/env",
            "the decommission playbook does not take env",
            None,
        ),
    ];
    for (goal, ..) in &cases {
        bus.publish(subjects::GOAL_SUBMITTED, goal).await.unwrap();
    }
    let rejected: Vec<GoalRejected> =
        wait_for(&bus, subjects::GOAL_REJECTED, cases.len(), &[&atlas]).await;
    for (goal, field, text, choice) in &cases {
        let rejection = rejected.iter().find(|r| r.goal_id == goal.id()).unwrap();
        assert_eq!(rejection.plan_id, PlanId::for_goal(goal.id()));
        let reason = rejection
            .reasons
            .iter()
            .find(|r| r.field == *field)
            .unwrap_or_else(|| panic!("no reason at {field}: {:?}", rejection.reasons));
        assert!(reason.message.contains(text), "{field}: {}", reason.message);
        if let Some(choice) = choice {
            assert!(
                reason.choices.iter().any(|c| c == choice),
                "{:?}",
                reason.choices
            );
        }
    }
    assert!(
        messages_on::<PlanSpec>(&bus, subjects::PLAN_PENDING)
            .await
            .is_empty(),
        "nothing planned"
    );
}

#[test]
fn a_broken_catalog_stops_atlas_at_start_with_the_file_and_path() {
    let server = NatsServer::start().unwrap();
    let playbooks = tempfile::tempdir().unwrap();
    let source = infracrew_testkit::workspace_root().join("playbooks");
    for name in [
        "catalog.toml",
        "deploy.toml",
        "scale.toml",
        "rollback.toml",
        "decommission.toml",
    ] {
        std::fs::copy(source.join(name), playbooks.path().join(name)).unwrap();
    }
    let catalog = playbooks.path().join("catalog.toml");
    let text =
        std::fs::read_to_string(&catalog)
            .unwrap()
            .replacen("port = 9002", "port = \"9002\"", 1);
    std::fs::write(&catalog, text).unwrap();

    let mut atlas = AgentProcess::start(
        "atlas",
        &server,
        &["--playbooks", playbooks.path().to_str().unwrap()],
    );
    assert_eq!(
        atlas.wait(Duration::from_secs(10)),
        Some(78),
        "exits with EX_CONFIG"
    );
    let log = atlas.log();
    assert!(
        log.contains("catalog.toml: at /services/legal-compliance/port"),
        "{log}"
    );
    assert!(log.contains("\"9002\" is not of type"), "{log}");
}
