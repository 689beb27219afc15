//! Atlas's planning speed: goals planned per second through the same `planner::plan` the agent
//! runs (catalog lookup, parameter checks, merge, risk), on one core.
//!
//! Run: `cargo run --release -p infracrew-atlas --example planning_speed -- [SECONDS]`.

use std::{path::PathBuf, time::Instant};

use infracrew_atlas::planner;
use infracrew_playbooks::Playbooks;
use infracrew_protocol::{GoalStatement, decode, encode, examples};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let playbooks =
        Playbooks::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks"))?;
    let goal = examples::goal();
    let bytes = encode(&goal)?;
    let now = chrono::Utc::now();
    println!(
        "atlas bench: the sample goal (deploy social-intel to staging), one thread, {seconds} s per case"
    );

    let started = Instant::now();
    let mut planned = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        planner::plan(&goal, &playbooks, now).map_err(|reasons| format!("{reasons:?}"))?;
        planned += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "plan only:                 {:>9.0} plans/s ({:.2} µs each)",
        planned as f64 / elapsed,
        elapsed * 1e6 / planned as f64
    );

    let started = Instant::now();
    let mut planned = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        let goal: GoalStatement = decode(&bytes)?;
        let plan =
            planner::plan(&goal, &playbooks, now).map_err(|reasons| format!("{reasons:?}"))?;
        encode(&plan)?;
        planned += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "decode + check + plan + encode: {:>5.0} plans/s ({:.2} µs each)",
        planned as f64 / elapsed,
        elapsed * 1e6 / planned as f64
    );
    Ok(())
}
