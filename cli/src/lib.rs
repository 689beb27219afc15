//! `crew`, the command line of infracrew: check and submit goals, see the crew's state.

mod dead_letters;
mod goals;
mod status;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use infracrew_bus::{Bus, ConnectArgs, ConnectError, parse_duration};

pub use goals::GoalFileError;

/// crew: submit infrastructure goals to the infracrew agents and follow them.
#[derive(Debug, Parser)]
#[command(name = "crew", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check goal files against the goal schema, without submitting them.
    ///
    /// Example: crew validate examples/goals/valid/*.json
    Validate {
        /// Goal files (JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check a goal file and submit it to the crew on crew.goal.submitted.
    ///
    /// The goal is checked locally first; nothing is sent when it is invalid. Submitting the
    /// same goal again names the same goal and stores nothing new.
    ///
    /// Example: crew submit examples/goals/valid/social-intel-staging.json
    Submit {
        /// The goal file (JSON).
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Show each agent's last heartbeat and each consumer's backlog.
    ///
    /// Exits non-zero when an agent has no fresh heartbeat.
    ///
    /// Example: crew status --wait 30s
    Status {
        /// Wait up to this long for every agent to report a fresh heartbeat.
        #[arg(long, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// A heartbeat older than this counts as missing.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        stale_after: Duration,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// List dead letters: messages the crew gave up on, with the reason.
    ///
    /// Example: crew dlq --limit 20
    Dlq {
        /// Show at most this many, the newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print them as JSON (one array).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    GoalFile(#[from] GoalFileError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Publish(#[from] infracrew_bus::PublishError),
    #[error("reading {what} from the bus failed: {reason}")]
    Read { what: &'static str, reason: String },
}

/// Runs a parsed command; the exit code tells a script how it went.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Validate { files } => Ok(goals::validate(&files)),
        Command::Submit { file, json, bus } => {
            let goal = goals::read(&file)?;
            let bus = connect(&bus).await?;
            goals::submit(&bus, goal, json).await?;
            bus.drain().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            wait,
            stale_after,
            json,
            bus,
        } => {
            let bus = connect(&bus).await?;
            status::show(&bus, wait, stale_after, json).await
        }
        Command::Dlq { limit, json, bus } => {
            let bus = connect(&bus).await?;
            dead_letters::show(&bus, limit, json).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(args: &ConnectArgs) -> Result<Bus, ConnectError> {
    Bus::connect(args, "infracrew-cli").await
}
