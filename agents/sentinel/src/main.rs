use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_bus::parse_duration;
use infracrew_protocol::AgentRole;
use infracrew_sentinel::Config;

/// Sentinel, the crew's policy gate: judges changes against Rego policies and cost.
#[derive(Debug, Parser)]
#[command(name = "sentinel", version)]
struct Cli {
    /// The folder with catalog.toml, policy.toml and policies/*.rego.
    #[arg(long, env = "INFRACREW_PLAYBOOKS", default_value = "playbooks")]
    playbooks: PathBuf,
    /// How often the policies folder is checked for changes (reloaded without a restart).
    #[arg(long, env = "INFRACREW_POLICY_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    policy_reload_interval: Duration,
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = Config {
        playbooks: cli.playbooks,
        reload_interval: cli.policy_reload_interval,
    };
    let loaded = match config.load() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("sentinel: cannot start: {error}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    infracrew_agent_runtime::main(AgentRole::Sentinel, cli.agent, |agent, shutdown| {
        infracrew_sentinel::run(agent, config, loaded, shutdown)
    })
    .await
}
