use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use infracrew_agent_runtime::{AgentArgs, WorkError};
use infracrew_forge::dry_run::DryRunDriver;
use infracrew_protocol::AgentRole;

/// Forge, the crew's builder and operator: renders, diffs, applies and verifies changes.
#[derive(Debug, Parser)]
#[command(name = "forge", version)]
struct Cli {
    /// The deployment target.
    #[arg(long, env = "INFRACREW_DRIVER", value_enum, default_value_t = DriverKind::DryRun)]
    driver: DriverKind,
    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DriverKind {
    /// Records what runs in a KV bucket: real diffs, applies only recorded.
    DryRun,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Forge, cli.agent, |agent, shutdown| async move {
        match cli.driver {
            DriverKind::DryRun => {
                let driver = DryRunDriver::open(&agent.bus).await.map_err(|error| {
                    WorkError::Dependency {
                        what: "the dry-run driver's bucket".into(),
                        reason: error.to_string(),
                    }
                })?;
                infracrew_forge::run(agent, driver, shutdown).await
            }
        }
    })
    .await
}
