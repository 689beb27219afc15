//! The plan record: a plan's state, build, approvals and history, as the Conductor keeps it in
//! the `crew_plans` bucket (compare-and-set on the revision) and Forge and the CLI read it.

use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{BuildStatus, DecisionChannel, PlanDigest, PlanSpec, PlanTransitioned, SchemaVersion};

/// Where a plan is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlanState {
    Submitted,
    Planned,
    Validating,
    Ready,
    Blocked,
    /// The diff was empty: nothing to apply, and never reported as a change.
    NoChange,
    AwaitingApproval,
    Approved,
    Applying,
    Applied,
    Failed,
    RolledBack,
    Rejected,
    Expired,
    Superseded,
}

impl PlanState {
    /// A plan in a terminal state never moves again.
    pub fn is_terminal(self) -> bool {
        use PlanState::*;
        matches!(
            self,
            NoChange | Applied | Failed | RolledBack | Rejected | Expired | Superseded
        )
    }

    /// Whether the state machine allows moving from `self` to `next`.
    pub fn can_move_to(self, next: PlanState) -> bool {
        use PlanState::*;
        match self {
            Submitted => matches!(next, Planned | Rejected),
            Planned => matches!(next, Validating | Superseded),
            Validating => matches!(next, Ready | Blocked | NoChange | Superseded),
            Ready | AwaitingApproval => {
                matches!(
                    next,
                    AwaitingApproval | Approved | Rejected | Expired | Superseded
                ) && next != self
            }
            // A soft-mandatory finding lifted by a policy owner makes a blocked plan ready.
            Blocked => matches!(next, Ready | Rejected | Expired | Superseded),
            // Failed straight from approved: Forge refused the request, nothing was applied.
            Approved => matches!(next, Applying | Failed | Expired | Superseded),
            Applying => matches!(next, Applied | Failed | RolledBack),
            NoChange | Applied | Failed | RolledBack | Rejected | Expired | Superseded => false,
        }
    }
}

impl fmt::Display for PlanState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        f.pad(text.as_deref().unwrap_or("UNKNOWN"))
    }
}

/// One accepted approval, bound to the digest the approver saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Approval {
    pub approver: String,
    pub channel: DecisionChannel,
    pub digest: PlanDigest,
    pub at: DateTime<Utc>,
    /// Taken on the approver's word (`--as` in a demo installation), not on a signature or a
    /// verified Slack request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
}

/// A policy owner lifting a soft-mandatory finding, with the reason on record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Override {
    pub owner: String,
    pub rules: Vec<String>,
    pub reason: String,
    pub digest: PlanDigest,
    pub at: DateTime<Utc>,
}

/// One move of the state machine: who, when, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Transition {
    pub from: Option<PlanState>,
    pub to: PlanState,
    pub by: String,
    pub why: String,
    pub at: DateTime<Utc>,
}

