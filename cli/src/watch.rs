//! `crew watch`: the crew's subjects as they happen, one readable line per message; or the
//! work stream replayed from a time or a sequence.

use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use infracrew_bus::{Bus, streams};
use infracrew_protocol::{
    ApplyRequest, ApprovalDecision, BuildStatus, DeadLetter, GoalRejected, GoalStatement,
    Heartbeat, OpsEvent, PlanId, PlanSpec, PlanTransitioned, ValidateRequest, ValidationResult,
    decode, subjects,
};

use crate::CliError;

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum From {
    /// Only what is published from now on (every crew subject, heartbeats included).
    Now,
    /// The work stream from this time on, then live.
    Time(DateTime<Utc>),
    /// The work stream from this stream sequence on, then live.
    Sequence(u64),
}

fn follow_error(error: impl std::fmt::Display) -> CliError {
    CliError::Follow(error.to_string())
}

pub async fn watch(bus: &Bus, filter: &str, from: From, as_json: bool) -> Result<(), CliError> {
    let policy = match from {
        From::Now => {
            let mut live = bus
                .client()
                .subscribe(filter.to_owned())
                .await
                .map_err(follow_error)?;
            while let Some(message) = live.next().await {
                print_line(
                    &message.subject,
                    &message.payload,
                    Utc::now(),
                    None,
                    as_json,
                );
            }
            return Ok(());
        }
        From::Time(time) => {
            let nanos = time.timestamp_nanos_opt().unwrap_or_default();
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
                .map_err(follow_error)?;
            DeliverPolicy::ByStartTime { start_time }
        }
        From::Sequence(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
    };
    let mut messages = bus
        .follow(streams::WORK, filter, policy)
        .await
        .map_err(follow_error)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(follow_error)?;
        let (at, sequence) = match message.info() {
            Ok(info) => {
                let nanos = info.published.unix_timestamp_nanos();
                (
                    DateTime::from_timestamp_nanos(nanos as i64),
                    Some(info.stream_sequence),
                )
            }
            Err(_) => (Utc::now(), None),
        };
        print_line(&message.subject, &message.payload, at, sequence, as_json);
    }
    Ok(())
}

fn print_line(
    subject: &str,
    payload: &[u8],
    at: DateTime<Utc>,
    sequence: Option<u64>,
    as_json: bool,
) {
    if as_json {
        let body: serde_json::Value =
            serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
        println!(
            "{}",
            serde_json::json!({"subject": subject, "sequence": sequence, "at": at, "message": body})
        );
        return;
    }
    let position = sequence
        .map(|s| format!("#{s:<5}"))
        .unwrap_or_else(|| "      ".into());
    // A message that says several things (a plan's moves in one write) is a line for each.
    for said in summary(subject, payload).lines() {
        println!(
            "{} {position} {subject:<24} {said}",
            at.format("%H:%M:%S%.3f")
        );
    }
}

fn short(plan: PlanId) -> String {
    plan.to_string()[..8].to_owned()
}

