//! Reading, checking and submitting goal files.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use futures::StreamExt;
use infracrew_bus::{Bus, Kv, TraceContext, buckets};
use infracrew_protocol::{
    DecodeError, GoalRejected, GoalStatement, MAX_MESSAGE_BYTES, PlanId, PlanRecord, PlanState,
    PlanTransitioned, Transition, decode, subjects,
};
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
    #[error(
        "{path} is {size} bytes, over the {max} bytes a message on the bus may have (nats-server's max_payload); nothing was sent"
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        max: usize,
    },
}

/// Reads and checks a goal file; the error names the file, and each JSON path at fault.
pub fn read(path: &Path) -> Result<GoalStatement, GoalFileError> {
    let read_error = |source| GoalFileError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_MESSAGE_BYTES as u64 {
        return Err(GoalFileError::TooLarge {
            path: path.to_owned(),
            size,
            max: MAX_MESSAGE_BYTES,
        });
    }
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

/// Publishes the goal (with its id filled in) and says where it was stored; with `wait`,
/// follows the plan until it needs a person, is blocked or rejected, or ends.
pub async fn submit(
    bus: &Bus,
    goal: GoalStatement,
    as_json: bool,
    wait: Option<Duration>,
) -> Result<ExitCode, CliError> {
    let goal = goal.with_id();
    let goal_id = goal.id();
    let plan_id = PlanId::for_goal(goal_id);
    // Subscribed before publishing, so no stage is missed.
    let follow_error = |error: async_nats::SubscribeError| CliError::Follow(error.to_string());
    let mut moves = bus
        .client()
        .subscribe(subjects::PLAN_STATE)
        .await
        .map_err(follow_error)?;
    let mut rejections = bus
        .client()
        .subscribe(subjects::GOAL_REJECTED)
        .await
        .map_err(follow_error)?;
    // The goal starts the plan's trace: every agent's log lines about it carry this id.
    let trace = TraceContext::root();
    let published = trace
        .scope(bus.publish(subjects::GOAL_SUBMITTED, &goal))
        .await?;
    if as_json {
        let report = json!({
            "goal_id": goal_id,
            "plan_id": plan_id,
            "trace_id": trace.trace_id(),
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
        println!("  trace id: {} (in every agent's logs)", trace.trace_id());
    }
    let Some(timeout) = wait else {
        return Ok(ExitCode::SUCCESS);
    };

    let plans: Kv<PlanRecord> = bus
        .kv(buckets::PLANS)
        .await
        .map_err(|e| CliError::Follow(e.to_string()))?;
    // A goal submitted before may be well along already.
    let mut shown = 0;
    if let Some(record) = plans
        .get(&plan_id.to_string())
        .await
        .map_err(|e| CliError::Follow(e.to_string()))?
    {
        for transition in &record.value.history {
            show_move(transition, as_json);
        }
        shown = record.value.history.len();
        if let Some(code) = settled(record.value.state, &plan_id, &plans, as_json).await {
            return Ok(code);
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("crew: plan {plan_id} did not settle within {timeout:?}; follow it with crew show {plan_id}");
                return Ok(ExitCode::from(3));
            }
            message = moves.next() => {
                let Some(message) = message else { return Err(CliError::Follow("the connection closed".into())) };
                let Ok(event) = decode::<PlanTransitioned>(&message.payload) else { continue };
                if event.plan_id != plan_id {
                    continue;
                }
                for (seq, moved) in event.moves() {
                    if seq as usize <= shown {
                        continue;
                    }
                    shown = seq as usize;
                    show_move(moved, as_json);
                    if let Some(code) = settled(moved.to, &plan_id, &plans, as_json).await {
                        return Ok(code);
                    }
                }
            }
            message = rejections.next() => {
                let Some(message) = message else { return Err(CliError::Follow("the connection closed".into())) };
                let Ok(rejected) = decode::<GoalRejected>(&message.payload) else { continue };
                if rejected.goal_id != goal_id {
                    continue;
                }
                if as_json {
                    println!("{}", json!({"plan_id": plan_id, "state": "REJECTED", "reasons": rejected.reasons}));
                } else {
                    println!("rejected: the goal cannot be planned");
                    for reason in &rejected.reasons {
                        let choices = if reason.choices.is_empty() { String::new() } else { format!(" (valid: {})", reason.choices.join(", ")) };
                        println!("  at {}: {}{choices}", reason.field, reason.message);
                    }
                }
                return Ok(ExitCode::FAILURE);
            }
        }
    }
}

fn show_move(transition: &Transition, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({"state": transition.to, "by": transition.by, "why": transition.why, "at": transition.at})
        );
    } else {
        println!(
            "  {}  {:<18} by {:<10} {}",
            transition.at.format("%H:%M:%S"),
            transition.to.to_string(),
            transition.by,
            transition.why
        );
    }
}

/// The exit code once the plan needs a person, is blocked, or ends; `None` while it moves.
async fn settled(
    state: PlanState,
    plan_id: &PlanId,
    plans: &Kv<PlanRecord>,
    as_json: bool,
) -> Option<ExitCode> {
    let code = match state {
        PlanState::Ready | PlanState::AwaitingApproval => {
            if !as_json {
                println!("ready: approve with crew approve {plan_id} --as <approver>");
            }
            ExitCode::SUCCESS
        }
        PlanState::NoChange | PlanState::Applied => ExitCode::SUCCESS,
        PlanState::Blocked => {
            if !as_json && let Ok(Some(record)) = plans.get(&plan_id.to_string()).await {
                for finding in record.value.build.iter().flat_map(|build| &build.findings) {
                    println!(
                        "  {:?} {}/{} on {}: {}",
                        finding.enforcement,
                        finding.policy,
                        finding.rule,
                        finding.resource,
                        finding.message
                    );
                }
            }
            ExitCode::from(2)
        }
        PlanState::Rejected
        | PlanState::Expired
        | PlanState::Failed
        | PlanState::RolledBack
        | PlanState::Superseded => ExitCode::FAILURE,
        PlanState::Submitted
        | PlanState::Planned
        | PlanState::Validating
        | PlanState::Approved
        | PlanState::Applying => {
            return None;
        }
    };
    Some(code)
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
