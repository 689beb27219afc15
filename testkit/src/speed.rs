//! What the speed examples (`make bench`) share: running a piece of work for a while and
//! reading how often it ran.

use std::time::Instant;

/// How fast a piece of work ran.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub micros_each: f64,
}

/// Runs `work` again and again for `seconds` on this thread, stopping at its first error.
pub fn run_for<E>(seconds: f64, mut work: impl FnMut() -> Result<(), E>) -> Result<Rate, E> {
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        work()?;
        runs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Rate {
        per_second: runs as f64 / elapsed,
        micros_each: elapsed * 1e6 / runs.max(1) as f64,
    })
}

/// The first command-line argument as the seconds each case runs, 3 without one.
pub fn seconds_from_args() -> Result<f64, std::num::ParseFloatError> {
    std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .map(|seconds| seconds.unwrap_or(3.0))
}
