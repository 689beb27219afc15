//! Turning a goal into a plan: resolve the service, environment and playbook, check what the
//! goal asks against them, merge the catalog's defaults with the goal, and rate the risk.

use chrono::{DateTime, Utc};
use infracrew_playbooks::{CatalogService, Parameter, Playbook, Playbooks, intent_name};
use infracrew_protocol::{
    DesiredService, DesiredState, GoalStatement, Intent, PlanId, PlanSpec, PlaybookRef, Rejection,
    Risk, RiskLevel, SchemaVersion, ServiceSpec, Strategy,
};

/// Tags that move to new images over time: a plan must name what it will run.
const FLOATING_TAGS: [&str; 7] = [
    "latest", "stable", "main", "master", "edge", "nightly", "dev",
];

/// Plans `goal`, or says every reason it cannot be planned.
pub fn plan(
    goal: &GoalStatement,
    playbooks: &Playbooks,
    now: DateTime<Utc>,
) -> Result<PlanSpec, Vec<Rejection>> {
    let mut reasons = Vec::new();
    let catalog = &playbooks.catalog;
    let service = catalog.services.get(&goal.service);
    if service.is_none() {
        reasons.push(Rejection {
            field: "/service".into(),
            message: format!("{} is not in the service catalog", goal.service),
            choices: catalog.services.keys().cloned().collect(),
        });
    }
    if !catalog.environments.contains(&goal.environment) {
        reasons.push(Rejection {
            field: "/environment".into(),
            message: format!("{} is not a configured environment", goal.environment),
            choices: catalog.environments.clone(),
        });
    }
    let playbook = playbooks.for_intent(goal.intent);
    match playbook {
        Some(playbook) => check_parameters(goal, playbook, &mut reasons),
        None => reasons.push(Rejection {
            field: "/intent".into(),
            message: format!("no playbook handles {}", intent_name(goal.intent)),
            choices: playbooks
                .playbooks
                .keys()
                .map(|name| name.to_string())
                .collect(),
        }),
    }
    if let Some(version) = &goal.version
        && let Err(reason) = check_pinned(version)
    {
        reasons.push(reason);
    }
    let (Some(service), Some(playbook), true) = (service, playbook, reasons.is_empty()) else {
        return Err(reasons);
    };

    let goal_id = goal.id();
    let state = desired_state(goal, service, playbook);
    Ok(PlanSpec {
        schema_version: SchemaVersion::CURRENT,
        plan_id: PlanId::for_goal(goal_id),
        goal_id,
        intent: goal.intent,
        service: goal.service.clone(),
        environment: goal.environment.clone(),
        requested_by: goal.requested_by.clone(),
        reason: goal.reason.clone(),
        playbook: PlaybookRef {
            name: playbook.name.clone(),
            version: playbook.version.clone(),
        },
        steps: playbook.steps.clone(),
        risk: risk(goal, service, &state),
        desired: vec![DesiredService {
            service: goal.service.clone(),
            environment: goal.environment.clone(),
            state,
        }],
        created_at: now,
        source: goal.source.clone(),
    })
}

/// Refuses goal fields the playbook does not take, and missing ones it needs.
fn check_parameters(goal: &GoalStatement, playbook: &Playbook, reasons: &mut Vec<Rejection>) {
    let given = [
        (Parameter::Version, goal.version.is_some()),
        (Parameter::Replicas, goal.replicas.is_some()),
        (Parameter::Strategy, goal.strategy.is_some()),
        (Parameter::Env, !goal.env.is_empty()),
    ];
    let allowed: Vec<String> = playbook.parameters.iter().map(|p| p.to_string()).collect();
    for (parameter, is_given) in given {
        if is_given && !playbook.parameters.contains(&parameter) {
            let takes = if allowed.is_empty() {
                "no parameters".to_owned()
            } else {
                allowed.join(", ")
            };
            reasons.push(Rejection {
                field: format!("/{parameter}"),
                message: format!(
                    "the {} playbook does not take {parameter} (it takes {takes})",
                    playbook.name
                ),
                choices: allowed.clone(),
            });
        }
        if !is_given && playbook.required.contains(&parameter) {
            reasons.push(Rejection {
                field: format!("/{parameter}"),
                message: format!("the {} playbook needs {parameter}", playbook.name),
                choices: Vec::new(),
            });
        }
    }
    if goal.intent == Intent::Scale && goal.replicas == Some(0) {
        reasons.push(Rejection {
            field: "/replicas".into(),
            message: "scaling to 0 replicas is a decommission: use the decommission intent".into(),
            choices: Vec::new(),
        });
    }
}

