//! Every subject the crew uses, in one place.

use crate::AgentRole;

/// A person's goal: crew CLI -> Atlas.
pub const GOAL_SUBMITTED: &str = "crew.goal.submitted";
/// A goal Atlas cannot plan, with the reasons: Atlas -> the submitter.
pub const GOAL_REJECTED: &str = "crew.goal.rejected";
/// A new plan: Atlas -> Conductor.
pub const PLAN_PENDING: &str = "crew.plan.pending";
/// Every move of a plan's state machine: Conductor -> whoever watches.
pub const PLAN_STATE: &str = "crew.plan.state";
/// A person's decision, request-reply on core NATS: crew CLI (and later Slack, GitHub) -> Conductor.
pub const APPROVAL_REQUEST: &str = "crew.approval.request";
/// A plan handed to the builder: Conductor -> Forge.
pub const PLAN_ROUTED: &str = "crew.plan.routed";
/// A rendered change to judge: Forge -> Sentinel.
pub const VALIDATE_PENDING: &str = "crew.validate.pending";
/// Sentinel's judgement: Sentinel -> Forge.
pub const VALIDATE_RESULT: &str = "crew.validate.result";
/// READY, BLOCKED or nothing to change: Forge -> Conductor.
pub const BUILD_STATUS: &str = "crew.build.status";
/// Every approval decision, accepted or refused (audit): Conductor.
pub const APPROVAL_DECIDED: &str = "crew.approval.decided";
/// The instruction to apply an approved plan: Conductor -> Forge.
pub const APPLY_REQUEST: &str = "crew.apply.request";
/// An apply's start and its end (done, failed, rolled back, refused): Forge -> Conductor.
pub const OPS_EVENT: &str = "crew.ops.event";
/// The steps inside an apply (started, progress, succeeded, failed): Forge -> whoever
/// watches, and the reviews.
pub const OPS_STEP: &str = "crew.ops.step";
/// Every event of an apply, its start, steps and end, in the order Forge sent them.
pub const OPS: &str = "crew.ops.>";

/// Every work subject above, which the work stream captures.
pub const WORK: [&str; 12] = [
    GOAL_SUBMITTED,
    GOAL_REJECTED,
    PLAN_PENDING,
    PLAN_STATE,
    PLAN_ROUTED,
    VALIDATE_PENDING,
    VALIDATE_RESULT,
    BUILD_STATUS,
    APPROVAL_DECIDED,
    APPLY_REQUEST,
    OPS_EVENT,
    OPS_STEP,
];

/// All heartbeats: `crew.heartbeat.<agent>`.
pub const HEARTBEATS: &str = "crew.heartbeat.>";
/// All dead letters: `crew.dlq.<the original subject without "crew.">`.
pub const DEAD_LETTERS: &str = "crew.dlq.>";

/// The subject an agent's heartbeats go to.
pub fn heartbeat(agent: AgentRole) -> String {
    format!("crew.heartbeat.{agent}")
}

/// The subject a dead message from `subject` goes to.
pub fn dead_letter(subject: &str) -> String {
    format!(
        "crew.dlq.{}",
        subject.strip_prefix("crew.").unwrap_or(subject)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_subjects() {
        assert_eq!(heartbeat(AgentRole::Forge), "crew.heartbeat.forge");
        assert_eq!(dead_letter(GOAL_SUBMITTED), "crew.dlq.goal.submitted");
        assert_eq!(dead_letter("other.thing"), "crew.dlq.other.thing");
    }
}
