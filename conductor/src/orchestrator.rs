//! The Conductor's work: each plan's state machine in `crew_plans` (every move with
//! compare-and-set, published on `crew.plan.state`), one change in flight per environment and
//! service (`crew_locks`), decisions through the approval rules, and the ApplyRequest.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use infracrew_bus::{Bus, HandlerError, Kv, KvError, Sent, Shutdown, TraceContext, Versioned};
use infracrew_protocol::{
    AgentRole, ApplyRequest, Approval, ApprovalDecision, BuildOutcome, BuildStatus,
    DecisionChannel, DecisionKind, DecisionOutcome, DecisionReply, DecisionRequest, DecodeError,
    FieldError, GateCheck, LockRecord, LockWaiter, Message, OpsEvent, OpsEventKind, PlanId,
    PlanRecord, PlanSpec, PlanState, SchemaVersion, Transition, decode, encode, lock_key,
    signing::{Signer, Verifier},
    subjects,
};

use crate::{
    approvals::{Accepted, Decision, Refusal},
    config::ConductorConfig,
    metrics::{ConductorMetrics, PlanCensus},
    replay::{RequestSource, SeenRequests},
    watch::CrewWatch,
};

/// How far a signed decision's issue time may be from now.
pub const SIGNED_DECISION_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// How the Conductor knows who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticity {
    /// A signature by the approver's configured key, or a verified Slack request.
    Verified,
    /// The request's word only (a demo installation).
    Unauthenticated,
}

/// Who the Conductor's own moves are recorded as.
const CONDUCTOR: &str = "conductor";
/// Compare-and-set tries before a busy record is left to redelivery.
const UPDATE_TRIES: usize = 8;
/// How recent a stalled plan's last move must be for the sweeper to publish its moves again:
/// well inside the streams' duplicate window (10 minutes by default), so a move that was
/// stored after all is not stored twice.
const REPUBLISH_WITHIN: chrono::Duration = chrono::Duration::minutes(5);

/// What the Conductor reads from its consumer, by subject.
#[derive(Debug)]
pub enum ConductorMessage {
    Plan(PlanSpec),
    Build(BuildStatus),
    Ops(OpsEvent),
}

impl infracrew_bus::Inbound for ConductorMessage {
    fn decode(subject: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        match subject {
            subjects::PLAN_PENDING => decode(payload).map(ConductorMessage::Plan),
            subjects::BUILD_STATUS => decode(payload).map(ConductorMessage::Build),
            subjects::OPS_EVENT => decode(payload).map(ConductorMessage::Ops),
            other => Err(DecodeError::Invalid {
                kind: "conductor input",
                errors: vec![FieldError {
                    path: String::new(),
                    message: format!("the Conductor does not read {other}"),
                }],
            }),
        }
    }

    /// A plan's messages are handled in the order they came; different plans at once.
    fn order_key(_subject: &str, payload: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct About {
            plan_id: PlanId,
        }
        serde_json::from_slice::<About>(payload)
            .ok()
            .map(|about| about.plan_id.to_string())
    }
}

/// The orchestrator shared by the consumer, the decision service and the sweeper.
#[derive(Debug)]
pub struct Conductor {
    pub bus: Bus,
    pub plans: Kv<PlanRecord>,
    pub locks: Kv<LockRecord>,
    pub config: ConductorConfig,
    /// This process, recorded as a lock's holder.
    pub instance: String,
    /// The crew's health, which gates approvals.
    pub crew: Arc<CrewWatch>,
    pub metrics: Arc<ConductorMetrics>,
    /// Signs every ApplyRequest; Forge applies only what it signed.
    pub signer: Arc<Signer>,
    /// The signed requests taken lately (CLI decisions, Slack's, GitHub's), shared with every
    /// replica, to refuse a copy.
    pub seen: SeenRequests,
    /// The records this process last wrote, for plans still moving: the next move starts
    /// from them instead of a read. Another writer's move makes one stale, which the
    /// compare-and-set finds. Shared with the handler that wrote it, not copied: the next
    /// move takes it back without a copy, as that handler is done by then.
    pub written: std::sync::Mutex<std::collections::HashMap<PlanId, Versioned<Arc<PlanRecord>>>>,
    /// The locks this process deleted, by key, with their deletions' revisions: a plan on a
    /// service deployed before takes the lock again from there in one write, without first
    /// trying it as never written and reading the deletion. Another writer's lock since
    /// fails that write, and the lock is read.
    pub lock_deletions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Plans the sweeper found finished: a finished plan never moves again, so later sweeps
    /// count it without reading it.
    pub finished: std::sync::Mutex<FinishedPlans>,
}

/// The plans the sweeper found finished, and how many sweeps there were. The bucket keeps
/// every plan ever made, so this grows with them: about 40 bytes a plan, kept by id, where
/// a key took about 70 more.
#[derive(Debug, Default)]
pub struct FinishedPlans {
    sweeps: u64,
    plans: std::collections::HashMap<PlanId, FinishedPlan>,
}

/// A finished plan's end state, when it got there, and the last sweep that listed it.
#[derive(Debug, Clone, Copy)]
struct FinishedPlan {
    state: PlanState,
    since: Option<DateTime<Utc>>,
    listed: u64,
}

/// What asking for a lock found.
enum LockAnswer {
    /// The plan holds the lock, under this fencing token.
    Holds(u64),
    /// Another live plan holds it: the lock as read.
    HeldBy(Versioned<LockRecord>),
}

/// Where a plan stands after asking to wait for a held lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InLine {
    /// In the lock's queue, or holding the lock: its release starts the plan.
    Queued,
    /// The queue is at `lock_queue_limit`: the sweeper asks again for the plan.
    QueueFull,
    /// No lock to wait for: its holder let go in between.
    Free,
}

/// Plans whose last write a Conductor keeps; past it the memory is let go and moves read.
const WRITTEN_KEPT: usize = 10_000;

/// Lock deletions a Conductor keeps; past it the memory is let go and locks are created as
/// ever.
const DELETIONS_KEPT: usize = 10_000;

fn retry(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(error.to_string())
}

fn lock_kept_changing(key: &str) -> HandlerError {
    HandlerError::Retry(format!(
        "the lock on {key} kept changing; trying again later"
    ))
}

impl Conductor {
    /// Handles one message from the consumer, on its `delivered`th delivery.
    pub async fn handle(
        &self,
        message: ConductorMessage,
        delivered: u64,
    ) -> Result<(), HandlerError> {
        let plan_id = match &message {
            ConductorMessage::Plan(plan) => plan.plan_id,
            ConductorMessage::Build(status) => status.plan_id,
            ConductorMessage::Ops(event) => event.plan_id,
        };
        match message {
            ConductorMessage::Plan(plan) => self.on_plan(plan, delivered).await,
            ConductorMessage::Build(status) => self.on_build(status).await,
            ConductorMessage::Ops(event) => self.on_ops(event).await,
        }?;
        // An earlier delivery may have written the record and died before its moves were
        // stored: publish them all again (their ids store each once).
        if delivered > 1
            && let Some(record) = self.plans.get(&plan_id.to_string()).await.map_err(retry)?
        {
            self.publish_moves(&record.value, 0).await?;
        }
        Ok(())
    }

