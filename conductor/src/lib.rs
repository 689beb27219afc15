//! Conductor, the orchestrator: owns plan states, locks and the approval gate.

pub mod approvals;
pub mod config;
pub mod orchestrator;

use std::sync::Arc;

use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{ConsumerSettings, Delivery, Shutdown, buckets};

use crate::{
    config::ConductorConfig,
    orchestrator::{Conductor, ConductorMessage},
};

/// Runs the Conductor until shutdown: its consumer (plans, builds, ops events), the decision
/// service on `crew.approval.request`, and the sweeper.
pub async fn run(
    agent: Agent,
    config: ConductorConfig,
    shutdown: Shutdown,
) -> Result<(), WorkError> {
    let conductor = Arc::new(Conductor {
        bus: agent.bus.clone(),
        plans: agent.bucket(buckets::PLANS).await?,
        locks: agent.bucket(buckets::LOCKS).await?,
        config,
        instance: uuid::Uuid::new_v4().to_string(),
    });
    let decisions = tokio::spawn(conductor.clone().serve_decisions(shutdown.clone()));
    let sweeper = tokio::spawn(conductor.clone().sweep(shutdown.clone()));
    let handler = {
        let conductor = conductor.clone();
        move |message: ConductorMessage, _delivery: Delivery| {
            let conductor = conductor.clone();
            async move { conductor.handle(message).await }
        }
    };
    // One message at a time: a plan's events are applied in the order they were published.
    let settings = ConsumerSettings {
        concurrency: 1,
        ..ConsumerSettings::default()
    };
    let outcome = agent.consume(settings, handler, shutdown.clone()).await;
    shutdown.cancel();
    for task in [decisions, sweeper] {
        if let Err(error) = task.await {
            tracing::error!(%error, "a Conductor task failed");
        }
    }
    outcome
}
