//! Atlas, the architect: plans goals from playbooks.

pub mod planner;

use chrono::Utc;
use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{ConsumerSettings, Delivery, HandlerError, Shutdown};
use infracrew_playbooks::Playbooks;
use infracrew_protocol::{GoalRejected, GoalStatement, PlanId, SchemaVersion, subjects};

/// Plans every submitted goal: a PlanSpec on `crew.plan.pending`, or the reasons it cannot be
/// planned on `crew.goal.rejected`. Both are derived from the goal, so a redelivered goal
/// publishes the same message, which JetStream stores once.
pub async fn run(agent: Agent, playbooks: Playbooks, shutdown: Shutdown) -> Result<(), WorkError> {
    agent.readiness.pass(
        "playbooks",
        "the catalog and every intent's playbook loaded",
    );
    let bus = agent.bus.clone();
    let playbooks = std::sync::Arc::new(playbooks);
    let handler = move |goal: GoalStatement, _delivery: Delivery| {
        let (bus, playbooks) = (bus.clone(), playbooks.clone());
        async move {
            match planner::plan(&goal, &playbooks, Utc::now()) {
                Ok(plan) => {
                    tracing::info!(plan = %plan.plan_id, goal = %plan.goal_id, service = %plan.service, environment = %plan.environment, risk = ?plan.risk.level, "planned");
                    bus.publish(subjects::PLAN_PENDING, &plan).await
                }
                Err(reasons) => {
                    let goal_id = goal.id();
                    tracing::info!(goal = %goal_id, ?reasons, "goal rejected");
                    let rejected = GoalRejected {
                        schema_version: SchemaVersion::CURRENT,
                        goal_id,
                        plan_id: PlanId::for_goal(goal_id),
                        service: goal.service,
                        environment: goal.environment,
                        requested_by: goal.requested_by,
                        reasons,
                        rejected_at: Utc::now(),
                    };
                    bus.publish(subjects::GOAL_REJECTED, &rejected).await
                }
            }
            .map(drop)
            .map_err(|error| HandlerError::Retry(error.to_string()))
        }
    };
    agent
        .consume(ConsumerSettings::default(), handler, shutdown)
        .await?;
    Ok(())
}