    /// Reads, changes and writes a plan record with compare-and-set, publishing the moves
    /// `change` made. `change` returns whether there is anything to write.
    async fn update(
        &self,
        plan_id: PlanId,
        change: impl FnMut(&mut PlanRecord) -> bool,
    ) -> Result<Option<Arc<PlanRecord>>, HandlerError> {
        let (record, sent) = self.update_sending(plan_id, change).await?;
        self.bus.confirm(sent).await.map_err(retry)?;
        Ok(record)
    }

    /// `update`, returning the moves sent but not yet confirmed: the caller sends what
    /// follows the change beside them and awaits every ack in one round trip.
    async fn update_sending(
        &self,
        plan_id: PlanId,
        change: impl FnMut(&mut PlanRecord) -> bool,
    ) -> Result<(Option<Arc<PlanRecord>>, Vec<Sent>), HandlerError> {
        let written = lock_ignoring_poison(&self.written)
            .remove(&plan_id)
            .map(|held| Versioned {
                value: Arc::unwrap_or_clone(held.value),
                revision: held.revision,
            });
        self.update_from(plan_id, written, change).await
    }

    /// Keeps the record just written for the plan's next move, or lets it go once it ended.
    fn remember(&self, plan_id: PlanId, record: &Arc<PlanRecord>, revision: u64) {
        let mut written = lock_ignoring_poison(&self.written);
        if record.state.is_terminal() {
            written.remove(&plan_id);
            return;
        }
        let record = Versioned {
            value: Arc::clone(record),
            revision,
        };
        keep(&mut written, plan_id, record, WRITTEN_KEPT);
    }

    /// `update_sending`, starting from a record this handler already holds, which saves the
    /// read. A stale one costs a conflict and a read; a decision to change nothing is taken
    /// again on a fresh read, so it never rests on a stale record.
    async fn update_from(
        &self,
        plan_id: PlanId,
        mut known: Option<Versioned<PlanRecord>>,
        mut change: impl FnMut(&mut PlanRecord) -> bool,
    ) -> Result<(Option<Arc<PlanRecord>>, Vec<Sent>), HandlerError> {
        let key = plan_id.to_string();
        for _ in 0..UPDATE_TRIES {
            let (current, held) = match known.take() {
                Some(held) => (held, true),
                None => match self.plans.get(&key).await.map_err(retry)? {
                    Some(read) => (read, false),
                    None => return Ok((None, Vec::new())),
                },
            };
            let mut record = current.value;
            let moves_before = record.history.len();
            if !change(&mut record) {
                if held {
                    continue;
                }
                return Ok((Some(Arc::new(record)), Vec::new()));
            }
            record.group_new_moves(moves_before);
            match self.plans.update(&key, &record, current.revision).await {
                Ok(revision) => {
                    let record = Arc::new(record);
                    self.remember(plan_id, &record, revision);
                    let sent = self.send_moves(&record, moves_before).await?;
                    return Ok((Some(record), sent));
                }
                Err(KvError::Conflict { .. }) => continue,
                Err(error) => return Err(retry(error)),
            }
        }
        Err(HandlerError::Retry(format!(
            "plan {plan_id} kept changing; trying again later"
        )))
    }

    /// Publishes the moves from `from` on, in the messages they were first grouped in: sent
    /// together, then their acks awaited (one round trip for them all).
    async fn publish_moves(&self, record: &PlanRecord, from: usize) -> Result<(), HandlerError> {
        let sent = self.send_moves(record, from).await?;
        self.bus.confirm(sent).await.map_err(retry)?;
        Ok(())
    }

    async fn send_moves(
        &self,
        record: &PlanRecord,
        from: usize,
    ) -> Result<Vec<Sent>, HandlerError> {
        let mut sent = Vec::new();
        for message in record.state_messages(from) {
            sent.push(
                self.bus
                    .send(subjects::PLAN_STATE, &message)
                    .await
                    .map_err(retry)?,
            );
        }
        Ok(sent)
    }

    /// A new plan: recorded as PLANNED, then started if its target is free.
    ///
    /// The paths off the common one (a redelivery, a copy, a lock let go while the plan
    /// joined its queue) are awaited boxed: they are the deepest, and inline they would size
    /// the future of every plan in hand for them.
    async fn on_plan(&self, plan: PlanSpec, delivered: u64) -> Result<(), HandlerError> {
        let playbook = format!(
            "planned from playbook {} {}",
            plan.playbook.name, plan.playbook.version
        );
        let mut record = PlanRecord {
            history: vec![
                Transition {
                    from: None,
                    to: PlanState::Submitted,
                    by: plan.requested_by.clone(),
                    why: "goal submitted".into(),
                    at: plan.created_at,
                },
                Transition {
                    from: Some(PlanState::Submitted),
                    to: PlanState::Planned,
                    by: "atlas".into(),
                    why: playbook,
                    at: plan.created_at,
                },
            ],
            trace_parent: TraceContext::current().map(|trace| trace.to_string()),
            ..PlanRecord::new(plan, PlanState::Planned)
        };
        let plan_id = record.plan.plan_id;
        // A redelivered plan carries on where the first delivery stopped. (A first delivery
        // finds no record: were the plan sent twice, the create below finds the first.)
        if delivered > 1
            && self
                .plans
                .get(&plan_id.to_string())
                .await
                .map_err(retry)?
                .is_some()
        {
            return Box::pin(self.try_start(plan_id)).await;
        }
        // The target's lock is taken first, so a plan whose target is free is recorded
        // routed in one write. A crash in between leaves a lock whose plan has no record:
        // the redelivered plan finds the lock its own, and the sweeper frees one whose plan
        // never came back once its lease ran out.
        let key = lock_key(&record.plan.environment, &record.plan.service);
        let held_by = match self.acquire(&key, plan_id).await? {
            LockAnswer::Holds(token) => {
                if !route(&mut record, &key, token) {
                    return Err(HandlerError::Reject(format!(
                        "plan {plan_id} cannot move from {} to VALIDATING",
                        record.state
                    )));
                }
                None
            }
            LockAnswer::HeldBy(lock) => {
                record.waiting_for_lock = Some(key.clone());
                Some(lock)
            }
        };
        record.group_new_moves(0);
        let revision = match self.plans.create(&plan_id.to_string(), &record).await {
            Ok(revision) => revision,
            Err(KvError::AlreadyExists { .. }) => {
                return Box::pin(self.on_recorded_plan(plan_id)).await;
            }
            Err(error) => return Err(retry(error)),
        };
        let record = Arc::new(record);
        self.remember(plan_id, &record, revision);
        let mut sent = self.send_moves(&record, 0).await?;
        if held_by.is_none() {
            sent.push(
                self.bus
                    .send(subjects::PLAN_ROUTED, &record.plan)
                    .await
                    .map_err(retry)?,
            );
            tracing::info!(plan = %plan_id, lock = %key, "routed to forge");
        }
        self.bus.confirm(sent).await.map_err(retry)?;
        if let Some(lock) = held_by
            && self
                .wait_in_line(&key, LockWaiter::of(&record.plan), lock)
                .await?
                == InLine::Free
        {
            // The holder let go in between: the lock is free to take.
            Box::pin(self.try_start(plan_id)).await?;
        }
        Ok(())
    }