/// Everything the crew knows about one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanRecord {
    pub plan: PlanSpec,
    pub state: PlanState,
    /// The latest build; its digest is what approvals bind to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildStatus>,
    /// When the plan became ready (or blocked): the approval window opens then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_opened_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// The lock key this plan waits for, while another plan holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_lock: Option<String>,
    /// The fencing token of the lock this plan holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_token: Option<u64>,
    pub history: Vec<Transition>,
    /// The position of each `crew.plan.state` message's last move, in order. One write's moves
    /// go out in one message, and a message sent again carries the same moves under the same
    /// id, which the stream stores once. Moves past the last end went out one per message,
    /// as a Conductor before 1.1 sent them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_ends: Vec<u32>,
    /// The W3C `traceparent` of the work that created the plan: later work on it (a
    /// decision, a resent request) continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl PlanRecord {
    /// The record of `plan` in `state`, with nothing else yet: no build, decision, lock or move.
    pub fn new(plan: PlanSpec, state: PlanState) -> Self {
        PlanRecord {
            plan,
            state,
            build: None,
            decision_opened_at: None,
            approvals: Vec::new(),
            overrides: Vec::new(),
            waiting_for_lock: None,
            lock_token: None,
            history: Vec::new(),
            message_ends: Vec::new(),
            trace_parent: None,
        }
    }

    /// The digest of the latest build, if there is one.
    pub fn digest(&self) -> Option<&PlanDigest> {
        self.build.as_ref().map(|build| &build.digest)
    }

    /// Makes the moves since the first `moves_before` one message; called before the write that
    /// records them.
    pub fn group_new_moves(&mut self, moves_before: usize) {
        let moves = self.history.len();
        if moves <= moves_before {
            return;
        }
        let grouped = self.message_ends.last().map_or(0, |&end| end as usize);
        self.message_ends
            .extend((grouped + 1..=moves_before).map(|end| end as u32));
        self.message_ends.push(moves as u32);
    }

    /// The `crew.plan.state` messages that carry the moves from position `from` on (0 for
    /// every move), grouped as they were first sent.
    pub fn state_messages(&self, from: usize) -> Vec<PlanTransitioned> {
        let moves = self.history.len();
        let mut ends: Vec<usize> = self
            .message_ends
            .iter()
            .map(|&end| end as usize)
            .filter(|&end| end <= moves)
            .collect();
        let grouped = ends.last().copied().unwrap_or(0);
        ends.extend(grouped + 1..=moves);
        let mut start = 0;
        let mut messages = Vec::new();
        for end in ends {
            if end > from
                && end > start
                && let Some((last, earlier)) = self.history[start..end].split_last()
            {
                messages.push(PlanTransitioned {
                    schema_version: SchemaVersion::CURRENT,
                    plan_id: self.plan.plan_id,
                    seq: end as u32,
                    transition: last.clone(),
                    earlier: earlier.to_vec(),
                });
            }
            start = start.max(end);
        }
        messages
    }

    /// Moves to `next`, recording who and why; refuses a move the state machine forbids.
    pub fn move_to(
        &mut self,
        next: PlanState,
        by: &str,
        why: impl Into<String>,
        at: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        if !self.state.can_move_to(next) {
            return Err(IllegalTransition {
                from: self.state,
                to: next,
            });
        }
        self.history.push(Transition {
            from: Some(self.state),
            to: next,
            by: by.to_owned(),
            why: why.into(),
            at,
        });
        self.state = next;
        Ok(())
    }
}

/// The lock on one environment and service (`crew_locks`, key [`lock_key`]): one change in
/// flight per target. Its holder renews `renewed_at`; `token` is the fencing token every
/// ApplyRequest for the holding plan carries, so a holder that lost the lock cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockRecord {
    pub plan_id: crate::PlanId,
    /// The Conductor instance that holds it.
    pub holder: String,
    pub token: u64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    /// The plans waiting for this lock, the longest waiting first: its release starts the
    /// first that is still waiting and queues the others on the next holder's lock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<LockWaiter>,
}

/// A plan in a lock's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LockWaiter {
    pub plan_id: crate::PlanId,
    /// When the plan was made: the queue's order.
    pub since: DateTime<Utc>,
}

impl LockWaiter {
    /// The plan's place in its lock's queue.
    pub fn of(plan: &PlanSpec) -> Self {
        Self {
            plan_id: plan.plan_id,
            since: plan.created_at,
        }
    }
}

/// The lock key of a service in an environment.
pub fn lock_key(environment: &str, service: &str) -> String {
    format!("{environment}.{service}")
}

/// Where a plan is reviewed outside the crew (`crew_reviews`, key: the plan id): the Conductor
/// writes it as it posts, and `crew show` reads it, so a review that could not be posted is
/// visible with its reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReviewRecord {
    /// The plan's Slack message, once posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackMessageRef>,
    /// Why the last Slack post failed for good (a setting to fix), cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_error: Option<String>,
    /// The id of the plan's comment on its pull request, once posted; it is edited in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_comment: Option<u64>,
    /// Why the last report to GitHub failed for good, cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_error: Option<String>,
}

/// A posted Slack message: the channel id and the timestamp that name it for updates and
/// thread replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SlackMessageRef {
    pub channel: String,
    pub ts: String,
}

/// A move the plan state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a plan cannot move from {from} to {to}")]
pub struct IllegalTransition {
    pub from: PlanState,
    pub to: PlanState,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::examples;