/// A version must name one image for good: a tag that does not float, or a digest.
fn check_pinned(version: &str) -> Result<(), Rejection> {
    let refuse = |message: String| Rejection {
        field: "/version".into(),
        message,
        choices: Vec::new(),
    };
    if let Some(hex) = version.strip_prefix("sha256:") {
        return if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(())
        } else {
            Err(refuse(format!(
                "{version} is not a digest: sha256: must be followed by 64 lowercase hex digits"
            )))
        };
    }
    if FLOATING_TAGS.contains(&version.to_ascii_lowercase().as_str()) {
        return Err(refuse(format!(
            "{version} is not pinned: it moves to new images over time; name a version tag like 1.4.0 or a digest sha256:<64 hex>"
        )));
    }
    let valid_tag = version.len() <= 128
        && version
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid_tag {
        Ok(())
    } else {
        Err(refuse(format!(
            "{version} is not an image tag (letters, digits, '.', '_' and '-', at most 128) or a digest sha256:<64 hex>"
        )))
    }
}

/// The catalog's defaults for the environment, overridden by what the goal sets.
fn desired_state(
    goal: &GoalStatement,
    service: &CatalogService,
    playbook: &Playbook,
) -> DesiredState {
    let defaults = service.environments.get(&goal.environment);
    match goal.intent {
        Intent::Deploy => {
            let version = goal.version.as_deref().unwrap_or_default();
            let image = if version.starts_with("sha256:") {
                format!("{}@{version}", service.image)
            } else {
                format!("{}:{version}", service.image)
            };
            let mut env = service.env.clone();
            env.extend(goal.env.clone());
            DesiredState::Running(ServiceSpec {
                image,
                replicas: goal.replicas.or(defaults.map(|d| d.replicas)).unwrap_or(1),
                strategy: goal
                    .strategy
                    .or(playbook.default_strategy)
                    .unwrap_or(Strategy::Rolling),
                port: service.port,
                env,
                resources: defaults
                    .and_then(|d| d.resources)
                    .unwrap_or(service.resources),
                health: service.health.clone(),
            })
        }
        Intent::Scale => DesiredState::Scaled {
            replicas: goal.replicas.unwrap_or(1),
        },
        Intent::Rollback => DesiredState::PreviousRevision,
        Intent::Decommission => DesiredState::Absent,
    }
}

