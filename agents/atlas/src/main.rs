use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_protocol::AgentRole;

/// Atlas, the crew's architect: turns goals into plans from playbooks.
#[derive(Debug, Parser)]
#[command(name = "atlas", version)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    infracrew_agent_runtime::main(AgentRole::Atlas, cli.agent, infracrew_atlas::run).await
}
