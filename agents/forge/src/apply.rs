//! Applying an approved plan, step by step. Nothing is applied unless the plan's record says
//! APPROVED with the request's digest and the target's lock carries its fencing token,
//! whoever sent the request; every refusal and every step is an OpsEvent.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use infracrew_bus::{Bus, Delivery, Kv, KvError, Sent, Versioned};
use infracrew_protocol::{
    ApplyRequest, ChangeAction, DesiredState, GateCheck, LockRecord, OpsEvent, OpsEventKind,
    PlanRecord, PlanSpec, PlanState, SchemaVersion, ServiceState, Strategy, lock_key,
    signing::Verifier,
};

use crate::{
    ApplyLease, BuildRecord,
    built::BuiltPlans,
    driver::{Apply, ApplyContext, FailureKind, Progress},
    drivers::DriverMap,
    render::{parse_resource_name, resource_name},
};

/// How often a long apply tells JetStream it is still working on its ApplyRequest, well inside
/// the consumer's 30 s ack wait.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long an apply's lease on its build lasts unrenewed: three keepalives, and half the
/// consumer's 30 s ack wait, so a request redelivered because its Forge died finds it lapsed.
pub const LEASE: Duration = Duration::from_secs(15);

/// How often a request that found another apply of its plan under way looks again.
const LEASE_POLL: Duration = Duration::from_secs(1);

/// How long an apply, or a step, runs before its start is reported on its own. A quicker
/// apply's end carries its start, and the Conductor records both in one write: three stored
/// messages fewer per plan, and one message fewer for the Conductor to handle. A quicker
/// step's end carries its start too: one stored message fewer per step.
const START_REPORTED_AFTER: Duration = Duration::from_secs(1);

/// The buckets the apply checks against, and what this Forge remembers of the plans it built.
#[derive(Debug, Clone)]
pub struct Records {
    pub plans: Kv<PlanRecord>,
    pub locks: Kv<LockRecord>,
    pub builds: Kv<BuildRecord>,
    pub built: Arc<BuiltPlans>,
}

/// Why an ApplyRequest could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading a record or publishing failed: worth a retry.
    #[error("{0}")]
    Transient(String),
}

/// Reports the steps of one apply, numbered so a redelivered apply repeats the same ids.
struct Steps<'a> {
    bus: &'a Bus,
    request: &'a ApplyRequest,
    driver: &'static str,
    attempt: u32,
    seq: u32,
    /// Events sent whose acks are awaited with the apply's last event, so reporting a step
    /// does not hold the apply up for a round trip.
    unconfirmed: Vec<Sent>,
    /// The apply's start while it is not yet reported.
    held_start: Option<HeldStart>,
    /// The running step's start while it is not yet reported.
    held_step: Option<HeldStart>,
}

/// A start not yet reported: reported on its own once due, or with the end of what it started.
struct HeldStart {
    /// The start's event as it goes out on its own, stamped when the apply or step started.
    event: OpsEvent,
    due: tokio::time::Instant,
}

/// The apply's start is always event 1, reported or not, so a step keeps its number.
const START_SEQ: u32 = 1;