    /// A new plan whose record is already there: another replica took the same plan between
    /// the read and the write, or this write landed and its answer was lost in a failover.
    /// Either way the moves of the record there are published (their ids store each once),
    /// since in the second case nobody else will.
    async fn on_recorded_plan(&self, plan_id: PlanId) -> Result<(), HandlerError> {
        let existing = self.plans.get(&plan_id.to_string()).await;
        if let Some(existing) = existing.map_err(retry)? {
            self.publish_moves(&existing.value, 0).await?;
            // A copy of a finished plan (read again when new plans moved to their own
            // consumer, or sent again after the duplicate window) took its target's lock in
            // `on_plan`, which no move of the plan would let go.
            if existing.value.state.is_terminal() {
                self.release(&existing.value).await?;
            }
        }
        self.try_start(plan_id).await
    }

    /// Takes the target's lock and routes the plan to Forge, or queues the plan on the lock.
    async fn try_start(&self, plan_id: PlanId) -> Result<(), HandlerError> {
        for _ in 0..UPDATE_TRIES {
            let Some(record) = self.plans.get(&plan_id.to_string()).await.map_err(retry)? else {
                return Ok(());
            };
            if record.value.state != PlanState::Planned {
                return Ok(());
            }
            let key = lock_key(&record.value.plan.environment, &record.value.plan.service);
            let lock = match self.acquire(&key, plan_id).await? {
                LockAnswer::Holds(token) => {
                    return self.route_holder(plan_id, record, &key, token).await;
                }
                LockAnswer::HeldBy(lock) => lock,
            };
            let waiter = LockWaiter::of(&record.value.plan);
            let marked = self
                .update(plan_id, |record| {
                    let waiting = record.state == PlanState::Planned
                        && record.waiting_for_lock.as_deref() != Some(key.as_str());
                    if waiting {
                        record.waiting_for_lock = Some(key.clone());
                    }
                    waiting
                })
                .await?;
            // Handed the lock and routed, or superseded, since it was read: nothing to wait for.
            if marked.is_none_or(|record| record.state != PlanState::Planned) {
                return Ok(());
            }
            if self.wait_in_line(&key, waiter, lock).await? != InLine::Free {
                return Ok(());
            }
        }
        Err(HandlerError::Retry(format!(
            "the lock on plan {plan_id}'s target kept changing hands; trying again later"
        )))
    }

    /// Routes a PLANNED plan that holds its target's lock to Forge.
    async fn route_holder(
        &self,
        plan_id: PlanId,
        record: Versioned<PlanRecord>,
        key: &str,
        token: u64,
    ) -> Result<(), HandlerError> {
        let (routed, mut sent) = self
            .update_from(plan_id, Some(record), |record| {
                record.state == PlanState::Planned && route(record, key, token)
            })
            .await?;
        if let Some(record) = routed.filter(|record| record.state == PlanState::Validating) {
            sent.push(
                self.bus
                    .send(subjects::PLAN_ROUTED, &record.plan)
                    .await
                    .map_err(retry)?,
            );
            tracing::info!(plan = %plan_id, lock = %key, token, "routed to forge");
        }
        self.bus.confirm(sent).await.map(drop).map_err(retry)
    }

    /// Whether `plan_id` holds the lock now (taking it when free or abandoned), or who does.
    async fn acquire(&self, key: &str, plan_id: PlanId) -> Result<LockAnswer, HandlerError> {
        let now = Utc::now();
        // A lock is taken in one write, and its fencing token is one more than the revision
        // that write replaces (0 for a key never written, else the last holder's release or
        // record): every later holder's token is higher than any earlier one's.
        // Most locks are free: try taking one before reading it.
        let mut free = true;
        for _ in 0..UPDATE_TRIES {
            let read = if std::mem::take(&mut free) {
                None
            } else {
                self.locks.get(key).await.map_err(retry)?
            };
            match read {
                Some(lock) if lock.value.plan_id == plan_id => {
                    return Ok(LockAnswer::Holds(lock.value.token));
                }
                Some(lock) if !self.abandoned(&lock.value, now) => {
                    return Ok(LockAnswer::HeldBy(lock));
                }
                Some(lock) => {
                    let token = lock.revision + 1;
                    // The plans that waited for the abandoned holder wait for this one.
                    let waiting = lock
                        .value
                        .waiting
                        .into_iter()
                        .filter(|waiter| waiter.plan_id != plan_id)
                        .collect();
                    match self
                        .locks
                        .update(key, &self.held_by(plan_id, token, waiting), lock.revision)
                        .await
                    {
                        Ok(_) => return Ok(LockAnswer::Holds(token)),
                        Err(KvError::Conflict { .. }) => continue,
                        Err(error) => return Err(retry(error)),
                    }
                }
                None => {
                    let take = |replaced: u64| self.held_by(plan_id, replaced + 1, Vec::new());
                    let deletion = lock_ignoring_poison(&self.lock_deletions).remove(key);
                    let taken = match deletion {
                        Some(deletion) => self.locks.create_over(key, deletion, take).await,
                        None => self.locks.create_with(key, take).await,
                    };
                    match taken {
                        Ok(taken) => return Ok(LockAnswer::Holds(taken.value.token)),
                        Err(KvError::AlreadyExists { .. } | KvError::Conflict { .. }) => continue,
                        Err(error) => return Err(retry(error)),
                    }
                }
            }
        }
        Err(lock_kept_changing(key))
    }

    /// The lock as `plan_id` takes it, from now, with the plans still waiting behind it.
    fn held_by(&self, plan_id: PlanId, token: u64, waiting: Vec<LockWaiter>) -> LockRecord {
        let now = Utc::now();
        LockRecord {
            plan_id,
            holder: self.instance.clone(),
            token,
            acquired_at: now,
            renewed_at: now,
            waiting,
        }
    }

    fn abandoned(&self, lock: &LockRecord, now: DateTime<Utc>) -> bool {
        let lease = chrono::Duration::seconds(self.config.lock_lease_seconds as i64);
        lock.renewed_at + lease < now
    }

    /// Renews a moving plan's lease on its lock with the time of the renewal. Plans joining
    /// the queue rewrite the lock as well, so a renewal that meets one reads the lock again
    /// and renews that, as long as the same plan holds it under the same token.
    async fn renew(&self, key: &str, mut lock: Versioned<LockRecord>) -> Result<(), HandlerError> {
        let (holder, token) = (lock.value.plan_id, lock.value.token);
        for _ in 0..UPDATE_TRIES {
            let renewed = LockRecord {
                renewed_at: Utc::now(),
                ..lock.value
            };
            match self.locks.update(key, &renewed, lock.revision).await {
                Ok(_) => return Ok(()),
                Err(KvError::Conflict { .. }) => {}
                Err(error) => return Err(retry(error)),
            }
            match self.locks.get(key).await.map_err(retry)? {
                Some(read) if read.value.plan_id == holder && read.value.token == token => {
                    lock = read;
                }
                // Released or handed on in between: not this plan's lease to renew.
                _ => return Ok(()),
            }
        }
        Err(HandlerError::Retry(format!(
            "the lock on {key} kept changing; its lease was not renewed"
        )))
    }

