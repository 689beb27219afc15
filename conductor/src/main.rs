use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use infracrew_agent_runtime::AgentArgs;
use infracrew_conductor::{
    RunOptions,
    config::{ConductorConfig, Overrides},
    github::{GithubSecrets, GithubSetup},
    slack::{SlackSecrets, SlackSetup},
};
use infracrew_protocol::{AgentRole, signing::Signer};

// jemalloc, not glibc's malloc: the Conductor makes many small, short-lived allocations (JSON
// values, messages), and glibc's malloc and free were over a third of its CPU. With jemalloc
// a plan costs it 10 to 15% less CPU, for 1 to 2 MB more (docs/architecture.md, Speed).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Over the file: how long after its approval Forge may start a plan's apply, in seconds.
    #[arg(long, env = "INFRACREW_APPLY_REQUEST_TTL_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    apply_request_ttl_seconds: Option<u64>,
    /// Over the file: how often expiry and stale locks are checked, in seconds.
    #[arg(long, env = "INFRACREW_SWEEP_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sweep_seconds: Option<u64>,
    /// Over the file: how long an agent may be silent before it is marked down, in seconds.
    #[arg(long, env = "INFRACREW_AGENT_SILENCE_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    agent_silence_seconds: Option<u64>,
    /// Over the file: the environments that approve validated plans automatically (comma-separated).
    #[arg(long, env = "INFRACREW_AUTO_APPROVE", value_delimiter = ',')]
    auto_approve: Option<Vec<String>>,
    /// The nkey seed (SU…, from `crew keys`) that signs every ApplyRequest; Forge is given its
    /// public key and applies nothing else.
    #[arg(long, env = "INFRACREW_CONDUCTOR_SIGNING_SEED", hide_env_values = true)]
    signing_seed: Option<String>,
    /// The Slack app's bot token (xoxb-…), used when the configuration has a [slack] section.
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true)]
    slack_bot_token: Option<String>,
    /// The Slack app's signing secret, which verifies slash commands and button presses.
    #[arg(long, env = "SLACK_SIGNING_SECRET", hide_env_values = true)]
    slack_signing_secret: Option<String>,
    /// The Slack app-level token (xapp-…) for Socket Mode.
    #[arg(long, env = "SLACK_APP_TOKEN", hide_env_values = true)]
    slack_app_token: Option<String>,
    /// A GitHub token that may write commit statuses and pull-request comments, used when the
    /// configuration has a [github] section.
    #[arg(long, env = "INFRACREW_GITHUB_TOKEN", hide_env_values = true)]
    github_token: Option<String>,
    /// The GitHub webhook's secret, which verifies X-Hub-Signature-256 on its events.
    #[arg(long, env = "INFRACREW_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    github_webhook_secret: Option<String>,
    #[command(flatten)]
    agent: AgentArgs,
}

// The Conductor waits on the bus, not the CPU: one thread spares a second thread's wake-up for
// each message (about a fifth less CPU per plan, measured with `crew bench`; see
// docs/architecture.md, Speed). Sentinel and Atlas compute, and keep both cores.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        lock_lease_seconds: cli.lock_lease_seconds,
        apply_request_ttl_seconds: cli.apply_request_ttl_seconds,
        sweep_seconds: cli.sweep_seconds,
        agent_silence_seconds: cli.agent_silence_seconds,
        auto_approve: cli
            .auto_approve
            .map(|envs| envs.into_iter().filter(|e| !e.is_empty()).collect()),
    };
    let secrets = SlackSecrets {
        bot_token: cli.slack_bot_token,
        signing_secret: cli.slack_signing_secret,
        app_token: cli.slack_app_token,
    };
    let github_secrets = GithubSecrets {
        token: cli.github_token,
        webhook_secret: cli.github_webhook_secret,
    };
    let setup = ConductorConfig::load(&cli.config)
        .and_then(|config| config.with_overrides(overrides))
        .and_then(|config| {
            let slack = config
                .slack
                .clone()
                .map(|slack| SlackSetup::new(slack, secrets))
                .transpose()?;
            let github = config
                .github
                .clone()
                .map(|github| GithubSetup::new(github, github_secrets))
                .transpose()?;
            let signer = cli
                .signing_seed
                .as_deref()
                .ok_or_else(|| {
                    "no signing key: set INFRACREW_CONDUCTOR_SIGNING_SEED (or --signing-seed) to an nkey seed from `crew keys`, and give Forge its public key".to_owned()
                })
                .and_then(|seed| {
                    Signer::from_seed(seed)
                        .map_err(|error| format!("INFRACREW_CONDUCTOR_SIGNING_SEED is {error}"))
                })?;
            Ok((config, slack, github, signer))
        });
    let (config, slack, github, signer) = match setup {
        Ok(setup) => setup,
        Err(reason) => {
            eprintln!("conductor: cannot start: {reason}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let options = RunOptions {
        slack,
        github,
        signer,
    };
    infracrew_agent_runtime::main(AgentRole::Conductor, cli.agent, |agent, shutdown| {
        infracrew_conductor::run(agent, config, options, shutdown)
    })
    .await
}