impl Steps<'_> {
    /// Starts the apply: its start is reported once it has run for [`START_REPORTED_AFTER`],
    /// or with its end.
    fn start(&mut self, message: String) {
        self.seq = START_SEQ;
        self.held_start = Some(self.hold(OpsEventKind::ApplyStarted, None, message));
    }

    /// Starts a step: its start is reported once it has run for [`START_REPORTED_AFTER`] or
    /// before its first progress line, or else with its end. It keeps its number either way.
    fn start_step(&mut self, step: String, message: String) {
        self.seq += 1;
        self.held_step = Some(self.hold(OpsEventKind::StepStarted, Some(step), message));
    }

    fn hold(&self, kind: OpsEventKind, step: Option<String>, message: String) -> HeldStart {
        HeldStart {
            event: self.event_of(self.seq, kind, None, step, message),
            due: tokio::time::Instant::now() + START_REPORTED_AFTER,
        }
    }

    /// When the next held start is due; `None` once none is held.
    fn start_due(&self) -> Option<tokio::time::Instant> {
        [&self.held_start, &self.held_step]
            .into_iter()
            .flatten()
            .map(|held| held.due)
            .min()
    }

    /// Reports on their own the held starts due by `by`: the apply's, then the step's.
    async fn report_starts_due(&mut self, by: tokio::time::Instant) -> Result<(), ApplyError> {
        self.report_starts_where(|held| held.due <= by).await
    }

    /// Reports every start still held, and waits for every event's ack: for an apply that
    /// stops here to be taken up again.
    async fn report_starts_confirmed(&mut self) -> Result<(), ApplyError> {
        self.report_starts_where(|_| true).await?;
        self.confirm().await
    }

    /// Reports on their own the held starts `chosen` picks, the apply's first.
    async fn report_starts_where(
        &mut self,
        chosen: impl Fn(&mut HeldStart) -> bool + Copy,
    ) -> Result<(), ApplyError> {
        let held = [
            self.held_start.take_if(chosen),
            self.held_step.take_if(chosen),
        ];
        for held in held.into_iter().flatten() {
            self.dispatch(held.event).await?;
        }
        Ok(())
    }

    async fn event(
        &mut self,
        kind: OpsEventKind,
        step: Option<String>,
        message: String,
    ) -> Result<(), ApplyError> {
        self.seq += 1;
        self.send(self.seq, kind, None, step, message).await
    }

    /// The one event of a refused request. Refusals are numbered 0, so they never take the
    /// place of a step of a real apply.
    async fn refusal(&mut self, refused: Refusal) -> Result<(), ApplyError> {
        let message = format!("{}; nothing was changed", refused.reason);
        self.send(
            0,
            OpsEventKind::ApplyRefused,
            Some(refused.by),
            None,
            message,
        )
        .await
    }

    async fn send(
        &mut self,
        seq: u32,
        kind: OpsEventKind,
        refused_by: Option<GateCheck>,
        step: Option<String>,
        message: String,
    ) -> Result<(), ApplyError> {
        // A step that reports progress runs long enough for its start to go on its own first.
        if kind == OpsEventKind::StepProgress
            && let Some(held) = self.held_step.take()
        {
            self.dispatch(held.event).await?;
        }
        let mut event = self.event_of(seq, kind, refused_by, step, message);
        let held = if kind.ends_apply() {
            self.held_start.take()
        } else if kind.ends_step() {
            self.held_step.take()
        } else {
            None
        };
        event.started_at = held.map(|held| held.event.at);
        self.dispatch(event).await
    }

    fn event_of(
        &self,
        seq: u32,
        kind: OpsEventKind,
        refused_by: Option<GateCheck>,
        step: Option<String>,
        message: String,
    ) -> OpsEvent {
        OpsEvent {
            schema_version: SchemaVersion::CURRENT,
            plan_id: self.request.plan_id,
            digest: self.request.digest.clone(),
            seq,
            attempt: self.attempt,
            request_issued_at: Some(self.request.issued_at),
            kind,
            refused_by,
            step,
            message,
            driver: self.driver.to_owned(),
            at: Utc::now(),
            started_at: None,
        }
    }

    /// Sends `event`; the apply's last one also waits for every event's ack.
    async fn dispatch(&mut self, event: OpsEvent) -> Result<(), ApplyError> {
        let sent = self
            .bus
            .send(event.subject(), &event)
            .await
            .map_err(transient)?;
        self.unconfirmed.push(sent);
        if event.kind.ends_apply() || event.kind == OpsEventKind::ApplyRefused {
            self.confirm().await?;
        }
        Ok(())
    }

    /// Waits for the acks of every event sent so far.
    async fn confirm(&mut self) -> Result<(), ApplyError> {
        self.bus
            .confirm(std::mem::take(&mut self.unconfirmed))
            .await
            .map(drop)
            .map_err(transient)
    }
}

