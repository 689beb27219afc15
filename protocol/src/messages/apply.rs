//! ApprovalDecision, ApplyRequest and OpsEvent: from a person's decision to applied steps.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{PlanDigest, PlanId, SchemaVersion, codec::message};

/// A decision on a plan, accepted or refused, as the Conductor records it for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalDecision {
    pub schema_version: SchemaVersion,
    pub decision_id: Uuid,
    pub plan_id: PlanId,
    /// The digest the person saw and decided on.
    pub digest: PlanDigest,
    pub kind: DecisionKind,
    /// The approver identity, after mapping a Slack or GitHub user to it.
    pub approver: String,
    pub channel: DecisionChannel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub outcome: DecisionOutcome,
    /// The rule that refused the decision, when it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub decided_at: DateTime<Utc>,
}

message!(ApprovalDecision, "approval_decision", |decision| format!(
    "decision:{}",
    decision.decision_id
));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionKind {
    Approve,
    Reject,
    /// A policy owner lifts a soft-mandatory finding.
    Override,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionChannel {
    Cli,
    Slack,
    Github,
    /// Configured auto-approval after a passing validation.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionOutcome {
    Accepted,
    Refused,
}

/// A person's decision sent to the Conductor (request-reply on `crew.approval.request`);
/// every channel's decisions meet the same rules there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionRequest {
    pub schema_version: SchemaVersion,
    pub request_id: Uuid,
    pub plan_id: PlanId,
    pub kind: DecisionKind,
    pub who: String,
    pub channel: DecisionChannel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the person signed it; a signed decision older than a few minutes is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<DateTime<Utc>>,
    /// The approver's Ed25519 signature (their nkey, base64url) over
    /// [`Self::signed_payload`]; outside a demo installation the Conductor takes only signed
    /// decisions from the bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl DecisionRequest {
    /// What the approver's signature covers.
    pub fn signed_payload(&self) -> Vec<u8> {
        format!(
            "infracrew decision v1\nrequest {}\nplan {}\nkind {}\nwho {}\nreason {}\nissued {}",
            self.request_id,
            self.plan_id,
            // As JSON, so no text can fake a field boundary.
            serde_json::to_string(&self.kind).unwrap_or_default(),
            serde_json::to_string(&self.who).unwrap_or_default(),
            serde_json::to_string(&self.reason).unwrap_or_default(),
            self.issued_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default(),
        )
        .into_bytes()
    }

    /// Signs the decision with the approver's key, now.
    pub fn signed_by(mut self, signer: &crate::signing::Signer) -> Self {
        self.issued_at = Some(Utc::now());
        self.signature = Some(signer.sign(&self.signed_payload()));
        self
    }
}

message!(DecisionRequest, "decision_request", |request| format!(
    "decide:{}",
    request.request_id
));

/// The Conductor's answer to a DecisionRequest: what happened, or the exact rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DecisionReply {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    pub outcome: DecisionOutcome,
    pub message: String,
    /// The plan's state after the decision, when the plan exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::PlanState>,
}

message!(DecisionReply, "decision_reply", |reply| format!(
    "decided:{}:{}",
    reply.plan_id, reply.message
));

/// The moves of a plan's state machine that one write of its record made, as the Conductor
/// publishes them on `crew.plan.state`: one message per write, not per move, as what a stored
/// message costs the server is mostly per message, not per byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanTransitioned {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    /// Position of `transition` in the plan's history, from 1.
    pub seq: u32,
    /// The write's last move: where the plan is now.
    pub transition: crate::Transition,
    /// The moves the same write made before `transition`, oldest first, at the positions just
    /// before `seq`. (Since 1.1; a 1.0 reader sees the last move only.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<crate::Transition>,
}

impl PlanTransitioned {
    /// Every move the message carries, oldest first, each with its position in the history.
    pub fn moves(&self) -> impl Iterator<Item = (u32, &crate::Transition)> {
        let first = self.seq.saturating_sub(self.earlier.len() as u32);
        (first..).zip(self.earlier.iter().chain([&self.transition]))
    }
}

message!(PlanTransitioned, "plan_transitioned", |event| format!(
    "state:{}:{}",
    event.plan_id, event.seq
));

/// The Conductor's instruction to apply an approved plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ApplyRequest {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    /// Forge applies only when the plan's record says APPROVED with this digest.
    pub digest: PlanDigest,
    /// The revision of the environment lock; an older token than the lock's is refused.
    pub fencing_token: u64,
    pub approvers: Vec<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The Conductor's Ed25519 signature (nkey, base64url) over [`Self::signed_payload`].
    pub signature: String,
}

impl ApplyRequest {
    /// What the signature covers: every field that decides what Forge does, and until when.
    pub fn signed_payload(&self) -> Vec<u8> {
        format!(
            "infracrew apply request v1\nplan {}\ndigest {}\nfencing token {}\napprovers {}\nissued {}\nexpires {}",
            self.plan_id,
            self.digest,
            self.fencing_token,
            // As JSON, so no name can fake a list boundary.
            serde_json::Value::from(self.approvers.clone()),
            self.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        )
        .into_bytes()
    }

    /// Signs the request with the Conductor's key.
    pub fn signed_by(mut self, signer: &crate::signing::Signer) -> Self {
        self.signature = signer.sign(&self.signed_payload());
        self
    }
}

