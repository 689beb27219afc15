//! The rendered change (what the digest covers) and BuildStatus, Forge's report on it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{CostEstimate, Finding, PlanDigest, PlanId, SchemaVersion, codec::message};

/// The exact change a plan makes, as a driver rendered it against what runs now. Its
/// [`PlanDigest`] is what validation, approvals and the apply are bound to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChangeSet {
    pub plan_id: PlanId,
    /// The driver that rendered the change (`dry-run`, `container`, ...).
    pub driver: String,
    pub resources: Vec<ResourceChange>,
}

impl ChangeSet {
    /// The digest of this exact change.
    pub fn digest(&self) -> Result<PlanDigest, serde_json::Error> {
        PlanDigest::of(self)
    }

    pub fn summary(&self) -> DiffSummary {
        let mut summary = DiffSummary::default();
        for resource in &self.resources {
            match resource.action {
                ChangeAction::Create => summary.create += 1,
                ChangeAction::Update => summary.update += 1,
                ChangeAction::Delete => summary.delete += 1,
                ChangeAction::Unchanged => summary.unchanged += 1,
            }
        }
        summary
    }
}

/// What happens to one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceChange {
    /// For example `service/staging/social-intel`.
    pub resource: String,
    pub action: ChangeAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Top-level fields whose value differs between `before` and `after`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_fields: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
    Unchanged,
}

/// Counts per action, as a reviewer reads them first ("2 to create, 1 to change").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DiffSummary {
    pub create: u32,
    pub update: u32,
    pub delete: u32,
    pub unchanged: u32,
}

impl DiffSummary {
    pub fn is_empty(&self) -> bool {
        self.create == 0 && self.update == 0 && self.delete == 0
    }
}

/// Forge's report that a plan's change is rendered and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildStatus {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    pub digest: PlanDigest,
    pub outcome: BuildOutcome,
    pub change: ChangeSet,
    pub summary: DiffSummary,
    /// The diff as a reviewer reads it.
    pub diff_text: String,
    pub findings: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostEstimate>,
    pub policy_set: String,
    pub built_at: DateTime<Utc>,
}

message!(BuildStatus, "build_status", |status| format!(
    "build:{}:{}",
    status.plan_id, status.digest
));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BuildOutcome {
    /// Validated and waiting for approval.
    Ready,
    /// A blocking policy finding stops it.
    Blocked,
    /// The diff is empty: there is nothing to apply.
    NoChange,
}
