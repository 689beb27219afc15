//! Atlas's planning speed: goals planned per second through the same `planner::plan` the agent
//! runs (catalog lookup, parameter checks, merge, risk), on one core.
//!
//! Run: `cargo run --release -p infracrew-atlas --example planning_speed -- [SECONDS]`.

use std::path::PathBuf;

use infracrew_atlas::planner;
use infracrew_playbooks::Playbooks;
use infracrew_protocol::{GoalStatement, decode, encode, examples};
use infracrew_testkit::speed::{run_for, seconds_from_args};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = seconds_from_args()?;
    let playbooks =
        Playbooks::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks"))?;
    let goal = examples::goal();
    let bytes = encode(&goal)?;
    let now = chrono::Utc::now();
    println!(
        "atlas bench: the sample goal (deploy social-intel to staging), one thread, {seconds} s per case"
    );

    let rate = run_for(seconds, || {
        planner::plan(&goal, &playbooks, now)
            .map(drop)
            .map_err(|reasons| format!("{reasons:?}"))
    })?;
    println!(
        "plan only:                 {:>9.0} plans/s ({:.2} µs each)",
        rate.per_second, rate.micros_each
    );

    let rate = run_for(seconds, || -> Result<(), Box<dyn std::error::Error>> {
        let goal: GoalStatement = decode(&bytes)?;
        let plan =
            planner::plan(&goal, &playbooks, now).map_err(|reasons| format!("{reasons:?}"))?;
        encode(&plan)?;
        Ok(())
    })?;
    println!(
        "decode + check + plan + encode: {:>5.0} plans/s ({:.2} µs each)",
        rate.per_second, rate.micros_each
    );
    Ok(())
}