// The issue time is part of the id: a request published by anyone else cannot take the id of
// the Conductor's own, so it cannot make JetStream drop the real one as a duplicate.
message!(ApplyRequest, "apply_request", |request| format!(
    "apply:{}:{}:{}",
    request.plan_id,
    request.digest,
    request.issued_at.timestamp_nanos_opt().unwrap_or_default()
));

/// One step of an apply, as Forge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpsEvent {
    pub schema_version: SchemaVersion,
    pub plan_id: PlanId,
    pub digest: PlanDigest,
    /// Position of this event in its attempt, from 1.
    pub seq: u32,
    /// The delivery of the ApplyRequest this event belongs to, from 1: an apply picked up again
    /// after a crash numbers its events afresh without colliding with the first attempt's.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// When the ApplyRequest this event answers was issued: two requests for one plan (a
    /// resent one, or forged ones Forge refuses) each keep their own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_issued_at: Option<DateTime<Utc>>,
    pub kind: OpsEventKind,
    /// For `APPLY_REFUSED`: the check of Forge's gate that refused the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<GateCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
    pub driver: String,
    pub at: DateTime<Utc>,
    /// On the end of an apply or of a step whose start was not reported on its own (one that
    /// ends quickly reports its start with its end): when it started. Since schema 1.2 for
    /// an apply's end, 1.3 for a step's (`STEP_SUCCEEDED`, `STEP_FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

impl OpsEvent {
    /// Steps go to `crew.ops.step`, which people and the reviews read; the apply's start and
    /// end to `crew.ops.event`, which the Conductor reads too: it moves plans on those alone.
    pub fn subject(&self) -> &'static str {
        if self.kind.is_step() {
            crate::subjects::OPS_STEP
        } else {
            crate::subjects::OPS_EVENT
        }
    }
}

message!(OpsEvent, "ops_event", |event| format!(
    "ops:{}:{}:{}:{}:{}",
    event.plan_id,
    event.digest,
    event
        .request_issued_at
        .and_then(|at| at.timestamp_nanos_opt())
        .unwrap_or_default(),
    event.attempt,
    event.seq
));

fn first_attempt() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OpsEventKind {
    ApplyStarted,
    StepStarted,
    /// Progress inside a step: checking the image, starting replica n of m, healthy, ...
    StepProgress,
    StepSucceeded,
    StepFailed,
    ApplyDone,
    ApplyFailed,
    RolledBack,
    /// Forge refused the ApplyRequest (not approved, wrong digest, stale fencing token, ...).
    ApplyRefused,
}

impl OpsEventKind {
    /// A step inside an apply, as opposed to the apply's start, end or refusal, which move
    /// the plan.
    pub fn is_step(self) -> bool {
        matches!(
            self,
            Self::StepStarted | Self::StepProgress | Self::StepSucceeded | Self::StepFailed
        )
    }

    /// The end of an apply that ran: applied, failed or rolled back.
    pub fn ends_apply(self) -> bool {
        matches!(self, Self::ApplyDone | Self::ApplyFailed | Self::RolledBack)
    }

    /// The end of a step: succeeded or failed.
    pub fn ends_step(self) -> bool {
        matches!(self, Self::StepSucceeded | Self::StepFailed)
    }
}

/// The checks of Forge's gate, in the order it makes them; the first that fails refuses an
/// ApplyRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GateCheck {
    /// The request is signed by the Conductor's key.
    Signature,
    /// The request has not expired, unless its plan is APPLYING: the Conductor gives all the
    /// requests of one approval its expiry, so that apply started in time, and a request
    /// redelivered after its Forge died carries it on.
    Expiry,
    /// The plan's record exists, is APPROVED (or APPLYING) and names the request's digest.
    Plan,
    /// The lock on the plan's service is the plan's, at the request's fencing token.
    Lock,
    /// A build with the request's digest is recorded.
    Build,
}

impl GateCheck {
    /// In the order Forge makes them.
    pub const ALL: [GateCheck; 5] = [
        Self::Signature,
        Self::Expiry,
        Self::Plan,
        Self::Lock,
        Self::Build,
    ];

    /// The name on the wire (`refused_by`), also the label of Forge's refusal counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "SIGNATURE",
            Self::Expiry => "EXPIRY",
            Self::Plan => "PLAN",
            Self::Lock => "LOCK",
            Self::Build => "BUILD",
        }
    }
}

impl std::fmt::Display for GateCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_go_to_their_own_subject_and_the_rest_to_the_conductors() {
        use OpsEventKind::*;
        let mut event = crate::examples::ops_event();
        for (kind, subject) in [
            (ApplyStarted, crate::subjects::OPS_EVENT),
            (StepStarted, crate::subjects::OPS_STEP),
            (StepProgress, crate::subjects::OPS_STEP),
            (StepSucceeded, crate::subjects::OPS_STEP),
            (StepFailed, crate::subjects::OPS_STEP),
            (ApplyDone, crate::subjects::OPS_EVENT),
            (ApplyFailed, crate::subjects::OPS_EVENT),
            (RolledBack, crate::subjects::OPS_EVENT),
            (ApplyRefused, crate::subjects::OPS_EVENT),
        ] {
            event.kind = kind;
            assert_eq!(event.subject(), subject, "{kind:?}");
        }
    }

    #[test]
    fn a_gate_checks_name_is_its_wire_name() {
        for check in GateCheck::ALL {
            assert_eq!(
                serde_json::to_value(check).unwrap(),
                serde_json::Value::from(check.as_str())
            );
        }
    }
}