fn transient(error: impl std::fmt::Display) -> ApplyError {
    ApplyError::Transient(error.to_string())
}

/// Runs one driver call while publishing its progress lines as events of `step` and keeping
/// the ApplyRequest's delivery alive.
async fn with_progress<F, T>(
    steps: &mut Steps<'_>,
    hold: &mut Hold<'_>,
    step: &str,
    delivery: &Delivery,
    work: impl FnOnce(Progress) -> F,
) -> Result<T, ApplyError>
where
    F: Future<Output = T>,
{
    let (progress, mut lines) = Progress::channel();
    let work = work(progress);
    tokio::pin!(work);
    // Starting one period ahead: awaiting an interval's "immediate" first tick waits for the
    // timer's next millisecond, which every step of every apply would spend.
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    // Due when the next held start is; set again for the one after it, if any.
    let start_due =
        tokio::time::sleep_until(steps.start_due().unwrap_or_else(tokio::time::Instant::now));
    tokio::pin!(start_due);
    loop {
        tokio::select! {
            output = &mut work => {
                while let Ok(line) = lines.try_recv() {
                    steps.event(OpsEventKind::StepProgress, Some(step.to_owned()), line).await?;
                }
                return Ok(output);
            }
            Some(line) = lines.recv() => {
                steps.event(OpsEventKind::StepProgress, Some(step.to_owned()), line).await?;
            }
            () = &mut start_due, if steps.start_due().is_some() => {
                steps.report_starts_due(tokio::time::Instant::now()).await?;
                if let Some(due) = steps.start_due() {
                    start_due.as_mut().reset(due);
                }
            }
            _ = keepalive.tick() => {
                if let Err(error) = delivery.in_progress().await {
                    tracing::warn!(plan = %steps.request.plan_id, %error, "could not extend the apply's ack deadline");
                }
                // A lease another apply took over stops this one here, mid-step: the other
                // converges from what runs.
                hold.renew().await?;
            }
        }
    }
}

/// How the plan asks for `environment`/`service` to be rolled out.
fn strategy(plan: &PlanSpec, environment: &str, service: &str) -> Strategy {
    plan.desired
        .iter()
        .find(|desired| desired.environment == environment && desired.service == service)
        .and_then(|desired| match &desired.state {
            DesiredState::Running(spec) => Some(spec.strategy),
            _ => None,
        })
        .unwrap_or(Strategy::Rolling)
}

/// How an ApplyRequest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyEnd {
    /// The gate refused it at this check; nothing was changed.
    Refused(GateCheck),
    Applied,
    RolledBack,
    /// A step failed on a driver that does not roll back.
    Failed,
    /// Another request's apply of this build ended already; this one changed nothing.
    Duplicate,
}

impl ApplyEnd {
    /// How an apply that ran ended, as its lease records it.
    fn as_str(self) -> &'static str {
        match self {
            ApplyEnd::Refused(_) => "refused",
            ApplyEnd::Applied => "applied",
            ApplyEnd::RolledBack => "rolled back",
            ApplyEnd::Failed => "failed",
            ApplyEnd::Duplicate => "duplicate",
        }
    }
}

/// What a request found when it went to take its build's lease.
enum Taking<'a> {
    /// Boxed: it carries the whole build.
    Taken(Box<Hold<'a>>),
    /// Another apply holds the lease and renewed it within [`LEASE`]: who.
    HeldBy(String),
    /// An apply of this build ended: who, and how.
    Ended(String),
    /// The build record changed between the read and the write: read it again.
    Raced,
}

/// This apply's lease on its build record.
struct Hold<'a> {
    builds: &'a Kv<BuildRecord>,
    record: BuildRecord,
    revision: u64,
}

