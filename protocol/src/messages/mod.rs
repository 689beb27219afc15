//! Every message the crew exchanges, one module per stage of a plan's life.

mod apply;
mod build;
mod crew;
mod goal;
mod plan;
mod validation;

pub use apply::{
    ApplyRequest, ApprovalDecision, DecisionChannel, DecisionKind, DecisionOutcome, DecisionReply,
    DecisionRequest, PlanTransitioned,
};
pub use apply::{GateCheck, OpsEvent, OpsEventKind};
pub use build::{BuildOutcome, BuildStatus, ChangeAction, ChangeSet, DiffSummary, ResourceChange};
pub use crew::{AgentRole, DeadLetter, DeadLetterKind, Heartbeat};
pub use goal::{GoalRejected, GoalSource, GoalStatement, Intent, Rejection, Strategy};
pub use plan::{
    DesiredService, DesiredState, HealthPaths, PlanSpec, PlanStep, PlaybookRef, Resources,
};
pub use plan::{Risk, RiskLevel, ServiceSpec, ServiceState, StepAction};
pub use validation::Verdict;
pub use validation::{CostEstimate, Enforcement, Finding, ValidateRequest, ValidationResult};