    /// Puts the plan in the queue of the lock on `key`, in order of age, starting from the
    /// lock as `acquire` read it.
    async fn wait_in_line(
        &self,
        key: &str,
        waiter: LockWaiter,
        read: Versioned<LockRecord>,
    ) -> Result<InLine, HandlerError> {
        let mut known = Some(read);
        for _ in 0..UPDATE_TRIES {
            let lock = match known.take() {
                Some(lock) => lock,
                None => match self.locks.get(key).await.map_err(retry)? {
                    Some(lock) => lock,
                    None => return Ok(InLine::Free),
                },
            };
            let queued = lock.value.plan_id == waiter.plan_id
                || lock
                    .value
                    .waiting
                    .iter()
                    .any(|queued| queued.plan_id == waiter.plan_id);
            if queued {
                return Ok(InLine::Queued);
            }
            if lock.value.waiting.len() >= self.config.lock_queue_limit {
                tracing::debug!(
                    plan = %waiter.plan_id,
                    lock = %key,
                    queued = lock.value.waiting.len(),
                    "the lock's queue is full; the plan waits for the sweeper to queue it"
                );
                return Ok(InLine::QueueFull);
            }
            let mut waiting = lock.value.waiting.clone();
            waiting.push(waiter.clone());
            waiting.sort_by_key(|waiter| (waiter.since, waiter.plan_id));
            let marked = LockRecord {
                waiting,
                ..lock.value
            };
            match self.locks.update(key, &marked, lock.revision).await {
                Ok(_) => return Ok(InLine::Queued),
                Err(KvError::Conflict { .. }) => continue,
                Err(error) => return Err(retry(error)),
            }
        }
        Err(lock_kept_changing(key))
    }

    /// Releases the plan's lock: to the plan that waited longest for it, if one still waits.
    async fn release(&self, record: &PlanRecord) -> Result<(), HandlerError> {
        let key = lock_key(&record.plan.environment, &record.plan.service);
        for _ in 0..UPDATE_TRIES {
            let Some(lock) = self.locks.get(&key).await.map_err(retry)? else {
                return Ok(());
            };
            if lock.value.plan_id != record.plan.plan_id || self.pass_on(&key, lock).await? {
                return Ok(());
            }
        }
        Err(lock_kept_changing(&key))
    }

    /// Hands the lock to the first plan in its queue that still waits, in the one write that
    /// takes it from its holder (so a crash never loses the queue), and routes that plan; or
    /// deletes a lock no plan waits for. False when the lock changed since it was read.
    async fn pass_on(&self, key: &str, lock: Versioned<LockRecord>) -> Result<bool, HandlerError> {
        let mut queue = lock.value.waiting.into_iter();
        while let Some(waiter) = queue.next() {
            let Some(next) = self
                .plans
                .get(&waiter.plan_id.to_string())
                .await
                .map_err(retry)?
                .filter(|next| next.value.state == PlanState::Planned)
            else {
                continue;
            };
            // One more than the revision replaced, as when a lock is taken.
            let token = lock.revision + 1;
            let handed = self.held_by(waiter.plan_id, token, queue.collect());
            return match self.locks.update(key, &handed, lock.revision).await {
                Ok(_) => {
                    // Boxed: a waiting plan is the rare case, and every plan's end comes
                    // through here.
                    Box::pin(self.route_holder(waiter.plan_id, next, key, token)).await?;
                    Ok(true)
                }
                Err(KvError::Conflict { .. }) => Ok(false),
                Err(error) => Err(retry(error)),
            };
        }
        match self.locks.delete(key, lock.revision).await {
            Ok(deletion) => {
                let mut deletions = lock_ignoring_poison(&self.lock_deletions);
                keep(&mut deletions, key.to_owned(), deletion, DELETIONS_KEPT);
                Ok(true)
            }
            Err(KvError::Conflict { .. }) => Ok(false),
            Err(error) => Err(retry(error)),
        }
    }

    /// Forge's build: READY, BLOCKED or NO_CHANGE, and auto-approval where configured.
    async fn on_build(&self, status: BuildStatus) -> Result<(), HandlerError> {
        let now = Utc::now();
        let rules = &self.config.approvals;
        let (record, mut sent) = self
            .update_sending(status.plan_id, |record| {
                if record.state != PlanState::Validating {
                    return false;
                }
                let (next, why) = match status.outcome {
                    BuildOutcome::Ready => (
                        PlanState::Ready,
                        format!("validated: {}", summary_line(&status)),
                    ),
                    BuildOutcome::Blocked => (
                        PlanState::Blocked,
                        format!("blocked: {}", blocking(&status)),
                    ),
                    BuildOutcome::NoChange => (PlanState::NoChange, "nothing to change".to_owned()),
                };
                record.build = Some(status.clone());
                record.decision_opened_at = Some(now);
                if record.move_to(next, "forge", why, now).is_err() {
                    return false;
                }
                if rules.auto_approves(record) {
                    record.approvals.push(Approval {
                        approver: "auto".into(),
                        channel: DecisionChannel::Auto,
                        digest: status.digest.clone(),
                        at: now,
                        unauthenticated: false,
                    });
                    let why = format!(
                        "auto-approved: validation passed and {} approves automatically",
                        record.plan.environment
                    );
                    let _ = record.move_to(PlanState::Approved, CONDUCTOR, why, now);
                }
                true
            })
            .await?;
        // An approved plan's ApplyRequest goes with its moves. (A redelivered build finds the
        // plan APPROVED and sends it again: the first may be what was lost.)
        if let Some(record) = &record
            && record.state == PlanState::Approved
            && let Some(request) = self.apply_request(record)
        {
            sent.push(
                self.bus
                    .send(subjects::APPLY_REQUEST, &request)
                    .await
                    .map_err(retry)?,
            );
        }
        self.bus.confirm(sent).await.map_err(retry)?;
        match record {
            Some(record) if record.state == PlanState::NoChange => self.release(&record).await,
            _ => Ok(()),
        }
    }

