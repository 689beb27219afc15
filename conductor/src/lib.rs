//! Conductor, the orchestrator: owns plan states, locks and the approval gate.

pub mod approvals;

use infracrew_agent_runtime::{Agent, WorkError, hold_work};
use infracrew_bus::Shutdown;

/// Runs the Conductor's work until shutdown.
pub async fn run(agent: Agent, shutdown: Shutdown) -> Result<(), WorkError> {
    hold_work(agent, shutdown).await
}
