use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_conductor::config::ConductorConfig;
use infracrew_protocol::AgentRole;

/// Conductor, the crew's orchestrator: plan states, locks and the approval gate.
#[derive(Debug, Parser)]
#[command(name = "conductor", version)]
struct Cli {
    /// The configuration file: approval rules per environment and timings.
    #[arg(
        long,
        env = "INFRACREW_CONDUCTOR_CONFIG",
        default_value = "config/demo.toml"
    )]
    config: PathBuf,
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ConductorConfig::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("conductor: cannot start: {errors}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    infracrew_agent_runtime::main(AgentRole::Conductor, cli.agent, |agent, shutdown| {
        infracrew_conductor::run(agent, config, shutdown)
    })
    .await
}