    /// Forge's steps: APPLYING, then APPLIED, FAILED or ROLLED_BACK; the lock goes with the end.
    async fn on_ops(&self, event: OpsEvent) -> Result<(), HandlerError> {
        // Steps move no plan: they are Forge's report to people and the reviews, on
        // crew.ops.step, which the Conductor does not read. One here came from an older Forge.
        if event.kind.is_step() {
            return Ok(());
        }
        // A request not signed by the Conductor's key is not one it sent: its refusal ends
        // nothing (a plan the Conductor approved gets its own requests).
        if event.kind == OpsEventKind::ApplyRefused
            && event.refused_by == Some(GateCheck::Signature)
        {
            tracing::warn!(plan = %event.plan_id, reason = %event.message, "Forge refused a request the Conductor did not sign; the plan does not move");
            return Ok(());
        }
        let now = Utc::now();
        let record = self
            .update(event.plan_id, |record| {
                if record.digest() != Some(&event.digest) || record.state.is_terminal() {
                    return false;
                }
                let end = match event.kind {
                    OpsEventKind::ApplyDone => PlanState::Applied,
                    OpsEventKind::ApplyFailed => PlanState::Failed,
                    // A refusal ends only an apply the Conductor asked for: a plan still
                    // waiting for its decision stays as it is.
                    OpsEventKind::ApplyRefused
                        if matches!(record.state, PlanState::Approved | PlanState::Applying) =>
                    {
                        PlanState::Failed
                    }
                    OpsEventKind::ApplyRefused => return false,
                    OpsEventKind::RolledBack => PlanState::RolledBack,
                    OpsEventKind::ApplyStarted => PlanState::Applying,
                    OpsEventKind::StepStarted
                    | OpsEventKind::StepProgress
                    | OpsEventKind::StepSucceeded
                    | OpsEventKind::StepFailed => return false,
                };
                // An apply that ended quickly reports its start with its end (`started_at`),
                // and a start can be lost: the plan moves through APPLYING in the same write.
                if record.state == PlanState::Approved && event.kind.ends_apply() {
                    let started = event.started_at.unwrap_or(event.at);
                    let _ = record.move_to(PlanState::Applying, "forge", "apply started", started);
                }
                record.state != end
                    && record
                        .move_to(end, "forge", event.message.clone(), now)
                        .is_ok()
            })
            .await?;
        match record {
            Some(record) if record.state.is_terminal() => self.release(&record).await,
            _ => Ok(()),
        }
    }

    async fn send_apply(&self, record: &PlanRecord) -> Result<(), HandlerError> {
        if let Some(request) = self.apply_request(record) {
            self.bus
                .publish(subjects::APPLY_REQUEST, &request)
                .await
                .map_err(retry)?;
        }
        Ok(())
    }

    /// When Forge's time to start an approved plan's apply runs out: the approval's moment
    /// and `apply_request_ttl_seconds`.
    fn start_deadline(&self, record: &PlanRecord) -> Option<DateTime<Utc>> {
        let approved = record
            .history
            .iter()
            .rev()
            .find(|moved| moved.to == PlanState::Approved)?;
        Some(approved.at + chrono::Duration::seconds(self.config.apply_request_ttl_seconds as i64))
    }

    /// The signed instruction to apply an approved plan's change, if it has one. Every request
    /// for one approval, resent copies too, expires at its start deadline.
    fn apply_request(&self, record: &PlanRecord) -> Option<ApplyRequest> {
        let digest = record.digest().cloned()?;
        let expires_at = self.start_deadline(record)?;
        let now = Utc::now();
        let request = ApplyRequest {
            schema_version: SchemaVersion::CURRENT,
            plan_id: record.plan.plan_id,
            digest,
            fencing_token: record.lock_token.unwrap_or_default(),
            approvers: record
                .approvals
                .iter()
                .map(|approval| approval.approver.clone())
                .collect(),
            issued_at: now,
            expires_at,
            signature: String::new(),
        }
        .signed_by(&self.signer);
        Some(request)
    }

    /// The plan that `text` names: a whole id or a unique prefix of one.
    pub async fn resolve_plan(&self, text: &str) -> Result<PlanId, String> {
        if let Ok(plan_id) = text.trim().parse() {
            return Ok(plan_id);
        }
        let keys = self
            .plans
            .keys()
            .await
            .map_err(|error| format!("the plans cannot be read now ({error}); try again"))?;
        PlanId::resolve(text, keys.iter().map(String::as_str)).map_err(|error| error.to_string())
    }

    /// The plan's record, if there is one.
    pub async fn plan(&self, plan_id: PlanId) -> Result<Option<PlanRecord>, String> {
        self.plans
            .get(&plan_id.to_string())
            .await
            .map(|record| record.map(|r| r.value))
            .map_err(|error| format!("the plan cannot be read now ({error}); try again"))
    }

    /// The trace a plan's later work continues: the one that created it, or a new one.
    fn trace_of(record: &PlanRecord) -> TraceContext {
        record
            .trace_parent
            .as_deref()
            .and_then(TraceContext::parse)
            .map_or_else(TraceContext::root, |parent| parent.child())
    }

    /// Refuses an approval that no live agent could carry out: a ready Forge for a plan
    /// waiting for its decision, and a ready Sentinel too while it is still validated.
    fn health_gate(
        &self,
        record: &PlanRecord,
        kind: DecisionKind,
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        if kind != DecisionKind::Approve {
            return Ok(());
        }
        let needed: &[AgentRole] = match record.state {
            PlanState::Ready | PlanState::AwaitingApproval => &[AgentRole::Forge],
            PlanState::Submitted | PlanState::Planned | PlanState::Validating => {
                &[AgentRole::Sentinel, AgentRole::Forge]
            }
            _ => &[],
        };
        needed
            .iter()
            .try_for_each(|agent| self.crew.gate(*agent, now))
            .map_err(Refusal::CrewUnhealthy)
    }

    /// Who sent a decision that came over the bus: the approver whose configured key signed
    /// it, or, in a demo installation only, whoever the request names (recorded as
    /// unauthenticated). The refusal says what is missing.
    pub async fn authenticate(
        &self,
        mut request: DecisionRequest,
        now: DateTime<Utc>,
    ) -> Result<(DecisionRequest, Authenticity), String> {
        // Whatever it claims, a decision from the bus is the CLI's: Slack's come to the
        // endpoint, verified there.
        request.channel = DecisionChannel::Cli;
        let who = request.who.clone();
        let Some(signature) = request.signature.clone() else {
            if self.config.demo {
                tracing::warn!(who, plan = %request.plan_id, "an unsigned decision, taken on its word: this is a demo installation");
                return Ok((request, Authenticity::Unauthenticated));
            }
            return Err(format!(
                "an unsigned decision is taken only in a demo installation; sign it with {who}'s key: crew approve <plan> --as {who} --key <{who}'s seed file>"
            ));
        };
        let key = self.config.approver_keys.get(&who).ok_or_else(|| {
            format!(
                "no key is configured for {who}: add {who} = \"<public key>\" under [approver_keys] in the Conductor's configuration (`crew keys --approver {who}` makes a pair)"
            )
        })?;
        let verifier = Verifier::from_public_key(key)
            .map_err(|error| format!("the key configured for {who} is {error}"))?;
        verifier
            .verify(&request.signed_payload(), &signature)
            .map_err(|error| format!("the decision is not {who}'s: {error}"))?;
        let issued = request
            .issued_at
            .ok_or("a signed decision must say when it was issued")?;
        if (now - issued).abs()
            > chrono::Duration::from_std(SIGNED_DECISION_WINDOW).unwrap_or_default()
        {
            return Err(format!(
                "the signed decision was issued at {issued}, more than {} minutes from now; sign a new one",
                SIGNED_DECISION_WINDOW.as_secs() / 60
            ));
        }
        let id = request.request_id.to_string();
        match self.seen.first_time(RequestSource::Decision, &id).await {
            Ok(true) => {}
            Ok(false) => {
                return Err("this exact decision was already received; a replay is refused".into());
            }
            Err(error) => return Err(error.to_string()),
        }
        Ok((request, Authenticity::Verified))
    }

