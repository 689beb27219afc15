use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_conductor::config::{ConductorConfig, Overrides};
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
    /// Over the file: how long a lock lives without renewal, in seconds.
    #[arg(long, env = "INFRACREW_LOCK_LEASE_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    lock_lease_seconds: Option<u64>,
    /// Over the file: how long an ApplyRequest stays valid, in seconds.
    #[arg(long, env = "INFRACREW_APPLY_REQUEST_TTL_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    apply_request_ttl_seconds: Option<u64>,
    /// Over the file: how often expiry and stale locks are checked, in seconds.
    #[arg(long, env = "INFRACREW_SWEEP_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sweep_seconds: Option<u64>,
    /// Over the file: the environments that approve validated plans automatically (comma-separated).
    #[arg(long, env = "INFRACREW_AUTO_APPROVE", value_delimiter = ',')]
    auto_approve: Option<Vec<String>>,
    #[command(flatten)]
    agent: AgentArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        lock_lease_seconds: cli.lock_lease_seconds,
        apply_request_ttl_seconds: cli.apply_request_ttl_seconds,
        sweep_seconds: cli.sweep_seconds,
        auto_approve: cli
            .auto_approve
            .map(|envs| envs.into_iter().filter(|e| !e.is_empty()).collect()),
    };
    let config = match ConductorConfig::load(&cli.config) {
        Ok(config) => match config.with_overrides(overrides) {
            Ok(config) => config,
            Err(reason) => {
                eprintln!("conductor: cannot start: {reason}");
                return ExitCode::from(78); // EX_CONFIG
            }
        },
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
