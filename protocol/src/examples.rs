//! One realistic instance of every message, for tests, benchmarks and documentation.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::*;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, second)
        .single()
        .unwrap_or_default()
}

/// The README's sample goal.
pub fn goal() -> GoalStatement {
    GoalStatement {
        schema_version: SchemaVersion::CURRENT,
        goal_id: None,
        intent: Intent::Deploy,
        service: "social-intel".into(),
        environment: "staging".into(),
        version: Some("1.4.0".into()),
        replicas: Some(2),
        strategy: Some(Strategy::Rolling),
        env: BTreeMap::new(),
        requested_by: "dave".into(),
        reason: Some("ship the new sentiment model".into()),
        source: None,
    }
    .with_id()
}

pub fn plan_spec() -> PlanSpec {
    let goal = goal();
    let goal_id = goal.id();
    PlanSpec {
        schema_version: SchemaVersion::CURRENT,
        plan_id: PlanId::for_goal(goal_id),
        goal_id,
        intent: goal.intent,
        service: goal.service.clone(),
        environment: goal.environment.clone(),
        requested_by: goal.requested_by.clone(),
        reason: goal.reason.clone(),
        playbook: PlaybookRef {
            name: "deploy".into(),
            version: "1".into(),
        },
        steps: [
            (StepAction::Render, "render the desired state"),
            (StepAction::Diff, "compare it with what runs"),
            (StepAction::Validate, "check it against policy"),
            (StepAction::AwaitApproval, "wait for an approval"),
            (StepAction::Apply, "roll it out one replica at a time"),
            (
                StepAction::VerifyHealth,
                "wait until every replica is ready",
            ),
            (StepAction::Notify, "report the outcome"),
        ]
        .into_iter()
        .map(|(action, description)| PlanStep {
            action,
            description: description.into(),
        })
        .collect(),
        desired: vec![DesiredService {
            service: goal.service.clone(),
            environment: goal.environment.clone(),
            state: DesiredState::Running(ServiceSpec {
                image: "infracrew/social-intel:1.4.0".into(),
                replicas: 2,
                strategy: Strategy::Rolling,
                port: 9000,
                env: BTreeMap::from([("LOG_LEVEL".into(), "info".into())]),
                resources: Resources {
                    cpu_request_millis: 250,
                    cpu_limit_millis: 500,
                    memory_request_mib: 128,
                    memory_limit_mib: 256,
                },
                health: HealthPaths {
                    live: "/health/live".into(),
                    ready: "/health/ready".into(),
                },
            }),
        }],
        risk: Risk {
            level: RiskLevel::Medium,
            reasons: vec!["staging, new version".into()],
        },
        created_at: at(1),
        source: goal.source.clone(),
    }
}

pub fn change_set() -> ChangeSet {
    let plan = plan_spec();
    ChangeSet {
        plan_id: plan.plan_id,
        driver: "dry-run".into(),
        resources: vec![ResourceChange {
            resource: "service/staging/social-intel".into(),
            action: ChangeAction::Update,
            before: Some(json!({"image": "infracrew/social-intel:1.3.2", "replicas": 2})),
            after: Some(json!({"image": "infracrew/social-intel:1.4.0", "replicas": 2})),
            changed_fields: vec!["image".into()],
        }],
    }
}

fn digest() -> PlanDigest {
    PlanDigest::of_value(&serde_json::to_value(change_set()).unwrap_or_default())
}

pub fn validate_request() -> ValidateRequest {
    let plan = plan_spec();
    ValidateRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan.plan_id,
        digest: digest(),
        plan,
        change: change_set(),
        requested_at: at(2),
    }
}

pub fn validation_result() -> ValidationResult {
    ValidationResult {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan_spec().plan_id,
        digest: digest(),
        verdict: Verdict::Pass,
        findings: vec![Finding {
            policy: "replicas".into(),
            rule: "prod_min_replicas".into(),
            resource: "service/staging/social-intel".into(),
            enforcement: Enforcement::Advisory,
            message: "2 replicas; prod will need at least 2".into(),
        }],
        policy_set: "sha256:6b86b273ff34".into(),
        cost: Some(CostEstimate {
            currency: "USD".into(),
            monthly_before: 41.5,
            monthly_after: 41.5,
            monthly_delta: 0.0,
        }),
        evaluated_at: at(3),
    }
}

pub fn build_status() -> BuildStatus {
    let change = change_set();
    BuildStatus {
        schema_version: SchemaVersion::CURRENT,
        plan_id: change.plan_id,
        digest: digest(),
        outcome: BuildOutcome::Ready,
        summary: change.summary(),
        diff_text: "~ service/staging/social-intel\n    image: 1.3.2 -> 1.4.0\n".into(),
        change,
        findings: validation_result().findings,
        cost: validation_result().cost,
        policy_set: "sha256:6b86b273ff34".into(),
        built_at: at(4),
    }
}

