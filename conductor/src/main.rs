use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_protocol::AgentRole;

/// Conductor, the crew's orchestrator: plan states, locks and the approval gate.
#[derive(Debug, Parser)]
#[command(name = "conductor", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Conductor, cli.agent, infracrew_conductor::run).await
}
