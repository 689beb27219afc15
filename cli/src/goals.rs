//! Reading, checking and submitting goal files.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use infracrew_bus::Bus;
use infracrew_protocol::{DecodeError, GoalStatement, PlanId, decode, subjects};
use serde_json::json;

use crate::CliError;

/// Why a goal file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GoalFileError {
    #[error("cannot read goal file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: DecodeError },
}

/// Reads and checks a goal file; the error names the file, and each JSON path at fault.
pub fn read(path: &Path) -> Result<GoalStatement, GoalFileError> {
    let bytes = std::fs::read(path).map_err(|source| GoalFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode::<GoalStatement>(&bytes).map_err(|source| GoalFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Checks every file and reports each; fails if any is invalid.
pub fn validate(files: &[PathBuf]) -> ExitCode {
    let mut failed = 0;
    for path in files {
        match read(path) {
            Ok(goal) => println!("{}: valid ({})", path.display(), describe(&goal)),
            Err(error) => {
                failed += 1;
                eprintln!("{error}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Publishes the goal (with its id filled in) and says where it was stored.
pub async fn submit(bus: &Bus, goal: GoalStatement, as_json: bool) -> Result<(), CliError> {
    let goal = goal.with_id();
    let goal_id = goal.id();
    let plan_id = PlanId::for_goal(goal_id);
    let published = bus.publish(subjects::GOAL_SUBMITTED, &goal).await?;
    if as_json {
        let report = json!({
            "goal_id": goal_id,
            "plan_id": plan_id,
            "stream": published.stream,
            "sequence": published.sequence,
            "duplicate": published.duplicate,
        });
        println!("{report}");
    } else if published.duplicate {
        println!(
            "goal {goal_id} was submitted before ({} #{}); nothing new was sent",
            published.stream, published.sequence
        );
        println!("  plan id: {plan_id}");
    } else {
        println!(
            "goal {goal_id} submitted ({} #{})",
            published.stream, published.sequence
        );
        println!("  {}", describe(&goal));
        println!("  plan id: {plan_id}");
    }
    Ok(())
}

/// One line saying what a goal asks for.
fn describe(goal: &GoalStatement) -> String {
    let intent = serde_json::to_value(goal.intent)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    let version = goal
        .version
        .as_deref()
        .map(|v| format!(" {v}"))
        .unwrap_or_default();
    format!(
        "{intent} {}{version} in {}, requested by {}",
        goal.service, goal.environment, goal.requested_by
    )
}