impl<'a> Hold<'a> {
    async fn take(
        builds: &'a Kv<BuildRecord>,
        build: Versioned<BuildRecord>,
        holder: &str,
    ) -> Result<Taking<'a>, ApplyError> {
        let Versioned {
            value: record,
            revision,
        } = build;
        if let Some(lease) = &record.applying {
            if let Some(how) = &lease.ended {
                return Ok(Taking::Ended(format!("{} ({how})", lease.holder)));
            }
            // Negative when the holder's clock runs ahead: not lapsed.
            let lapsed = (Utc::now() - lease.renewed_at)
                .to_std()
                .is_ok_and(|age| age > LEASE);
            if lease.holder != holder && !lapsed {
                return Ok(Taking::HeldBy(lease.holder.clone()));
            }
        }
        match Self::lease(builds, record, revision, holder).await {
            Ok(hold) => Ok(Taking::Taken(hold)),
            Err(KvError::Conflict { .. }) => Ok(Taking::Raced),
            Err(error) => Err(transient(error)),
        }
    }

    /// Takes the lease on a build as this Forge stored it, unread: `None` when the record
    /// changed since (another apply's lease) or the write failed, and the lease is then taken
    /// from the gate's read of it.
    async fn take_stored(
        builds: &'a Kv<BuildRecord>,
        stored: Versioned<BuildRecord>,
        holder: &str,
    ) -> Option<Box<Hold<'a>>> {
        let plan_id = stored.value.plan.plan_id;
        Self::lease(builds, stored.value, stored.revision, holder)
            .await
            .inspect_err(|error| tracing::debug!(plan = %plan_id, %error, "the stored build had moved on; leasing it as read"))
            .ok()
    }

    /// Writes `holder`'s lease on `record` if the build is still at `revision`.
    async fn lease(
        builds: &'a Kv<BuildRecord>,
        mut record: BuildRecord,
        revision: u64,
        holder: &str,
    ) -> Result<Box<Hold<'a>>, KvError> {
        record.applying = Some(ApplyLease::new(holder));
        let revision = builds.update(&key(&record), &record, revision).await?;
        Ok(Box::new(Hold {
            builds,
            record,
            revision,
        }))
    }

    /// Writes the lease again with `change` made to it.
    async fn write(&mut self, change: impl FnOnce(&mut Option<ApplyLease>)) -> Result<(), KvError> {
        change(&mut self.record.applying);
        self.revision = self
            .builds
            .update(&key(&self.record), &self.record, self.revision)
            .await?;
        Ok(())
    }

    /// Keeps the lease; fails only when another apply took it over.
    async fn renew(&mut self) -> Result<(), ApplyError> {
        let plan_id = self.record.plan.plan_id;
        match self
            .write(|lease| {
                if let Some(lease) = lease {
                    lease.renewed_at = Utc::now();
                }
            })
            .await
        {
            Ok(()) => Ok(()),
            Err(KvError::Conflict { .. }) => Err(ApplyError::Transient(format!(
                "the lease on plan {plan_id}'s apply lapsed and another apply took it over"
            ))),
            // It lapses only after three missed renewals; the next one may get through.
            Err(error) => {
                tracing::warn!(plan = %plan_id, %error, "could not renew the apply's lease");
                Ok(())
            }
        }
    }

    /// Marks the apply ended, so no other request for this build applies it again; or, after
    /// a failure worth retrying, frees the lease for the retry. Unwritten, the lease lapses.
    async fn close(self, end: &Result<ApplyEnd, ApplyError>) {
        match end {
            Ok(end) => self.end(end.as_str().to_owned()).await,
            Err(_) => self.let_go().await,
        }
    }

    async fn end(mut self, how: String) {
        let result = self
            .write(|lease| {
                if let Some(lease) = lease {
                    lease.ended = Some(how);
                }
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(plan = %self.record.plan.plan_id, %error, "could not record the apply's end on its lease; it lapses unrenewed");
        }
    }

    /// Frees the lease for the next request of the build.
    async fn let_go(mut self) {
        if let Err(error) = self.write(|lease| *lease = None).await {
            tracing::warn!(plan = %self.record.plan.plan_id, %error, "could not free the apply's lease; it lapses unrenewed");
        }
    }
}

