use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_playbooks::Playbooks;
use infracrew_protocol::AgentRole;

/// Atlas, the crew's architect: turns goals into plans from playbooks.
#[derive(Debug, Parser)]
#[command(name = "atlas", version)]
struct Cli {
    /// The folder with catalog.toml and one playbook per intent.
    #[arg(long, env = "INFRACREW_PLAYBOOKS", default_value = "playbooks")]
    playbooks: PathBuf,
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let playbooks = match Playbooks::load(&cli.playbooks) {
        Ok(playbooks) => playbooks,
        Err(errors) => {
            eprintln!("atlas: cannot start: {errors}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    infracrew_agent_runtime::main(AgentRole::Atlas, cli.agent, |agent, shutdown| {
        infracrew_atlas::run(agent, playbooks, shutdown)
    })
    .await
}