    /// The decision of a person a chat or review tool vouched for (Slack's signed request,
    /// GitHub's signed event), answered as the line they are shown.
    pub async fn decide_for(
        &self,
        who: &str,
        channel: DecisionChannel,
        plan_id: PlanId,
        kind: DecisionKind,
        reason: Option<String>,
    ) -> String {
        let reply = self
            .decide(
                DecisionRequest {
                    schema_version: SchemaVersion::CURRENT,
                    request_id: uuid::Uuid::new_v4(),
                    plan_id,
                    kind,
                    who: who.to_owned(),
                    channel,
                    reason,
                    issued_at: None,
                    signature: None,
                },
                Authenticity::Verified,
            )
            .await;
        let short = &plan_id.to_string()[..8];
        match reply.outcome {
            DecisionOutcome::Accepted => {
                format!(":white_check_mark: Plan {short}: {}", reply.message)
            }
            DecisionOutcome::Refused => {
                format!(":no_entry: Refused for plan {short}: {}", reply.message)
            }
        }
    }

    /// A person's decision, under the approval rules; the reply says what happened or why not.
    /// It runs in the plan's trace, so its moves and the ApplyRequest can be followed with it.
    pub async fn decide(
        &self,
        request: DecisionRequest,
        authenticity: Authenticity,
    ) -> DecisionReply {
        let trace = match self.plans.get(&request.plan_id.to_string()).await {
            Ok(Some(current)) => Self::trace_of(&current.value),
            _ => TraceContext::root(),
        };
        trace
            .scope(self.decide_in_trace(request, authenticity))
            .await
    }

    async fn decide_in_trace(
        &self,
        request: DecisionRequest,
        authenticity: Authenticity,
    ) -> DecisionReply {
        let decision = Decision {
            kind: request.kind,
            who: request.who.clone(),
            channel: request.channel,
            reason: request.reason.clone(),
            authenticated: authenticity == Authenticity::Verified,
        };
        let now = Utc::now();
        let mut verdict = None;
        let updated = self
            .update(request.plan_id, |record| {
                let result = self
                    .health_gate(record, decision.kind, now)
                    .and_then(|()| self.config.approvals.decide(record, &decision, now));
                let write = match &result {
                    Ok(Accepted::Approved { approvers }) => record
                        .move_to(
                            PlanState::Approved,
                            &decision.who,
                            format!("approved by {}", approvers.join(", ")),
                            now,
                        )
                        .is_ok(),
                    Ok(Accepted::Counted { .. }) => {
                        if record.state == PlanState::Ready {
                            let _ = record.move_to(
                                PlanState::AwaitingApproval,
                                &decision.who,
                                "first approval counted",
                                now,
                            );
                        }
                        true
                    }
                    Ok(Accepted::Rejected) => {
                        let why = decision.reason.clone().unwrap_or_else(|| "rejected".into());
                        record
                            .move_to(PlanState::Rejected, &decision.who, why, now)
                            .is_ok()
                    }
                    Ok(Accepted::Overridden { rules }) => {
                        record.decision_opened_at = Some(now);
                        record
                            .move_to(
                                PlanState::Ready,
                                &decision.who,
                                format!("overrode {}", rules.join(", ")),
                                now,
                            )
                            .is_ok()
                    }
                    Err(_) => false,
                };
                verdict = Some(result);
                write
            })
            .await;
        let reply = |outcome, message: String, state| DecisionReply {
            schema_version: SchemaVersion::CURRENT,
            plan_id: request.plan_id,
            outcome,
            message,
            state,
        };
        let record = match updated {
            Ok(Some(record)) => record,
            Ok(None) => {
                return reply(
                    DecisionOutcome::Refused,
                    format!("there is no plan {}", request.plan_id),
                    None,
                );
            }
            Err(error) => {
                return reply(
                    DecisionOutcome::Refused,
                    format!("the decision could not be recorded: {error}; try again"),
                    None,
                );
            }
        };
        if let Some(Ok(accepted)) = &verdict {
            self.metrics.decided(accepted, &record, now);
        }
        let (outcome, message) = match &verdict {
            Some(Ok(accepted)) => (DecisionOutcome::Accepted, accepted.to_string()),
            Some(Err(refusal)) => (DecisionOutcome::Refused, refusal.to_string()),
            None => (
                DecisionOutcome::Refused,
                "the decision was not judged".to_owned(),
            ),
        };
        let audit = ApprovalDecision {
            schema_version: SchemaVersion::CURRENT,
            decision_id: request.request_id,
            plan_id: request.plan_id,
            digest: record.digest().cloned().unwrap_or_else(|| {
                infracrew_protocol::PlanDigest::of_value(&serde_json::Value::Null)
            }),
            kind: request.kind,
            approver: request.who.clone(),
            channel: request.channel,
            reason: request.reason.clone(),
            outcome,
            refusal: (outcome == DecisionOutcome::Refused).then(|| message.clone()),
            decided_at: now,
        };
        if let Err(error) = self.bus.publish(subjects::APPROVAL_DECIDED, &audit).await {
            tracing::error!(%error, "the decision's audit record was not published");
        }
        let followed = match &verdict {
            Some(Ok(Accepted::Approved { .. })) => self.send_apply(&record).await,
            Some(Ok(Accepted::Rejected)) => self.release(&record).await,
            _ => Ok(()),
        };
        if let Err(error) = followed {
            tracing::error!(%error, plan = %request.plan_id, "following up a decision failed; the sweeper will retry");
        }
        reply(outcome, message, Some(record.state))
    }

    /// Answers decisions on `crew.approval.request` until shutdown; replicas share the load.
    pub async fn serve_decisions(self: Arc<Self>, shutdown: Shutdown) {
        let mut requests = match self
            .bus
            .client()
            .queue_subscribe(subjects::APPROVAL_REQUEST, "conductor".into())
            .await
        {
            Ok(requests) => requests,
            Err(error) => {
                tracing::error!(%error, "cannot take decisions on {}", subjects::APPROVAL_REQUEST);
                return;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                message = requests.next() => match message { Some(message) => message, None => return },
            };
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let refused = |plan_id, message| DecisionReply {
                schema_version: SchemaVersion::CURRENT,
                plan_id,
                outcome: DecisionOutcome::Refused,
                message,
                state: None,
            };
            let reply = match decode::<DecisionRequest>(&message.payload) {
                Ok(request) => {
                    let plan_id = request.plan_id;
                    match self.authenticate(request, Utc::now()).await {
                        Ok((request, authenticity)) => self.decide(request, authenticity).await,
                        Err(reason) => {
                            tracing::warn!(plan = %plan_id, %reason, "a decision refused");
                            refused(plan_id, reason)
                        }
                    }
                }
                Err(error) => DecisionReply {
                    schema_version: SchemaVersion::CURRENT,
                    plan_id: PlanId(uuid::Uuid::nil()),
                    outcome: DecisionOutcome::Refused,
                    message: format!("the decision request is invalid: {error}"),
                    state: None,
                },
            };
            if let Ok(bytes) = encode(&reply) {
                let _ = self.bus.client().publish(reply_to, bytes.into()).await;
            }
        }
    }

