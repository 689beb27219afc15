//! ValidateRequest and ValidationResult: Forge asks Sentinel to judge a rendered change.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ChangeSet, PlanDigest, PlanId, PlanSpec, SchemaVersion, codec::message};

/// Forge's request to judge the exact change whose digest approvers will see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidateRequest {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    pub digest: PlanDigest,
    pub plan: PlanSpec,
    pub change: ChangeSet,
    pub requested_at: DateTime<Utc>,
}

message!(ValidateRequest, "validate_request", |request| format!(
    "validate:{}:{}",
    request.plan_id, request.digest
));

/// Sentinel's judgement of one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ValidationResult {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    /// The digest of the change that was judged.
    pub digest: PlanDigest,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
    /// Content hash of the policy set that judged the change.
    pub policy_set: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostEstimate>,
    pub evaluated_at: DateTime<Utc>,
}

message!(ValidationResult, "validation_result", |result| format!(
    "validated:{}:{}:{}",
    result.plan_id, result.digest, result.policy_set
));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
}

/// One thing a policy found, named so a person can act on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    pub policy: String,
    pub rule: String,
    /// The resource the finding is about, for example `service/prod/social-intel`.
    pub resource: String,
    pub enforcement: Enforcement,
    pub message: String,
}

/// How hard a finding blocks a change.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// Reported, never blocks.
    Advisory,
    /// Blocks unless a named policy owner overrides it with a reason.
    SoftMandatory,
    /// Blocks; no override.
    HardMandatory,
}

/// Monthly cost of what the change touches, before and after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CostEstimate {
    pub currency: String,
    pub monthly_before: f64,
    pub monthly_after: f64,
    pub monthly_delta: f64,
}