/// One line that says what the message means.
fn summary(subject: &str, payload: &[u8]) -> String {
    let text = || -> Option<String> {
        Some(match subject {
            subjects::GOAL_SUBMITTED => {
                let goal: GoalStatement = decode(payload).ok()?;
                let version = goal.version.map(|v| format!(" {v}")).unwrap_or_default();
                format!(
                    "goal {} {:?} {}{version} in {} by {}",
                    &goal.goal_id?.to_string()[..8],
                    goal.intent,
                    goal.service,
                    goal.environment,
                    goal.requested_by
                )
            }
            subjects::GOAL_REJECTED => {
                let rejected: GoalRejected = decode(payload).ok()?;
                let reasons: Vec<String> = rejected
                    .reasons
                    .iter()
                    .map(|r| format!("{}: {}", r.field, r.message))
                    .collect();
                format!(
                    "goal {} rejected: {}",
                    &rejected.goal_id.to_string()[..8],
                    reasons.join("; ")
                )
            }
            subjects::PLAN_PENDING | subjects::PLAN_ROUTED => {
                let plan: PlanSpec = decode(payload).ok()?;
                format!(
                    "plan {} {:?} {} in {} (risk {:?})",
                    short(plan.plan_id),
                    plan.intent,
                    plan.service,
                    plan.environment,
                    plan.risk.level
                )
            }
            subjects::PLAN_STATE => {
                let event: PlanTransitioned = decode(payload).ok()?;
                let lines: Vec<String> = event
                    .moves()
                    .map(|(_, moved)| {
                        let from = moved.from.map(|s| format!("{s} -> ")).unwrap_or_default();
                        format!(
                            "plan {} {from}{} by {}: {}",
                            short(event.plan_id),
                            moved.to,
                            moved.by,
                            moved.why
                        )
                    })
                    .collect();
                lines.join("\n")
            }
            subjects::VALIDATE_PENDING => {
                let request: ValidateRequest = decode(payload).ok()?;
                format!(
                    "plan {} change {} to judge ({} resources)",
                    short(request.plan_id),
                    request.digest.short(),
                    request.change.resources.len()
                )
            }
            subjects::VALIDATE_RESULT => {
                let result: ValidationResult = decode(payload).ok()?;
                format!(
                    "plan {} {:?} with {} finding(s)",
                    short(result.plan_id),
                    result.verdict,
                    result.findings.len()
                )
            }
            subjects::BUILD_STATUS => {
                let status: BuildStatus = decode(payload).ok()?;
                let s = status.summary;
                format!(
                    "plan {} {:?}: {} to create, {} to change, {} to remove",
                    short(status.plan_id),
                    status.outcome,
                    s.create,
                    s.update,
                    s.delete
                )
            }
            subjects::APPROVAL_DECIDED => {
                let decision: ApprovalDecision = decode(payload).ok()?;
                let refusal = decision
                    .refusal
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                format!(
                    "plan {} {:?} by {} via {:?} {:?}{refusal}",
                    short(decision.plan_id),
                    decision.kind,
                    decision.approver,
                    decision.channel,
                    decision.outcome
                )
            }
            subjects::APPLY_REQUEST => {
                let request: ApplyRequest = decode(payload).ok()?;
                format!(
                    "plan {} apply requested (token {}, approved by {})",
                    short(request.plan_id),
                    request.fencing_token,
                    request.approvers.join(", ")
                )
            }
            subjects::OPS_EVENT | subjects::OPS_STEP => {
                let event: OpsEvent = decode(payload).ok()?;
                let check = event
                    .refused_by
                    .map(|check| format!(" by {check}:"))
                    .unwrap_or_default();
                format!(
                    "plan {} {:?}{check} {}",
                    short(event.plan_id),
                    event.kind,
                    event.message
                )
            }
            other if other.starts_with("crew.heartbeat.") => {
                let beat: Heartbeat = decode(payload).ok()?;
                format!(
                    "{} {} alive, {} handled, {} failed",
                    beat.agent,
                    &beat.instance_id.to_string()[..8],
                    beat.messages_handled,
                    beat.messages_failed
                )
            }
            other if other.starts_with("crew.dlq.") => {
                let letter: DeadLetter = decode(payload).ok()?;
                format!(
                    "dead letter from {} #{}: {}",
                    letter.subject,
                    letter.stream_sequence,
                    letter.reason.lines().next().unwrap_or_default()
                )
            }
            _ => return None,
        })
    };
    text().unwrap_or_else(|| format!("({} bytes, not a message this crew reads)", payload.len()))
}

#[cfg(test)]
mod tests {
    use infracrew_protocol::{GateCheck, OpsEventKind, encode, examples};

    use super::*;

    #[test]
    fn each_move_of_a_write_is_a_line() {
        let summary = summary(
            subjects::PLAN_STATE,
            &encode(&examples::plan_transitioned()).unwrap(),
        );
        let lines: Vec<&str> = summary.lines().collect();
        assert_eq!(lines.len(), 2, "{summary}");
        assert!(
            lines[0].contains("VALIDATING -> READY by forge: validated"),
            "{summary}"
        );
        assert!(
            lines[1].contains("READY -> APPROVED by conductor: auto-approved"),
            "{summary}"
        );
    }

    #[test]
    fn a_refusal_says_which_check_refused() {
        let mut event = examples::ops_event();
        event.kind = OpsEventKind::ApplyRefused;
        event.refused_by = Some(GateCheck::Signature);
        event.message = "the request is not the Conductor's: it is not signed".into();
        let line = summary(subjects::OPS_EVENT, &encode(&event).unwrap());
        assert!(
            line.ends_with(
                "ApplyRefused by SIGNATURE: the request is not the Conductor's: it is not signed"
            ),
            "{line}"
        );
    }
}