    /// Every few seconds: expire plans whose approval window closed, release locks whose plan
    /// ended, renew the others, and start plans whose lock came free.
    pub async fn sweep(self: Arc<Self>, shutdown: Shutdown) {
        let mut ticker =
            tokio::time::interval(std::time::Duration::from_secs(self.config.sweep_seconds));
        // A sweep slowed by a failing bus is not followed by the ticks it missed at once.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(error) = self.sweep_once().await {
                tracing::warn!(%error, "sweep interrupted");
            }
        }
    }

    async fn sweep_once(&self) -> Result<(), HandlerError> {
        // Locks first, so a long look at the plans never lets a live plan's lease run out.
        let queued = self.sweep_locks().await?;
        let now = Utc::now();
        // Put back however the sweep ends: one that fails part way must not leave the next
        // to read every finished plan again.
        let mut finished = std::mem::take(&mut *lock_ignoring_poison(&self.finished));
        let census = self.sweep_plans(&queued, &mut finished, now).await;
        *lock_ignoring_poison(&self.finished) = finished;
        self.metrics.census(&census?, now);
        Ok(())
    }

    /// Counts every plan, and expires, resends or starts those that need it.
    async fn sweep_plans(
        &self,
        queued: &std::collections::HashSet<PlanId>,
        finished: &mut FinishedPlans,
        now: DateTime<Utc>,
    ) -> Result<PlanCensus, HandlerError> {
        let mut census = PlanCensus::default();
        finished.sweeps += 1;
        let sweep = finished.sweeps;
        for plan_id in self.listed_plans().await? {
            if let Some(known) = finished.plans.get_mut(&plan_id) {
                known.listed = sweep;
                census.count_state(known.state, known.since);
                continue;
            }
            let key = plan_id.to_string();
            let Some(record) = self.plans.get(&key).await.map_err(retry)?.map(|r| r.value) else {
                continue;
            };
            census.count(&record);
            if record.state.is_terminal() {
                let ended = FinishedPlan {
                    state: record.state,
                    since: record.history.last().map(|last| last.at),
                    listed: sweep,
                };
                finished.plans.insert(plan_id, ended);
            } else if record.state == PlanState::Planned && queued.contains(&record.plan.plan_id) {
                // In a live lock's queue: the lock's release starts it.
            } else {
                let plan_id = record.plan.plan_id;
                if let Err(error) = Self::trace_of(&record)
                    .scope(self.sweep_plan(record, now))
                    .await
                {
                    // One plan's trouble does not hold up the others' expiry and resends.
                    tracing::warn!(plan = %plan_id, %error, "plan not swept; the next sweep tries again");
                }
            }
        }
        // A plan no longer listed (its record deleted) is forgotten.
        finished.plans.retain(|_, plan| plan.listed == sweep);
        Ok(census)
    }

    /// The ids of the plans in the bucket, each once, 16 bytes each where a key takes about 70.
    /// A key that is not a plan id is no plan of the crew's, and is left alone.
    async fn listed_plans(&self) -> Result<Vec<PlanId>, HandlerError> {
        use futures::TryStreamExt;
        let keys = self.plans.key_stream().await.map_err(retry)?;
        let mut listed: Vec<PlanId> = keys
            .map_err(retry)
            .try_filter_map(|key| async move {
                let plan_id = key.parse::<PlanId>();
                if plan_id.is_err() {
                    tracing::warn!(%key, "a key in the plans bucket that is not a plan id; left alone");
                }
                Ok(plan_id.ok())
            })
            .try_collect()
            .await?;
        listed.sort_unstable();
        listed.dedup();
        Ok(listed)
    }

    /// Renews the locks of plans still moving (each with the time of its renewal), then
    /// releases those of ended plans and hands on those whose plan never came. Returns the
    /// plans queued on the renewed locks. One lock's trouble is logged and holds up no other.
    async fn sweep_locks(&self) -> Result<std::collections::HashSet<PlanId>, HandlerError> {
        let mut queued = std::collections::HashSet::new();
        // Renewals come first, every one of them: a release reads the plans queued behind it
        // and may meet conflicts, and no live plan's lease may run out behind that.
        let mut ended = Vec::new();
        for key in self.locks.keys().await.map_err(retry)? {
            let read = async {
                let Some(lock) = self.locks.get(&key).await.map_err(retry)? else {
                    return Ok(None);
                };
                let holder = lock.value.plan_id.to_string();
                let plan = self.plans.get(&holder).await.map_err(retry)?;
                Ok::<_, HandlerError>(Some((lock, plan.map(|plan| plan.value))))
            };
            let swept = match read.await {
                Ok(None) => Ok(()),
                Ok(Some((lock, Some(record)))) if !record.state.is_terminal() => {
                    queued.extend(lock.value.waiting.iter().map(|waiter| waiter.plan_id));
                    self.renew(&key, lock).await
                }
                Ok(Some((lock, plan))) => {
                    ended.push((key.clone(), lock, plan));
                    Ok(())
                }
                Err(error) => Err(error),
            };
            if let Err(error) = swept {
                tracing::warn!(lock = %key, %error, "lock not renewed; the next sweep tries again");
            }
        }
        for (key, lock, plan) in ended {
            let swept = match plan {
                Some(record) => self.release(&record).await,
                // A plan takes its lock before its record is written: only a lock whose
                // lease ran out is one whose plan never came. A lock changed since it was
                // read is looked at again by the next sweep.
                None if self.abandoned(&lock.value, Utc::now()) => {
                    self.pass_on(&key, lock).await.map(drop)
                }
                None => Ok(()),
            };
            if let Err(error) = swept {
                tracing::warn!(lock = %key, %error, "lock not released; the next sweep tries again");
            }
        }
        Ok(queued)
    }
}

