use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::{AgentArgs, WorkError};
use infracrew_forge::drivers::DriverArgs;
use infracrew_protocol::AgentRole;

/// Forge, the crew's builder and operator: renders, diffs, applies and verifies changes.
#[derive(Debug, Parser)]
#[command(name = "forge", version)]
struct Cli {
    #[command(flatten)]
    drivers: DriverArgs,
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Forge, cli.agent, |agent, shutdown| async move {
        let drivers =
            cli.drivers
                .open(&agent.bus)
                .await
                .map_err(|error| WorkError::Dependency {
                    what: "the deployment drivers".into(),
                    reason: error.to_string(),
                })?;
        tracing::info!(drivers = %cli.drivers.describe(), "drivers ready");
        infracrew_forge::run(agent, drivers, shutdown).await
    })
    .await
}
