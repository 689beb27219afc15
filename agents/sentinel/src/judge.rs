//! Judging one change: the input document the policies read, their violations raised to the
//! environment's levels, the cost, and the verdict.

use chrono::{DateTime, Utc};
use infracrew_playbooks::Catalog;
use infracrew_protocol::{
    ChangeAction, Enforcement, Finding, SchemaVersion, ValidateRequest, ValidationResult, Verdict,
};
use serde_json::{Value, json};

use crate::{
    cost,
    policy::{PolicyError, PolicySet},
    settings::PolicySettings,
};

/// What Sentinel judges with, apart from the policies themselves.
#[derive(Debug, Clone)]
pub struct Context {
    pub catalog: Catalog,
    pub settings: PolicySettings,
}

/// Judges `request` with `policies` at `now`.
pub fn judge(
    request: &ValidateRequest,
    policies: &PolicySet,
    context: &Context,
    now: DateTime<Utc>,
) -> Result<ValidationResult, PolicyError> {
    let environment = &request.plan.environment;
    let cost = context
        .settings
        .prices
        .get(environment)
        .map(|prices| cost::estimate(&request.change, prices));
    let input = input_document(request, context, cost.as_ref(), now);
    let findings: Vec<Finding> = policies
        .evaluate(&input)?
        .into_iter()
        .map(|violation| Finding {
            enforcement: context.settings.enforcement(
                environment,
                &violation.rule,
                violation.enforcement,
            ),
            policy: violation.policy,
            rule: violation.rule,
            resource: violation.resource,
            message: violation.message,
        })
        .collect();
    let blocks = findings
        .iter()
        .any(|finding| finding.enforcement >= Enforcement::SoftMandatory);
    Ok(ValidationResult {
        schema_version: SchemaVersion::CURRENT,
        plan_id: request.plan_id,
        digest: request.digest.clone(),
        verdict: if blocks { Verdict::Fail } else { Verdict::Pass },
        findings,
        policy_set: policies.version().to_owned(),
        cost,
        evaluated_at: now,
    })
}

/// The document every policy reads as `input` (its shape is documented in
/// `playbooks/policies/README.md`).
pub fn input_document(
    request: &ValidateRequest,
    context: &Context,
    cost: Option<&infracrew_protocol::CostEstimate>,
    now: DateTime<Utc>,
) -> Value {
    let plan = &request.plan;
    let settings = &context.settings;
    let resources: Vec<Value> = request
        .change
        .resources
        .iter()
        .map(|resource| {
            let service = resource.resource.rsplit('/').next().unwrap_or_default();
            json!({
                "resource": resource.resource,
                "service": service,
                "action": match resource.action {
                    ChangeAction::Create => "create",
                    ChangeAction::Update => "update",
                    ChangeAction::Delete => "delete",
                    ChangeAction::Unchanged => "unchanged",
                },
                "before": resource.before,
                "after": resource.after,
            })
        })
        .collect();
    // Only the entries of the services the change touches: the document stays the size of
    // the change however large the catalog grows.
    let catalog: serde_json::Map<String, Value> = request
        .change
        .resources
        .iter()
        .filter_map(|resource| resource.resource.rsplit('/').next())
        .filter_map(|service| {
            let entry = context.catalog.services.get(service)?;
            Some((service.to_owned(), json!({"port": entry.port})))
        })
        .collect();
    let freeze = settings.freeze_at(&plan.environment, now);
    let budget = settings
        .budget
        .get(&plan.environment)
        .map_or(f64::MAX, |b| b.max_monthly_increase);
    json!({
        "environment": plan.environment,
        "plan": {
            "plan_id": plan.plan_id,
            "intent": plan.intent,
            "service": plan.service,
            "environment": plan.environment,
            "requested_by": plan.requested_by,
        },
        "resources": resources,
        "catalog": catalog,
        "settings": {
            "prod_environments": settings.prod_environments,
            "min_prod_replicas": settings.min_prod_replicas,
            "max_services_per_plan": settings.max_services_per_plan,
            "freeze": {
                "active": freeze.is_some(),
                "reason": freeze.map(|window| window.reason.as_str()).unwrap_or_default(),
            },
            "budget": {"max_monthly_increase": budget},
        },
        "cost": cost.map_or_else(
            || json!({"currency": "", "monthly_before": 0.0, "monthly_after": 0.0, "monthly_delta": 0.0}),
            |cost| json!(cost),
        ),
    })
}
