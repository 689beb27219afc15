use std::process::ExitCode;

use clap::Parser;
use infracrew_agent_runtime::{AgentArgs, WorkError};
use infracrew_forge::drivers::DriverArgs;
use infracrew_protocol::{AgentRole, signing::Verifier};

// jemalloc, not glibc's malloc: Forge makes many small, short-lived allocations (JSON
// values, messages), and glibc's malloc and free were over a third of its CPU. With jemalloc
// a plan costs it 10 to 15% less CPU, for 1 to 2 MB more (docs/architecture.md, Speed).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Forge, the crew's builder and operator: renders, diffs, applies and verifies changes.
#[derive(Debug, Parser)]
#[command(name = "forge", version)]
struct Cli {
    /// The Conductor's public nkey (U…, from `crew keys`): Forge applies only ApplyRequests
    /// signed with it.
    #[arg(long, env = "INFRACREW_CONDUCTOR_PUBLIC_KEY")]
    conductor_public_key: Option<String>,
    #[command(flatten)]
    drivers: DriverArgs,
    #[command(flatten)]
    agent: AgentArgs,
}

// Forge waits on the bus, not the CPU: one thread spares a second thread's wake-up for
// each message (about a fifth less CPU per plan, measured with `crew bench`; see
// docs/architecture.md, Speed). Sentinel and Atlas compute, and keep both cores.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let conductor = cli
        .conductor_public_key
        .as_deref()
        .ok_or_else(|| {
            "no Conductor key: set INFRACREW_CONDUCTOR_PUBLIC_KEY (or --conductor-public-key) to the public key of the Conductor's signing seed (`crew keys`)".to_owned()
        })
        .and_then(|key| {
            Verifier::from_public_key(key)
                .map_err(|error| format!("INFRACREW_CONDUCTOR_PUBLIC_KEY is {error}"))
        });
    let conductor = match conductor {
        Ok(conductor) => conductor,
        Err(reason) => {
            eprintln!("forge: cannot start: {reason}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    infracrew_agent_runtime::main(AgentRole::Forge, cli.agent, |agent, shutdown| async move {
        let drivers =
            cli.drivers
                .open(&agent.bus)
                .await
                .map_err(|error| WorkError::Dependency {
                    what: "the deployment drivers".into(),
                    reason: error.to_string(),
                })?;
        tracing::info!(drivers = %cli.drivers.describe(), "drivers ready");
        infracrew_forge::run(agent, drivers, conductor, shutdown).await
    })
    .await
}