fn key(record: &BuildRecord) -> String {
    record.plan.plan_id.to_string()
}

/// Checks the gate and takes the build's lease (waiting while another apply of the plan holds
/// it), then applies, verifies, and rolls back what it applied on a failure. `holder` names
/// this apply in the lease.
pub async fn apply<D: Apply>(
    bus: &Bus,
    drivers: &DriverMap<D>,
    conductor: &Verifier,
    records: &Records,
    request: &ApplyRequest,
    delivery: &Delivery,
    holder: &str,
) -> Result<ApplyEnd, ApplyError> {
    let mut steps = Steps {
        bus,
        request,
        driver: "none",
        attempt: u32::try_from(delivery.delivered()).unwrap_or(u32::MAX),
        seq: 0,
        unconfirmed: Vec::new(),
        held_start: None,
        held_step: None,
    };
    // Before anything else: whoever can publish on the bus cannot make Forge apply.
    if let Err(refused) = check_signature(conductor, request) {
        return refuse(&mut steps, refused).await;
    }
    // A request in time for a build this Forge stored takes its lease beside the gate's reads
    // rather than after them, which saves the apply a round trip; a refused or failed gate
    // frees it again. Nothing is applied before the gate passes either way.
    let mut stored = (request.expires_at > Utc::now())
        .then(|| records.built.take_build(request.plan_id, &request.digest))
        .flatten();
    let mut waiting_for: Option<String> = None;
    let mut kept_alive = Instant::now();
    let mut hold = loop {
        let lease_ahead = async {
            match stored.take() {
                Some(stored) => Hold::take_stored(&records.builds, stored, holder).await,
                None => None,
            }
        };
        let (gate, mut ahead) = tokio::join!(check_records(records, request), lease_ahead);
        if !matches!(gate, Ok(Ok(_)))
            && let Some(hold) = ahead.take()
        {
            hold.let_go().await;
        }
        let build = match gate? {
            Ok(build) => build,
            Err(refused) => return refuse(&mut steps, refused).await,
        };
        if let Some(hold) = ahead {
            break hold;
        }
        match Hold::take(&records.builds, build, holder).await? {
            Taking::Taken(hold) => break hold,
            Taking::Ended(by) => {
                tracing::info!(plan = %request.plan_id, %by, "this plan's apply has ended already; not applied again");
                return Ok(ApplyEnd::Duplicate);
            }
            Taking::HeldBy(other) => {
                if waiting_for.as_ref() != Some(&other) {
                    tracing::info!(plan = %request.plan_id, holder = %other, "another apply of this plan is under way; waiting until it ends or its lease lapses");
                    waiting_for = Some(other);
                }
                if kept_alive.elapsed() >= KEEPALIVE {
                    kept_alive = Instant::now();
                    if let Err(error) = delivery.in_progress().await {
                        tracing::warn!(plan = %request.plan_id, %error, "could not extend the waiting request's ack deadline");
                    }
                }
                tokio::time::sleep(LEASE_POLL).await;
            }
            Taking::Raced => {}
        }
    };
    let build = hold.record.clone();
    let end = carry_out(&mut steps, &mut hold, drivers, &build, delivery).await;
    // An apply to be taken up again has started, and so has the step it stopped in: their
    // starts are reported before it is.
    if end.is_err()
        && let Err(error) = steps.report_starts_confirmed().await
    {
        tracing::warn!(plan = %request.plan_id, %error, "could not report the apply's and the step's start");
    }
    hold.close(&end).await;
    end
}

