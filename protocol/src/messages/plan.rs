//! PlanSpec: Atlas's plan for a goal, with the steps Forge runs and the desired state.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{GoalId, Intent, PlanId, SchemaVersion, Strategy, codec::message};

/// A plan for one goal. Published on `crew.plan.pending` by Atlas and, unchanged, on
/// `crew.plan.routed` by the Conductor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanSpec {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    pub goal_id: GoalId,
    pub intent: Intent,
    pub service: String,
    pub environment: String,
    pub requested_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub playbook: PlaybookRef,
    /// The ordered steps Forge runs.
    pub steps: Vec<PlanStep>,
    /// The state every touched service must reach.
    pub desired: Vec<DesiredService>,
    pub risk: Risk,
    pub created_at: DateTime<Utc>,
    /// The goal's place in a repository, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::GoalSource>,
}

message!(PlanSpec, "plan_spec", |plan| format!(
    "plan:{}",
    plan.plan_id
));

/// The playbook (name and version) a plan was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlaybookRef {
    pub name: String,
    pub version: String,
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStep {
    pub action: StepAction,
    /// What the step does, for people.
    pub description: String,
}

/// The actions Forge knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepAction {
    Render,
    Diff,
    Validate,
    AwaitApproval,
    Apply,
    VerifyHealth,
    Notify,
}

/// The state one service must reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DesiredService {
    pub service: String,
    pub environment: String,
    pub state: DesiredState,
}

/// What must be true of a service after the plan, by intent. Only a deploy names the whole
/// spec; the others are relative to what runs, which only Forge can read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DesiredState {
    /// Run exactly this spec (deploy).
    Running(ServiceSpec),
    /// Keep what runs, with this many replicas (scale).
    Scaled { replicas: u32 },
    /// Return to the revision that ran before the current one (rollback).
    PreviousRevision,
    /// Nothing of the service runs (decommission).
    Absent,
}

/// How a running service looks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceSpec {
    /// Image repository and tag or digest, for example `infracrew/social-intel:1.4.0`.
    pub image: String,
    pub replicas: u32,
    pub strategy: Strategy,
    /// The container port the service listens on.
    pub port: u16,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub health: HealthPaths,
}

/// A running service as drivers render it: the `before` and `after` of a `service/...`
/// resource in a ChangeSet, and what Sentinel's policies read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct ServiceState {
    pub image: String,
    pub replicas: u32,
    /// The container port.
    pub port: u16,
    /// The host port it is published on, if any.
    #[serde(default)]
    pub published_port: Option<u16>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub health: HealthPaths,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub host_network: bool,
}

impl ServiceState {
    /// What a spec runs as: published on its own port, unprivileged, on its own network.
    pub fn from_spec(spec: &ServiceSpec) -> Self {
        ServiceState {
            image: spec.image.clone(),
            replicas: spec.replicas,
            port: spec.port,
            published_port: Some(spec.port),
            env: spec.env.clone(),
            resources: spec.resources,
            health: spec.health.clone(),
            privileged: false,
            host_network: false,
        }
    }
}

/// Requests and limits per container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Resources {
    pub cpu_request_millis: u32,
    pub cpu_limit_millis: u32,
    pub memory_request_mib: u32,
    pub memory_limit_mib: u32,
}

/// HTTP paths that answer 2xx when the service lives and when it is ready.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct HealthPaths {
    pub live: String,
    pub ready: String,
}

/// How risky a plan is, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Risk {
    pub level: RiskLevel,
    pub reasons: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}
