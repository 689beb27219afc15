//! `crew`, the command line of infracrew: check and submit goals, see the crew's state.

mod bench;
mod dead_letters;
mod decisions;
mod github;
mod goals;
mod plans;
mod status;
mod up;
mod watch;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use infracrew_bus::{Bus, ConnectArgs, ConnectError, parse_duration};
use infracrew_protocol::{DecisionKind, signing::Signer};

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
    /// same goal again names the same goal and stores nothing new. With --from-github, the
    /// goal files a pull request adds or changes are read at its head and submitted with the
    /// pull request as their source: the Conductor reports each plan there (statuses and one
    /// comment) and takes approvals from its comments and reviews.
    ///
    /// Examples: crew submit examples/goals/valid/social-intel-staging.json
    ///           crew submit --from-github acme/infra#42
    Submit {
        /// The goal file (JSON).
        #[arg(
            required_unless_present = "from_github",
            conflicts_with = "from_github"
        )]
        file: Option<PathBuf>,
        /// Submit the goal files of a pull request, OWNER/REPO#NUMBER.
        #[arg(long, value_name = "OWNER/REPO#PR")]
        from_github: Option<github::PullRequestRef>,
        /// With --from-github: only .json files under this folder are goals.
        #[arg(long, default_value = "goals/")]
        goals_under: String,
        /// With --from-github: the GitHub REST API (GitHub Enterprise Server: https://HOST/api/v3).
        #[arg(
            long,
            env = "INFRACREW_GITHUB_API_URL",
            default_value = "https://api.github.com"
        )]
        github_api_url: String,
        /// With --from-github: a token that may read the repository.
        #[arg(long, env = "INFRACREW_GITHUB_TOKEN", hide_env_values = true)]
        github_token: Option<String>,
        /// Follow the plan, printing each stage, until it waits for a decision, is blocked or
        /// rejected, or ends; exits non-zero when it was rejected, blocked or failed.
        #[arg(long)]
        wait: bool,
        /// How long --wait follows the plan.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Show every agent instance (last heartbeat, version, readiness) and each consumer's
    /// backlog.
    ///
    /// Exits 3 when an agent has no instance with a fresh heartbeat that says it is ready.
    ///
    /// Example: crew status --wait 30s
    Status {
        /// Wait up to this long for every agent to have a fresh, ready instance.
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
    /// List the plans the Conductor keeps, oldest first.
    ///
    /// Example: crew plans
    Plans {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Show one plan: state, what it waits for, the diff, findings, approvals and history.
    ///
    /// Example: crew show c265859a
    Show {
        /// A plan id, or a unique prefix of one.
        plan: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Approve a READY plan, as a person the environment's rules allow.
    ///
    /// Refusals print the exact rule (not READY, not an approver, your own plan, ...).
    ///
    /// Example: crew approve c265859a --as alice
    Approve {
        plan: String,
        /// Who approves.
        #[command(flatten)]
        approver: decisions::ApproverArgs,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Reject a plan, as an allowed approver; the plan ends REJECTED.
    ///
    /// Example: crew reject c265859a --as bob --reason "wrong version"
    Reject {
        plan: String,
        #[command(flatten)]
        approver: decisions::ApproverArgs,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Lift a BLOCKED plan's soft-mandatory findings, as a policy owner, with a reason.
    ///
    /// Example: crew override c265859a --as erin --reason "one replica during the migration"
    Override {
        plan: String,
        #[command(flatten)]
        approver: decisions::ApproverArgs,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        bus: ConnectArgs,
    },
    /// Start a whole local crew: nats-server with JetStream (unless --nats-url or NATS_URL
    /// names one) and the four agents, their logs prefixed; Ctrl-C stops everything.
    ///
    /// Examples: crew up --driver dry-run; crew up --driver container (the engine DOCKER_HOST
    /// names, or Docker's or Podman's usual socket); crew up --environment-driver dev=container
    Up {
        /// A running NATS to use instead of starting nats-server.
        #[arg(long, env = "NATS_URL")]
        nats_url: Option<String>,
        /// The driver Forge uses in every environment not named in --environment-driver.
        #[arg(long, default_value = "dry-run", value_parser = ["dry-run", "container"])]
        driver: String,
        /// The driver of one environment, as ENV=DRIVER (repeatable).
        #[arg(long = "environment-driver")]
        environment_drivers: Vec<String>,
        #[command(flatten)]
        files: CrewFiles,
    },
    /// Tail the crew's subjects, one readable line per message.
    ///
    /// From now by default (every crew subject, heartbeats included); --since or --from-seq
    /// replays the work stream from a time or a sequence first.
    ///
    /// Example: crew watch 'crew.plan.>' --since 2026-11-23T09:00:00Z
    Watch {
        /// A subject filter.
        #[arg(default_value = "crew.>")]
        filter: String,
        /// Replay the work stream from this time (RFC 3339).
        #[arg(long, conflicts_with = "from_seq")]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Replay the work stream from this stream sequence.
        #[arg(long)]
        from_seq: Option<u64>,
        /// One JSON object per message.
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
    /// Measure the whole crew: N plans through a nats-server and four agent processes it
    /// starts (dry-run driver, dev approving automatically), at a rate or as fast as possible.
    ///
    /// Prints throughput, submit-to-APPLIED and per-stage latency (p50, p90, p99), the raw
    /// JetStream hop measured in the same run and the crew's latency against the sum of its
    /// hops (and of its hops and the server's answers it waits for), each process's CPU time
    /// per plan, each handler's mean time per message, and each
    /// agent's peak resident memory. Build with --release for real figures.
    ///
    /// Example: cargo run --release -p infracrew-cli -- bench --plans 2000
    Bench {
        /// How many plans.
        #[arg(long, default_value_t = 1000)]
        plans: usize,
        /// Plans per second; without it, as fast as the bus takes them.
        #[arg(long)]
        rate: Option<f64>,
        /// How many services the plans take turns on (each plan a new version of its
        /// service); without it, one per plan, so no plan waits for another's lock.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        services: Option<u32>,
        /// The playbooks are copied, with the bench's services added.
        #[command(flatten)]
        files: CrewFiles,
        /// How long to wait for the last plan.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        patience: Duration,
    },
    /// Make the crew's secrets: the Conductor's signing key pair and a NATS password per user.
    ///
    /// The seed (keep it secret) goes to the Conductor as INFRACREW_CONDUCTOR_SIGNING_SEED, the
    /// public key to Forge as INFRACREW_CONDUCTOR_PUBLIC_KEY: Forge then applies only
    /// ApplyRequests the Conductor signed. INFRACREW_<USER>_PASSWORD are the NATS users'
    /// passwords (deploy/nats/users.conf). Prints environment lines, as compose reads them.
    ///
    /// With --approver NAME: a key pair for that approver instead, whose seed signs their
    /// decisions (`crew approve --key`) and whose public key goes under [approver_keys] in the
    /// Conductor's configuration.
    ///
    /// Example: crew keys > .env
    Keys {
        /// Make an approver's key pair instead of the crew's secrets.
        #[arg(long, value_name = "NAME")]
        approver: Option<String>,
    },
    /// Print the NATS server's user configuration: one user per agent and one for the CLI,
    /// each allowed only the subjects its role needs (deploy/nats/users.conf is this output).
    ///
    /// Example: crew nats-users > deploy/nats/users.conf
    NatsUsers,
}

/// A random password (122 random bits).
pub fn new_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The files a crew started by `crew up` or `crew bench` runs with.
#[derive(Debug, Clone, clap::Args)]
pub struct CrewFiles {
    /// The folder with the catalog, playbooks and policies.
    #[arg(long, env = "INFRACREW_PLAYBOOKS", default_value = "playbooks")]
    pub playbooks: PathBuf,
    /// The Conductor's configuration.
    #[arg(
        long,
        env = "INFRACREW_CONDUCTOR_CONFIG",
        default_value = "config/demo.toml"
    )]
    pub config: PathBuf,
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
    #[error("{0}")]
    UnknownPlan(String),
    #[error("watching the plan failed: {0}")]
    Follow(String),
    #[error("crew up: {0}")]
    Up(String),
    #[error(
        "the Conductor did not answer on crew.approval.request ({0}); is it running? (crew status)"
    )]
    NoConductor(String),
    #[error("crew bench: {0}")]
    Bench(String),
    #[error("the approver key {path}: {reason}")]
    ApproverKey { path: PathBuf, reason: String },
    #[error("{0}")]
    Github(String),
}

/// Runs a parsed command; the exit code tells a script how it went.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Validate { files } => Ok(goals::validate(&files)),
        Command::Submit {
            file,
            from_github,
            goals_under,
            github_api_url,
            github_token,
            wait,
            timeout,
            json,
            bus,
        } => {
            // Each goal with the pull request's file it came from, if it did.
            let goals: Vec<(Option<String>, infracrew_protocol::GoalStatement)> = match from_github
            {
                // clap requires the file without --from-github.
                None => vec![(None, goals::read(&file.unwrap_or_default())?)],
                Some(pull_request) => {
                    let from = github::GoalsFromGithub {
                        api_url: github_api_url,
                        token: github_token,
                        pull_request,
                        under: goals_under,
                    };
                    github::goals_of(&from)
                        .await
                        .map_err(CliError::Github)?
                        .into_iter()
                        .map(|(path, goal)| (Some(format!("{} {path}", from.pull_request)), goal))
                        .collect()
                }
            };
            let bus = connect(&bus).await?;
            let mut code = ExitCode::SUCCESS;
            for (origin, goal) in goals {
                if let Some(origin) = origin.filter(|_| !json) {
                    println!("{origin}:");
                }
                let submitted = goals::submit(&bus, goal, json, wait.then_some(timeout)).await?;
                if submitted != ExitCode::SUCCESS {
                    code = submitted;
                }
            }
            bus.drain().await;
            Ok(code)
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
        Command::Plans { json, bus } => {
            plans::list(&connect(&bus).await?, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { plan, json, bus } => {
            plans::show(&connect(&bus).await?, &plan, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve {
            plan,
            approver,
            bus,
        } => {
            decisions::decide(
                &connect(&bus).await?,
                &plan,
                DecisionKind::Approve,
                &approver,
                None,
            )
            .await
        }
        Command::Reject {
            plan,
            approver,
            reason,
            bus,
        } => {
            decisions::decide(
                &connect(&bus).await?,
                &plan,
                DecisionKind::Reject,
                &approver,
                reason,
            )
            .await
        }
        Command::Override {
            plan,
            approver,
            reason,
            bus,
        } => {
            let bus = connect(&bus).await?;
            decisions::decide(&bus, &plan, DecisionKind::Override, &approver, Some(reason)).await
        }
        Command::Up {
            nats_url,
            driver,
            environment_drivers,
            files,
        } => {
            up::up(up::UpOptions {
                nats_url,
                playbooks: files.playbooks,
                config: files.config,
                driver,
                environment_drivers,
            })
            .await
        }
        Command::Watch {
            filter,
            since,
            from_seq,
            json,
            bus,
        } => {
            let from = match (since, from_seq) {
                (Some(time), _) => watch::From::Time(time),
                (None, Some(sequence)) => watch::From::Sequence(sequence),
                (None, None) => watch::From::Now,
            };
            watch::watch(&connect(&bus).await?, &filter, from, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            plans,
            rate,
            services,
            files,
            patience,
        } => {
            bench::bench(bench::BenchOptions {
                plans,
                rate,
                services: services.map_or(plans, |services| services as usize),
                playbooks: files.playbooks,
                config: files.config,
                patience,
            })
            .await
        }
        Command::NatsUsers => {
            print!("{}", infracrew_bus::permissions::users_conf());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys {
            approver: Some(name),
        } => {
            let (signer, seed) = Signer::generate();
            println!(
                "# {name}'s seed: keep it in a file only {name} can read, and sign with crew approve --as {name} --key <that file>\n{seed}"
            );
            println!(
                "# for the Conductor's configuration, under [approver_keys]:\n# {name} = \"{}\"",
                signer.public_key()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { approver: None } => {
            let (signer, seed) = Signer::generate();
            println!("# the Conductor's (secret)\nINFRACREW_CONDUCTOR_SIGNING_SEED={seed}");
            println!(
                "# Forge's\nINFRACREW_CONDUCTOR_PUBLIC_KEY={}",
                signer.public_key()
            );
            println!("# the NATS users' passwords (nats-server and each user)");
            for user in infracrew_bus::permissions::crew_users() {
                println!("{}={}", user.password_variable(), new_password());
            }
            Ok(ExitCode::SUCCESS)
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