    #[test]
    fn the_state_machine_allows_only_the_documented_moves() {
        use PlanState::*;
        let path = [
            Submitted,
            Planned,
            Validating,
            Ready,
            AwaitingApproval,
            Approved,
            Applying,
            Applied,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].can_move_to(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
        assert!(
            !Blocked.can_move_to(Approved),
            "a blocked plan is never approved"
        );
        assert!(
            !Ready.can_move_to(Applying),
            "nothing applies without an approval"
        );
        assert!(
            Blocked.can_move_to(Ready),
            "an override makes a blocked plan ready"
        );
        for terminal in [
            NoChange, Applied, Failed, RolledBack, Rejected, Expired, Superseded,
        ] {
            assert!(terminal.is_terminal());
            assert!(!terminal.can_move_to(Ready), "{terminal} is final");
        }
    }

    fn new_record() -> PlanRecord {
        PlanRecord::new(examples::plan_spec(), PlanState::Submitted)
    }

    /// Makes the moves to `states` in one write, as the Conductor does.
    fn write(record: &mut PlanRecord, states: &[PlanState], group: bool) {
        let moves_before = record.history.len();
        for &state in states {
            record.move_to(state, "crew", "a test", Utc::now()).unwrap();
        }
        if group {
            record.group_new_moves(moves_before);
        }
    }

    fn carried(messages: &[PlanTransitioned]) -> Vec<Vec<(u32, PlanState)>> {
        messages
            .iter()
            .map(|message| {
                message
                    .moves()
                    .map(|(seq, moved)| (seq, moved.to))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn one_write_makes_one_state_message_and_resending_groups_the_moves_alike() {
        use PlanState::*;
        let mut record = new_record();
        record.history.push(Transition {
            from: None,
            to: Submitted,
            by: "dave".into(),
            why: "goal submitted".into(),
            at: Utc::now(),
        });
        write(&mut record, &[Planned, Validating], false);
        record.group_new_moves(0);
        write(&mut record, &[Ready, Approved], true);
        write(&mut record, &[Applying], true);
        assert_eq!(record.message_ends, [3, 5, 6]);

        let every = record.state_messages(0);
        assert_eq!(
            carried(&every),
            [
                vec![(1, Submitted), (2, Planned), (3, Validating)],
                vec![(4, Ready), (5, Approved)],
                vec![(6, Applying)],
            ]
        );
        let ids: Vec<String> = every.iter().map(crate::Message::message_id).collect();
        assert_eq!(ids[1], format!("state:{}:5", record.plan.plan_id));
        assert_eq!(carried(&record.state_messages(3)), carried(&every[1..]));
        // A position inside a message sends that whole message, under its one id.
        assert_eq!(carried(&record.state_messages(4)), carried(&every[1..]));
        assert!(record.state_messages(6).is_empty());
        // Nothing moved: nothing to group.
        record.group_new_moves(6);
        assert_eq!(record.message_ends, [3, 5, 6]);
    }

    #[test]
    fn moves_an_older_conductor_sent_alone_stay_alone() {
        use PlanState::*;
        let mut record = new_record();
        write(&mut record, &[Planned, Validating], false);
        assert_eq!(
            carried(&record.state_messages(0)),
            [vec![(1, Planned)], vec![(2, Validating)]]
        );
        write(&mut record, &[Ready, Approved], true);
        assert_eq!(record.message_ends, [1, 2, 4]);
        assert_eq!(
            carried(&record.state_messages(0)),
            [
                vec![(1, Planned)],
                vec![(2, Validating)],
                vec![(3, Ready), (4, Approved)]
            ]
        );
    }

    #[test]
    fn ends_past_the_history_are_ignored() {
        use PlanState::*;
        let mut record = new_record();
        write(&mut record, &[Planned], false);
        record.message_ends = vec![0, 7, 3];
        assert_eq!(carried(&record.state_messages(0)), [vec![(1, Planned)]]);
    }

    #[test]
    fn a_move_is_recorded_with_who_and_why() {
        let now = Utc::now();
        let mut record = new_record();
        record
            .move_to(
                PlanState::Planned,
                "atlas",
                "planned from deploy 1.0.0",
                now,
            )
            .unwrap();
        assert_eq!(record.history[0].by, "atlas");
        let refused = record
            .move_to(PlanState::Applied, "forge", "skipping ahead", now)
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "a plan cannot move from PLANNED to APPLIED"
        );
        assert_eq!(record.state, PlanState::Planned);
    }
}