/// Applies the build resource by resource under its lease.
async fn carry_out<D: Apply>(
    steps: &mut Steps<'_>,
    hold: &mut Hold<'_>,
    drivers: &DriverMap<D>,
    build: &BuildRecord,
    delivery: &Delivery,
) -> Result<ApplyEnd, ApplyError> {
    let request = steps.request;
    let change = &build.change;
    let driver = drivers.get(&build.plan.environment, &build.plan.service);
    steps.driver = driver.name();
    if steps.attempt > 1 {
        tracing::info!(plan = %request.plan_id, attempt = steps.attempt, "picking up an apply that did not finish; converging from what runs");
    }
    steps.start(format!(
        "applying {} resource(s) with {}",
        change.resources.len(),
        driver.name()
    ));

    // What each applied service ran before and runs now, to roll it back.
    let mut applied: Vec<(&str, &str, Option<ServiceState>, Option<ServiceState>)> = Vec::new();
    for resource in change
        .resources
        .iter()
        .filter(|r| r.action != ChangeAction::Unchanged)
    {
        let Some((environment, service)) = parse_resource_name(&resource.resource) else {
            continue;
        };
        let decode = |value: &Option<serde_json::Value>| {
            value
                .as_ref()
                .and_then(|value| serde_json::from_value::<ServiceState>(value.clone()).ok())
        };
        let (before, after) = (decode(&resource.before), decode(&resource.after));
        let step = format!("apply {}", resource.resource);
        steps.start_step(
            step.clone(),
            format!("{:?} {}", resource.action, resource.resource).to_lowercase(),
        );
        let strategy = strategy(&build.plan, environment, service);
        let (expected, wanted) = (before.clone(), after.as_ref());
        let outcome = with_progress(steps, hold, &step, delivery, |progress| async move {
            let context = ApplyContext {
                plan_id: request.plan_id,
                digest: request.digest.to_string(),
                strategy,
                expected,
                progress,
            };
            driver.apply(environment, service, wanted, &context).await?;
            if driver.apply_verifies() {
                return Ok(());
            }
            driver.verify(environment, service, wanted).await
        })
        .await?;
        if let Err(error) = outcome {
            if error.kind == FailureKind::Unreachable {
                tracing::warn!(plan = %request.plan_id, %error, "the target did not answer; the apply is taken up again later");
                return Err(transient(error));
            }
            steps
                .event(OpsEventKind::StepFailed, Some(step), error.to_string())
                .await?;
            if !driver.rolls_back() {
                steps
                    .event(
                        OpsEventKind::ApplyFailed,
                        None,
                        format!("failed, nothing rolled back by {}: {error}", driver.name()),
                    )
                    .await?;
                return Ok(ApplyEnd::Failed);
            }
            applied.push((environment, service, before, after));
            for (environment, service, before, after) in applied.iter().rev() {
                let step = format!("roll back {}", resource_name(environment, service));
                with_progress(steps, hold, &step, delivery, |progress| async move {
                    let context = ApplyContext {
                        plan_id: request.plan_id,
                        digest: request.digest.to_string(),
                        strategy: Strategy::Rolling,
                        expected: after.clone(),
                        progress,
                    };
                    driver
                        .apply(environment, service, before.as_ref(), &context)
                        .await
                })
                .await?
                .map_err(transient)?;
            }
            steps
                .event(
                    OpsEventKind::RolledBack,
                    None,
                    format!("rolled back after: {error}"),
                )
                .await?;
            return Ok(ApplyEnd::RolledBack);
        }
        steps
            .event(
                OpsEventKind::StepSucceeded,
                Some(step),
                format!("{} is as approved", resource.resource),
            )
            .await?;
        applied.push((environment, service, before, after));
    }
    steps
        .event(
            OpsEventKind::ApplyDone,
            None,
            format!("applied and verified with {}", driver.name()),
        )
        .await?;
    Ok(ApplyEnd::Applied)
}

/// Why the gate refused a request: the check that failed, and how.
struct Refusal {
    by: GateCheck,
    reason: String,
}

/// The build to apply (with its revision, for its lease), or why the request is refused.
type GateAnswer = Result<Versioned<BuildRecord>, Refusal>;

