use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_protocol::AgentRole;

/// Forge, the crew's builder and operator: renders, diffs, applies and verifies changes.
#[derive(Debug, Parser)]
#[command(name = "forge", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Forge, cli.agent, infracrew_forge::run).await
}
