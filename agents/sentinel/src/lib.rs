//! Sentinel, the policy gate: judges rendered changes against policy-as-code and cost.

pub mod policy;

use infracrew_agent_runtime::{Agent, WorkError, hold_work};
use infracrew_bus::Shutdown;

/// Runs Sentinel's work until shutdown.
pub async fn run(agent: Agent, shutdown: Shutdown) -> Result<(), WorkError> {
    hold_work(agent, shutdown).await
}
