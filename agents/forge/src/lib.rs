//! Forge, the builder and operator: renders changes, applies approved ones, verifies and rolls back.

use infracrew_agent_runtime::{Agent, WorkError, hold_work};
use infracrew_bus::Shutdown;

/// Runs Forge's work until shutdown.
pub async fn run(agent: Agent, shutdown: Shutdown) -> Result<(), WorkError> {
    hold_work(agent, shutdown).await
}