pub fn approval_decision() -> ApprovalDecision {
    ApprovalDecision {
        schema_version: SchemaVersion::CURRENT,
        decision_id: Uuid::from_u128(0x1f00_0000_0000_4000_8000_0000_0000_0001),
        plan_id: plan_spec().plan_id,
        digest: digest(),
        kind: DecisionKind::Approve,
        approver: "alice".into(),
        channel: DecisionChannel::Cli,
        reason: None,
        outcome: DecisionOutcome::Accepted,
        refusal: None,
        decided_at: at(5),
    }
}

pub fn apply_request() -> ApplyRequest {
    ApplyRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan_spec().plan_id,
        digest: digest(),
        fencing_token: 7,
        approvers: vec!["alice".into()],
        issued_at: at(6),
        expires_at: at(36),
        signature: "M2VoWkNmZ1RqYWxlU2lnbmF0dXJlRXhhbXBsZQ".into(),
    }
}

pub fn ops_event() -> OpsEvent {
    OpsEvent {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan_spec().plan_id,
        digest: digest(),
        seq: 2,
        attempt: 1,
        request_issued_at: Some(at(6)),
        kind: OpsEventKind::StepSucceeded,
        refused_by: None,
        step: Some("start replica 1 of 2".into()),
        message: "replica 1 of 2 is ready".into(),
        driver: "dry-run".into(),
        at: at(7),
        started_at: None,
    }
}

pub fn heartbeat() -> Heartbeat {
    Heartbeat {
        schema_version: SchemaVersion::CURRENT,
        agent: AgentRole::Forge,
        instance_id: Uuid::from_u128(0x2f00_0000_0000_4000_8000_0000_0000_0002),
        version: "0.1.0".into(),
        started_at: at(0),
        sent_at: at(8),
        seq: 3,
        messages_handled: 12,
        messages_failed: 0,
        in_flight: 1,
        last_error: None,
        ready: true,
        not_ready: Vec::new(),
    }
}

pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        schema_version: SchemaVersion::CURRENT,
        subject: subjects::GOAL_SUBMITTED.into(),
        stream: "CREW".into(),
        stream_sequence: 42,
        consumer: "atlas".into(),
        delivered: 1,
        kind: DeadLetterKind::Invalid,
        reason: "goal_statement does not match its schema".into(),
        errors: vec![FieldError {
            path: "/servce".into(),
            message: "unknown field".into(),
        }],
        headers: BTreeMap::from([("Nats-Msg-Id".into(), "goal:x".into())]),
        payload_base64: DeadLetter::encode_payload(br#"{"servce":"social-intel"}"#),
        dead_at: at(9),
    }
}

pub fn goal_rejected() -> GoalRejected {
    let goal = goal();
    GoalRejected {
        schema_version: SchemaVersion::CURRENT,
        goal_id: goal.id(),
        plan_id: PlanId::for_goal(goal.id()),
        service: "social-intell".into(),
        environment: goal.environment,
        requested_by: goal.requested_by,
        reasons: vec![Rejection {
            field: "/service".into(),
            message: "social-intell is not in the service catalog".into(),
            choices: vec!["alfred-bot".into(), "social-intel".into()],
        }],
        rejected_at: at(2),
    }
}

pub fn decision_request() -> DecisionRequest {
    DecisionRequest {
        schema_version: SchemaVersion::CURRENT,
        request_id: Uuid::from_u128(0x3f00_0000_0000_4000_8000_0000_0000_0003),
        plan_id: plan_spec().plan_id,
        kind: DecisionKind::Approve,
        who: "alice".into(),
        channel: DecisionChannel::Cli,
        reason: None,
        issued_at: Some(at(5)),
        signature: Some("bm90IGEgcmVhbCBzaWduYXR1cmU".into()),
    }
}

pub fn decision_reply() -> DecisionReply {
    DecisionReply {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan_spec().plan_id,
        outcome: DecisionOutcome::Refused,
        message: "dave requested this plan and cannot approve or override it".into(),
        state: Some(PlanState::Ready),
    }
}

pub fn plan_transitioned() -> PlanTransitioned {
    PlanTransitioned {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan_spec().plan_id,
        seq: 5,
        transition: Transition {
            from: Some(PlanState::Ready),
            to: PlanState::Approved,
            by: "conductor".into(),
            why: "auto-approved: validation passed and dev approves automatically".into(),
            at: at(10),
        },
        earlier: vec![Transition {
            from: Some(PlanState::Validating),
            to: PlanState::Ready,
            by: "forge".into(),
            why: "validated: 1 to change".into(),
            at: at(10),
        }],
    }
}
