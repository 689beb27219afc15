//! Atlas, the architect: plans goals from playbooks.

use infracrew_agent_runtime::{Agent, WorkError, hold_work};
use infracrew_bus::Shutdown;

/// Runs Atlas's work until shutdown.
pub async fn run(agent: Agent, shutdown: Shutdown) -> Result<(), WorkError> {
    hold_work(agent, shutdown).await
}