fn refused(by: GateCheck, reason: String) -> Result<GateAnswer, ApplyError> {
    Ok(Err(Refusal { by, reason }))
}

/// Reports a refused request: its one event, and no change.
async fn refuse(steps: &mut Steps<'_>, refused: Refusal) -> Result<ApplyEnd, ApplyError> {
    tracing::warn!(plan = %steps.request.plan_id, check = %refused.by, reason = %refused.reason, "apply refused");
    let check = refused.by;
    steps.refusal(refused).await?;
    Ok(ApplyEnd::Refused(check))
}

/// The gate's first check: the Conductor signed the request.
fn check_signature(conductor: &Verifier, request: &ApplyRequest) -> Result<(), Refusal> {
    conductor
        .verify(&request.signed_payload(), &request.signature)
        .map_err(|error| Refusal {
            by: GateCheck::Signature,
            reason: format!("the request is not the Conductor's: {error}"),
        })
}

/// Makes the gate's checks after the signature, in `GateCheck`'s order.
async fn check_records(
    records: &Records,
    request: &ApplyRequest,
) -> Result<GateAnswer, ApplyError> {
    let key = request.plan_id.to_string();
    // The plan, its build and (when this Forge built it) its lock are read at once.
    let hinted_lock = async {
        match records.built.lock_of(request.plan_id) {
            Some(name) => records
                .locks
                .get(&name)
                .await
                .map(|lock| Some((name, lock))),
            None => Ok(None),
        }
    };
    let (record, build, hinted_lock) = tokio::join!(
        records.plans.get(&key),
        records.builds.get(&key),
        hinted_lock
    );
    let record = record.map_err(transient)?.map(|r| r.value);
    // An expired request may only carry on an apply that started in time: the redelivery of
    // one whose Forge died, which the build's lease keeps to one apply.
    let applying = record
        .as_ref()
        .is_some_and(|record| record.state == PlanState::Applying);
    if request.expires_at <= Utc::now() && !applying {
        return refused(
            GateCheck::Expiry,
            format!("the request expired at {}", request.expires_at),
        );
    }
    let Some(record) = record else {
        return refused(
            GateCheck::Plan,
            format!(
                "plan {} has no record: it was not submitted through the Conductor",
                request.plan_id
            ),
        );
    };
    // A redelivered request finds its plan already APPLYING.
    if !matches!(record.state, PlanState::Approved | PlanState::Applying) {
        return refused(
            GateCheck::Plan,
            format!("plan {} is {}, not APPROVED", request.plan_id, record.state),
        );
    }
    if record.digest() != Some(&request.digest) {
        let approved = record
            .digest()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        return refused(
            GateCheck::Plan,
            format!(
                "the request names digest {}, but the approved change is {approved}",
                request.digest
            ),
        );
    }
    let lock_name = lock_key(&record.plan.environment, &record.plan.service);
    let lock = match hinted_lock.map_err(transient)? {
        Some((name, lock)) if name == lock_name => lock,
        _ => records.locks.get(&lock_name).await.map_err(transient)?,
    }
    .map(|l| l.value);
    match lock {
        Some(lock) if lock.plan_id == request.plan_id && lock.token == request.fencing_token => {}
        Some(lock) if lock.plan_id != request.plan_id => {
            return refused(
                GateCheck::Lock,
                format!("the lock on {lock_name} is held by plan {}", lock.plan_id),
            );
        }
        Some(lock) => {
            return refused(
                GateCheck::Lock,
                format!(
                    "fencing token {} is stale: the lock on {lock_name} is at token {}",
                    request.fencing_token, lock.token
                ),
            );
        }
        None => {
            return refused(
                GateCheck::Lock,
                format!("nobody holds the lock on {lock_name}"),
            );
        }
    }
    match build.map_err(transient)? {
        Some(build) if build.value.digest == request.digest => Ok(Ok(build)),
        _ => refused(
            GateCheck::Build,
            format!("no build with digest {} is recorded", request.digest),
        ),
    }
}
