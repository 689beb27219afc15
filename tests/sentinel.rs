//! Sentinel as a running binary on a real nats-server: ValidateRequests in, verdicts with
//! findings out; policies reloaded without a restart, and a broken one refused.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{path::Path, time::Duration};

use infracrew_e2e::{AgentProcess, crew_bus, wait_for};
use infracrew_protocol::{
    ChangeAction, ChangeSet, Enforcement, GoalStatement, PlanId, ResourceChange, ValidateRequest,
    ValidationResult, Verdict, examples, subjects,
};
use infracrew_testkit::{NatsServer, workspace_root};
use serde_json::{Value, json};

/// The repository's playbooks in a temporary folder, so a test may change them.
fn playbooks_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = workspace_root().join("playbooks");
    for name in [
        "catalog.toml",
        "policy.toml",
        "deploy.toml",
        "scale.toml",
        "rollback.toml",
        "decommission.toml",
    ] {
        std::fs::copy(source.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    for entry in std::fs::read_dir(source.join("policies")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            dir.path().join("policies").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    dir
}

fn compliant_service(service: &str, port: u16, replicas: u32) -> Value {
    json!({
        "image": format!("infracrew/{service}:1.4.0"), "replicas": replicas, "port": port, "published_port": port,
        "env": {"LOG_LEVEL": "info"},
        "resources": {"cpu_request_millis": 250, "cpu_limit_millis": 500, "memory_request_mib": 256, "memory_limit_mib": 512},
        "health": {"live": "/health/live", "ready": "/health/ready"},
        "privileged": false, "host_network": false
    })
}

/// A request to judge a change in `environment` whose resources `shape` gives, for goal `n`.
fn request(n: u32, environment: &str, shape: impl Fn(&mut Vec<ResourceChange>)) -> ValidateRequest {
    let mut goal: GoalStatement = examples::goal();
    goal.goal_id = None;
    goal.environment = environment.into();
    goal.reason = Some(format!("case {n}"));
    let goal = goal.with_id();
    let plan_id = PlanId::for_goal(goal.id());
    let mut plan = examples::plan_spec();
    (plan.plan_id, plan.goal_id, plan.environment) = (plan_id, goal.id(), environment.into());
    let mut resources = vec![ResourceChange {
        resource: format!("service/{environment}/social-intel"),
        action: ChangeAction::Create,
        before: None,
        after: Some(compliant_service("social-intel", 9000, 2)),
        changed_fields: vec![],
    }];
    shape(&mut resources);
    let change = ChangeSet {
        plan_id,
        driver: "dry-run".into(),
        resources,
    };
    ValidateRequest {
        schema_version: infracrew_protocol::SchemaVersion::CURRENT,
        plan_id,
        digest: change.digest().unwrap(),
        plan,
        change,
        requested_at: chrono::Utc::now(),
    }
}

fn set(field: &'static str, value: Value) -> impl Fn(&mut Vec<ResourceChange>) {
    move |resources| {
        resources[0].after.as_mut().unwrap()[field] = value.clone();
    }
}

fn sentinel(server: &NatsServer, playbooks: &Path) -> AgentProcess {
    AgentProcess::start(
        "sentinel",
        server,
        &[
            "--playbooks",
            playbooks.to_str().unwrap(),
            "--policy-reload-interval",
            "100ms",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliant_change_passes_and_every_default_rule_can_fail_one() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let playbooks = playbooks_copy();
    // A freeze on dev that covers now, for the freeze rule.
    let settings = playbooks.path().join("policy.toml");
    let mut text = std::fs::read_to_string(&settings).unwrap();
    text.push_str("\n[[freeze]]\nenvironment = \"dev\"\nstart = \"2000-01-01T00:00:00Z\"\nend = \"2999-01-01T00:00:00Z\"\nreason = \"test freeze\"\n");
    std::fs::write(&settings, text).unwrap();
    let sentinel = sentinel(&server, playbooks.path());

    type Case = (
        ValidateRequest,
        Option<(&'static str, Enforcement, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (request(0, "staging", |_| {}), None),
        (
            request(
                1,
                "staging",
                set("image", json!("infracrew/social-intel:latest")),
            ),
            Some(("image_pinned", Enforcement::HardMandatory, "latest")),
        ),
        (
            request(2, "staging", |r| {
                r[0].after.as_mut().unwrap()["resources"]["memory_limit_mib"] = json!(64);
            }),
            Some(("resources_set", Enforcement::HardMandatory, "64")),
        ),
        (
            request(3, "staging", |r| {
                r[0].after.as_mut().unwrap()["health"] = json!({"live": "/health/live"});
            }),
            Some(("probes_set", Enforcement::HardMandatory, "ready")),
        ),
        (
            request(4, "prod", set("replicas", json!(1))),
            Some(("prod_min_replicas", Enforcement::SoftMandatory, "1")),
        ),
        (
            request(5, "staging", set("privileged", json!(true))),
            Some(("no_privileged", Enforcement::HardMandatory, "privileged")),
        ),
        (
            request(6, "staging", set("host_network", json!(true))),
            Some(("no_host_network", Enforcement::HardMandatory, "host")),
        ),
        (
            request(7, "staging", set("published_port", json!(8080))),
            Some(("catalog_ports_only", Enforcement::HardMandatory, "8080")),
        ),
        (
            request(8, "dev", |_| {}),
            Some(("change_freeze", Enforcement::SoftMandatory, "test freeze")),
        ),
        (
            request(9, "staging", |r| {
                for (name, port) in [
                    ("legal-compliance", 9002),
                    ("financial-tax", 9003),
                    ("alfred-bot", 8011),
                    ("mission-control", 3007),
                    ("social-intel-2", 9000),
                ] {
                    let mut extra = r[0].clone();
                    extra.resource = format!("service/staging/{name}");
                    extra.after = Some(compliant_service(name, port, 2));
                    r.push(extra);
                }
                r.truncate(6);
                for (index, resource) in r.iter_mut().enumerate().skip(5) {
                    resource.resource = format!("service/staging/alfred-bot-{index}");
                }
            }),
            Some(("blast_radius", Enforcement::HardMandatory, "6")),
        ),
        (
            request(10, "staging", set("replicas", json!(60))),
            Some(("budget", Enforcement::SoftMandatory, "250")),
        ),
        (
            request(11, "staging", |r| {
                r[0].action = ChangeAction::Update;
                r[0].before = Some(compliant_service("social-intel", 9000, 2));
                r[0].after.as_mut().unwrap()["replicas"] = json!(5);
            }),
            Some(("large_scale_change", Enforcement::Advisory, "5")),
        ),
        (
            request(12, "prod", |r| {
                r[0].action = ChangeAction::Update;
                r[0].before = Some(compliant_service("social-intel", 9000, 2));
                r[0].after.as_mut().unwrap()["replicas"] = json!(5);
            }),
            Some(("large_scale_change", Enforcement::SoftMandatory, "5")),
        ),
    ];
    for (request, _) in &cases {
        bus.publish(subjects::VALIDATE_PENDING, request)
            .await
            .unwrap();
    }
    let results: Vec<ValidationResult> =
        wait_for(&bus, subjects::VALIDATE_RESULT, cases.len(), &[&sentinel]).await;
    for (request, expected) in &cases {
        let result = results
            .iter()
            .find(|r| r.plan_id == request.plan_id)
            .unwrap();
        assert_eq!(result.digest, request.digest);
        assert!(
            result.policy_set.starts_with("sha256:"),
            "{}",
            result.policy_set
        );
        assert!(result.cost.is_some());
        match expected {
            None => {
                assert_eq!(result.verdict, Verdict::Pass, "{:?}", result.findings);
                assert!(result.findings.is_empty(), "{:?}", result.findings);
            }
            Some((rule, enforcement, mentions)) => {
                let finding = result
                    .findings
                    .iter()
                    .find(|f| f.rule == *rule)
                    .unwrap_or_else(|| panic!("no {rule} finding: {:?}", result.findings));
                assert_eq!(finding.enforcement, *enforcement, "{finding:?}");
                assert!(
                    finding.message.contains(mentions),
                    "{rule}: {}",
                    finding.message
                );
                assert!(
                    !finding.policy.is_empty() && !finding.resource.is_empty(),
                    "{finding:?}"
                );
                let verdict = if *enforcement == Enforcement::Advisory {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                };
                assert_eq!(result.verdict, verdict, "{rule}: {:?}", result.findings);
            }
        }
    }
    let budget = results
        .iter()
        .find(|r| r.plan_id == cases[10].0.plan_id)
        .unwrap();
    assert!(
        budget.cost.as_ref().unwrap().monthly_delta > 250.0,
        "{:?}",
        budget.cost
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_is_refused_and_the_previous_set_still_applies() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let playbooks = playbooks_copy();
    let sentinel = sentinel(&server, playbooks.path());

    bus.publish(subjects::VALIDATE_PENDING, &request(1, "staging", |_| {}))
        .await
        .unwrap();
    let first: Vec<ValidationResult> =
        wait_for(&bus, subjects::VALIDATE_RESULT, 1, &[&sentinel]).await;
    let version = first[0].policy_set.clone();

    let broken = playbooks.path().join("policies/zz_broken.rego");
    std::fs::write(
        &broken,
        "package infracrew.policy.zz_broken\nimport rego.v1\n\nrules := {\n  \"x\": \n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sentinel.log().contains("policy reload refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{}",
            sentinel.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sentinel.log().contains("zz_broken.rego"),
        "names the file:\n{}",
        sentinel.log()
    );

    bus.publish(
        subjects::VALIDATE_PENDING,
        &request(2, "staging", set("image", json!("infracrew/social-intel"))),
    )
    .await
    .unwrap();
    let results: Vec<ValidationResult> =
        wait_for(&bus, subjects::VALIDATE_RESULT, 2, &[&sentinel]).await;
    assert_eq!(results[1].policy_set, version, "the previous set judged it");
    assert_eq!(results[1].verdict, Verdict::Fail);
    assert!(results[1].findings.iter().any(|f| f.rule == "image_pinned"));

    // Mended: the new set (with one more rule) takes over without a restart.
    std::fs::write(
        &broken,
        "package infracrew.policy.zz_broken\nimport rego.v1\n\nrules := {\"no_friday\": {\"enforcement\": \"advisory\", \"description\": \"x\"}}\n\nviolations contains v if {\n  some r in input.resources\n  v := {\"rule\": \"no_friday\", \"resource\": r.resource, \"message\": \"it is always Friday here\"}\n}\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sentinel.log().contains("policies reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload logged:\n{}",
            sentinel.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bus.publish(subjects::VALIDATE_PENDING, &request(3, "staging", |_| {}))
        .await
        .unwrap();
    let results: Vec<ValidationResult> =
        wait_for(&bus, subjects::VALIDATE_RESULT, 3, &[&sentinel]).await;
    assert_ne!(results[2].policy_set, version);
    assert_eq!(
        results[2].verdict,
        Verdict::Pass,
        "advisory findings do not block"
    );
    assert!(results[2].findings.iter().any(|f| f.rule == "no_friday"));
}

#[test]
fn a_policy_that_does_not_compile_stops_sentinel_at_start() {
    let server = NatsServer::start().unwrap();
    let playbooks = playbooks_copy();
    std::fs::write(playbooks.path().join("policies/broken.rego"), "package infracrew.policy.broken\nimport rego.v1\n\nrules := {\"x\": 1 +}\n\ndefault allowed := false\n").unwrap();
    let mut sentinel = sentinel(&server, playbooks.path());
    assert_eq!(
        sentinel.wait(Duration::from_secs(10)),
        Some(78),
        "{}",
        sentinel.log()
    );
    let log = sentinel.log();
    assert!(log.contains("broken.rego"), "{log}");
    assert!(
        log.contains("does not compile at line 4"),
        "names the line: {log}"
    );
}