/// Rates a plan: production, removals and large replica counts rate higher, and each rating
/// says why.
fn risk(goal: &GoalStatement, service: &CatalogService, state: &DesiredState) -> Risk {
    let mut level = match goal.environment.as_str() {
        "prod" | "production" => RiskLevel::High,
        "dev" => RiskLevel::Low,
        _ => RiskLevel::Medium,
    };
    let mut reasons = vec![format!("environment {}", goal.environment)];
    if level == RiskLevel::High {
        reasons[0].push_str(" is production");
    }
    match goal.intent {
        Intent::Decommission => {
            level = RiskLevel::High;
            reasons.push("removes every replica of the service".into());
        }
        Intent::Rollback => {
            level = level.max(RiskLevel::Medium);
            reasons.push("returns to an earlier revision".into());
        }
        Intent::Deploy | Intent::Scale => {}
    }
    let replicas = match state {
        DesiredState::Running(spec) => Some(spec.replicas),
        DesiredState::Scaled { replicas } => Some(*replicas),
        DesiredState::PreviousRevision | DesiredState::Absent => None,
    };
    let usual = service
        .environments
        .get(&goal.environment)
        .map_or(1, |d| d.replicas);
    if let Some(replicas) = replicas
        && replicas >= usual.saturating_mul(2).max(usual + 2)
    {
        level = level.max(RiskLevel::Medium);
        if replicas >= usual.saturating_mul(4).max(10) {
            level = RiskLevel::High;
        }
        reasons.push(format!(
            "{replicas} replicas, {usual} usual in {}",
            goal.environment
        ));
    }
    Risk { level, reasons }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use infracrew_protocol::examples;

    use super::*;

    fn playbooks() -> Playbooks {
        Playbooks::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks")).unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn refusal(goal: &GoalStatement) -> Vec<Rejection> {
        plan(goal, &playbooks(), now()).unwrap_err()
    }

    #[test]
    fn a_deploy_merges_catalog_defaults_with_the_goal() {
        let mut goal = examples::goal();
        goal.env.insert("MODEL".into(), "v7".into());
        let plan = plan(&goal, &playbooks(), now()).unwrap();
        assert_eq!(plan.plan_id, PlanId::for_goal(goal.id()));
        assert_eq!(
            plan.playbook,
            PlaybookRef {
                name: "deploy".into(),
                version: "1.0.0".into()
            }
        );
        assert_eq!(plan.steps.len(), 7);
        let DesiredState::Running(spec) = &plan.desired[0].state else {
            panic!("{plan:?}")
        };
        assert_eq!(spec.image, "infracrew/social-intel:1.4.0");
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.port, 9000);
        assert_eq!(spec.env["LOG_LEVEL"], "info", "from the catalog");
        assert_eq!(spec.env["MODEL"], "v7", "from the goal");
        assert_eq!(
            spec.resources.cpu_request_millis, 250,
            "staging has no override"
        );
        assert_eq!(plan.risk.level, RiskLevel::Medium);
    }

    #[test]
    fn production_removals_and_large_scale_rate_higher() {
        let mut goal = examples::goal();
        goal.environment = "prod".into();
        goal.replicas = None;
        let prod = plan(&goal, &playbooks(), now()).unwrap();
        assert_eq!(prod.risk.level, RiskLevel::High);
        let DesiredState::Running(spec) = &prod.desired[0].state else {
            panic!()
        };
        assert_eq!(
            (spec.replicas, spec.resources.cpu_request_millis),
            (3, 500),
            "prod defaults"
        );

        let mut scale = examples::goal();
        (
            scale.intent,
            scale.environment,
            scale.version,
            scale.strategy,
        ) = (Intent::Scale, "dev".into(), None, None);
        scale.replicas = Some(2);
        assert_eq!(
            plan(&scale, &playbooks(), now()).unwrap().risk.level,
            RiskLevel::Low
        );
        scale.replicas = Some(12);
        let large = plan(&scale, &playbooks(), now()).unwrap();
        assert_eq!(large.risk.level, RiskLevel::High);
        assert!(
            large.risk.reasons.iter().any(|r| r.contains("12 replicas")),
            "{:?}",
            large.risk
        );

        let mut removal = scale.clone();
        (removal.intent, removal.replicas) = (Intent::Decommission, None);
        let removal = plan(&removal, &playbooks(), now()).unwrap();
        assert_eq!(removal.desired[0].state, DesiredState::Absent);
        assert_eq!(removal.risk.level, RiskLevel::High);
    }

    #[test]
    fn unknown_names_are_refused_with_the_valid_choices() {
        let mut goal = examples::goal();
        goal.service = "social-intell".into();
        goal.environment = "qa".into();
        let reasons = refusal(&goal);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].field, "/service");
        assert!(reasons[0].choices.contains(&"social-intel".to_owned()));
        assert_eq!(reasons[1].field, "/environment");
        assert_eq!(reasons[1].choices, ["dev", "staging", "prod"]);
    }

    #[test]
    fn parameters_the_playbook_does_not_take_or_needs_are_refused() {
        let mut scale = examples::goal();
        (scale.intent, scale.replicas) = (Intent::Scale, None);
        let reasons = refusal(&scale);
        let fields: Vec<&str> = reasons.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            ["/version", "/replicas", "/strategy"],
            "{reasons:?}"
        );
        assert!(
            reasons[0]
                .message
                .contains("the scale playbook does not take version")
        );
        assert!(reasons[1].message.contains("needs replicas"));

        let mut deploy = examples::goal();
        deploy.version = None;
        assert_eq!(
            refusal(&deploy)[0].message,
            "the deploy playbook needs version"
        );
    }

    #[test]
    fn versions_must_be_pinned() {
        for version in ["latest", "Stable", "1.4 beta", "sha256:abc", ".hidden"] {
            let mut goal = examples::goal();
            goal.version = Some(version.into());
            let reasons = refusal(&goal);
            assert_eq!(reasons[0].field, "/version", "{version}: {reasons:?}");
        }
        let digest = format!("sha256:{}", "0a".repeat(32));
        for version in ["1.4.0", "v2", "2026-11-23_build.7", digest.as_str()] {
            let mut goal = examples::goal();
            goal.version = Some(version.into());
            assert!(
                plan(&goal, &playbooks(), now()).is_ok(),
                "{version} is pinned"
            );
        }
        let mut goal = examples::goal();
        goal.version = Some(digest.clone());
        let DesiredState::Running(spec) = plan(&goal, &playbooks(), now()).unwrap().desired[0]
            .state
            .clone()
        else {
            panic!()
        };
        assert_eq!(spec.image, format!("infracrew/social-intel@{digest}"));
    }
}
