use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_protocol::AgentRole;

/// Sentinel, the crew's policy gate: judges changes against policy and cost.
#[derive(Debug, Parser)]
#[command(name = "sentinel", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Sentinel, cli.agent, infracrew_sentinel::run).await
}