impl Conductor {
    /// Expires a plan whose approval window closed, starts a planned one whose lock may be
    /// free, and resends a lost ApplyRequest.
    async fn sweep_plan(&self, record: PlanRecord, now: DateTime<Utc>) -> Result<(), HandlerError> {
        let deciding = matches!(
            record.state,
            PlanState::Ready | PlanState::AwaitingApproval | PlanState::Blocked
        );
        if deciding && let Some(closed) = self.config.approvals.expired_at(&record, now) {
            let why = format!("no decision before {closed}");
            self.end_stalled(&record, PlanState::Expired, why, now)
                .await?;
        } else if record.state == PlanState::Planned {
            self.try_start(record.plan.plan_id).await?;
        } else if record.state == PlanState::Validating
            && record.build.is_none()
            && self.apply_overdue(&record, now)
        {
            // Routed, yet Forge never built it: the routed plan was not stored (the Conductor
            // died, or the stream was failing over, between the move and the publish), or it
            // was stored and lost (dead-lettered while the bus failed under Forge). Forge does
            // not build a plan that has moved on, so a late copy is harmless.
            let id = Message::message_id(&record.plan);
            self.send_copy(&record, now, subjects::PLAN_ROUTED, &record.plan, &id)
                .await?;
        } else if record.state == PlanState::Approved
            && let Some(deadline) = self.start_deadline(&record)
            && now > deadline + self.patience()
        {
            // Forge did not start in time: it was down, or it refused every request as not
            // the Conductor's (it trusts another key). Forge compares the deadline with its
            // own clock, so one patience is left for clocks a little apart.
            let why = format!(
                "Forge did not start the apply before its approval's requests expired at {deadline}; nothing was applied (see the plan's events for Forge's refusals)"
            );
            self.end_stalled(&record, PlanState::Failed, why, now)
                .await?;
        } else if record.state == PlanState::Approved && self.apply_overdue(&record, now) {
            // Approved, yet Forge never started: the request was lost (a Conductor died
            // between the decision and the request, or it was dead-lettered), or Forge refused
            // a forgery in its place. Forge's lease on the build keeps a copy from applying the
            // plan a second time, so send again.
            if let Some(request) = self.apply_request(&record) {
                let id = format!("apply:{}:{}", request.plan_id, request.digest);
                self.send_copy(&record, now, subjects::APPLY_REQUEST, &request, &id)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends a plan the sweeper found stalled (its decision window closed, or Forge never
    /// started it) and releases its lock; a plan that moved on meanwhile is left as it is.
    async fn end_stalled(
        &self,
        seen: &PlanRecord,
        end: PlanState,
        why: String,
        now: DateTime<Utc>,
    ) -> Result<(), HandlerError> {
        let ended = self
            .update(seen.plan.plan_id, |record| {
                record.state == seen.state
                    && record.move_to(end, CONDUCTOR, why.clone(), now).is_ok()
            })
            .await?;
        match ended {
            Some(record) if record.state == end => self.release(&record).await,
            _ => Ok(()),
        }
    }

    /// Sends again what a stalled plan waits for, under an id of its own (`<id>/copy-<n>`),
    /// so it is stored even when the first was stored and then lost downstream. Copies are
    /// spaced out, one per doubling of the wait, so a Forge that is only down does not find a
    /// pile of them for one plan when it comes back. The plan's moves are published again
    /// first: a plan started when another's lock came free was written in that plan's
    /// handler, whose redelivery republishes only its own moves.
    async fn send_copy<M: Message>(
        &self,
        record: &PlanRecord,
        now: DateTime<Utc>,
        subject: &str,
        message: &M,
        id: &str,
    ) -> Result<(), HandlerError> {
        let copy = self.waited_patiences(record, now).ilog2();
        self.republish_recent_moves(record, now).await?;
        let sent = self
            .bus
            .publish_with_id(subject, message, &format!("{id}/copy-{copy}"))
            .await
            .map_err(retry)?;
        if !sent.duplicate {
            tracing::warn!(plan = %record.plan.plan_id, subject, copy, "a stalled plan's work sent again");
        }
        Ok(())
    }

    /// Publishes a stalled plan's moves again, in case the failure that stalled it came
    /// between its record's write and its moves (their ids store each once).
    async fn republish_recent_moves(
        &self,
        record: &PlanRecord,
        now: DateTime<Utc>,
    ) -> Result<(), HandlerError> {
        if record
            .history
            .last()
            .is_some_and(|last| last.at + REPUBLISH_WITHIN > now)
        {
            self.publish_moves(record, 0).await?;
        }
        Ok(())
    }

    /// Whether a plan has waited for Forge (to build it, or to start applying it) longer than
    /// a sweep or two should take.
    fn apply_overdue(&self, record: &PlanRecord, now: DateTime<Utc>) -> bool {
        self.waited_patiences(record, now) > 0
    }

    /// How many times that patience a plan has waited since its last move.
    fn waited_patiences(&self, record: &PlanRecord, now: DateTime<Utc>) -> u32 {
        let patience = self.patience().num_seconds();
        record.history.last().map_or(0, |last| {
            u32::try_from((now - last.at).num_seconds() / patience).unwrap_or(u32::MAX)
        })
    }

    /// How long a plan may wait on another agent before the sweeper looks into it.
    fn patience(&self) -> chrono::Duration {
        chrono::Duration::seconds((self.config.sweep_seconds * 3).max(10) as i64)
    }
}

/// Moves a plan that holds the lock `key` with `token` to VALIDATING; false if it cannot move.
fn route(record: &mut PlanRecord, key: &str, token: u64) -> bool {
    record.waiting_for_lock = None;
    record.lock_token = Some(token);
    record
        .move_to(
            PlanState::Validating,
            CONDUCTOR,
            format!("holds the lock on {key}; routed to forge"),
            Utc::now(),
        )
        .is_ok()
}

fn summary_line(status: &BuildStatus) -> String {
    let summary = status.summary;
    format!(
        "{} to create, {} to change, {} to remove",
        summary.create, summary.update, summary.delete
    )
}

fn blocking(status: &BuildStatus) -> String {
    let rules: Vec<String> = status
        .findings
        .iter()
        .filter(|finding| finding.enforcement >= infracrew_protocol::Enforcement::SoftMandatory)
        .map(|finding| format!("{} on {}", finding.rule, finding.resource))
        .collect();
    rules.join(", ")
}

/// Keeps `value` under `key` in a memory of at most `at_most` entries, let go of all at once
/// when full: each entry only saves a read, so forgetting costs reads, never correctness.
fn keep<K: std::hash::Hash + Eq, V>(
    memory: &mut std::collections::HashMap<K, V>,
    key: K,
    value: V,
    at_most: usize,
) {
    if memory.len() >= at_most {
        memory.clear();
    }
    memory.insert(key, value);
}

fn lock_ignoring_poison<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async method returns, without calling it.
    fn future_size<'a, A, B, F: Future>(_: impl FnOnce(&'a Conductor, A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A message in hand holds its handler's future (the consumer boxes it), and at full speed
    /// some 250 are in hand at once: this is the Conductor's memory per message. Its rare,
    /// deep paths are boxed where they are awaited, and so are the client's requests in the
    /// bus: inline, they made it 14.7 KB; it is 5.9 KB.
    #[test]
    fn a_message_in_hand_holds_a_few_kilobytes() {
        let size = future_size(Conductor::handle);
        assert!(
            size <= 8 * 1024,
            "Conductor::handle's future is {size} bytes: a large future awaited inline on a rare path? (box it where it is awaited)"
        );
    }
}
