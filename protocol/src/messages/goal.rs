//! GoalStatement: what a person asks the crew for, typed by hand in goal.json.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{GoalId, PlanId, SchemaVersion, canonical_json, codec::message};

/// A person's goal. Unknown fields are refused: a typo in a hand-written file must not be
/// silently ignored. `goal_id` and `schema_version` may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoalStatement {
    /// Defaults to the current version when absent.
    #[serde(default)]
    pub schema_version: SchemaVersion,
    /// Derived from the goal's content when absent, so the same file names the same goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal_id: Option<GoalId>,
    pub intent: Intent,
    /// A service of the catalog, for example `social-intel`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub service: String,
    /// One of the configured environments (dev, staging, prod by default).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,31}$"))]
    pub environment: String,
    /// An image tag or digest to run; never `latest`. Required by `deploy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Extra environment variables for the service's containers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Who asks; recorded on the plan and barred from approving it.
    #[schemars(length(min = 1, max = 64))]
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub reason: Option<String>,
    /// Where the goal was proposed, when it comes from a repository: the plan is reported
    /// there and approved from there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<GoalSource>,
}

/// A goal's place in a GitHub repository: the commit its file was read at (for a pull
/// request, the head), and the pull request that proposes it, if one does. The Conductor
/// sets commit statuses on the commit and keeps one comment on the pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GoalSource {
    /// `owner/name`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"))]
    pub repository: String,
    #[schemars(regex(pattern = r"^[0-9a-f]{7,64}$"))]
    pub commit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pull_request: Option<u64>,
    /// The goal file's path in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
}

impl GoalSource {
    /// The repository's owner and name.
    pub fn owner_and_name(&self) -> Option<(&str, &str)> {
        self.repository.split_once('/')
    }
}

impl GoalStatement {
    /// The goal's id: the one it names, or else one derived from its content.
    pub fn id(&self) -> GoalId {
        if let Some(id) = self.goal_id {
            return id;
        }
        // A goal always serializes: it holds only strings, numbers and maps of strings.
        let content = serde_json::to_value(self).unwrap_or_default();
        GoalId::from_content(&canonical_json(&content))
    }

    /// This goal with its id filled in, as it is published.
    pub fn with_id(mut self) -> Self {
        self.goal_id = Some(self.id());
        self
    }
}

message!(GoalStatement, "goal_statement", |goal| format!(
    "goal:{}",
    goal.id()
));

/// What the goal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Intent {
    /// Install a service or move it to a new version.
    Deploy,
    /// Change the number of replicas only.
    Scale,
    /// Return to the previous revision.
    Rollback,
    /// Remove the service from the environment.
    Decommission,
}

/// How the new revision replaces the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One replica at a time; a healthy replica always serves.
    Rolling,
    /// Start the whole new set, then remove the old one.
    BlueGreen,
}

/// Atlas's answer to a goal it cannot plan: nothing is planned from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GoalRejected {
    pub schema_version: SchemaVersion,
    pub goal_id: GoalId,
    /// The plan id the goal would have had, so a submitter waiting on it learns the outcome.
    pub plan_id: PlanId,
    pub service: String,
    pub environment: String,
    pub requested_by: String,
    /// Every reason, each naming the goal field at fault.
    pub reasons: Vec<Rejection>,
    pub rejected_at: DateTime<Utc>,
}

message!(GoalRejected, "goal_rejected", |rejected| format!(
    "rejected:{}",
    rejected.goal_id
));

/// One reason a goal cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Rejection {
    /// JSON pointer into the goal, for example `/service`.
    pub field: String,
    pub message: String,
    /// The valid values, where there is a short list of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}
