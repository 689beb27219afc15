//! The interface every deployment target implements: read what runs, apply, verify.

use std::future::Future;

use infracrew_protocol::{PlanId, ServiceState, Strategy};
use tokio::sync::mpsc;

/// Why a driver could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {driver} driver: {reason}")]
pub struct DriverError {
    pub driver: &'static str,
    pub reason: String,
    pub kind: FailureKind,
}

/// What a driver's error says about the step it was taking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The target refused the change or does not run it as asked: the step failed, and what
    /// the apply changed is rolled back.
    StepFailed,
    /// The target, or the store it keeps its records in, did not answer: whether the step
    /// took is unknown, so rolling back would undo what may have landed. The apply is taken
    /// up again later and converges from what it then reads.
    Unreachable,
}

impl DriverError {
    pub fn step_failed(driver: &'static str, reason: impl Into<String>) -> Self {
        DriverError {
            driver,
            reason: reason.into(),
            kind: FailureKind::StepFailed,
        }
    }

    pub fn unreachable(driver: &'static str, reason: impl Into<String>) -> Self {
        DriverError {
            driver,
            reason: reason.into(),
            kind: FailureKind::Unreachable,
        }
    }
}

/// A deployment target. Forge renders changes against what the driver reads as running, so
/// a diff is always against the real current state of that target.
pub trait Driver: Send + Sync + 'static {
    /// Recorded on every change and event the driver produces.
    fn name(&self) -> &'static str;

    /// What runs of `service` in `environment` now, if anything.
    fn current(
        &self,
        environment: &str,
        service: &str,
    ) -> impl Future<Output = Result<Option<ServiceState>, DriverError>> + Send;

    /// The revision that ran before the current one, if the target remembers one.
    fn previous(
        &self,
        environment: &str,
        service: &str,
    ) -> impl Future<Output = Result<Option<ServiceState>, DriverError>> + Send;
}

/// What an apply is for and how to carry it out.
#[derive(Debug, Clone)]
pub struct ApplyContext {
    /// The approved plan the change belongs to; drivers tag what they create with it.
    pub plan_id: PlanId,
    /// The approved change's digest, for drivers that hand the change on (a CI workflow).
    pub digest: String,
    pub strategy: Strategy,
    /// What the target ran when the change was rendered (`None`: nothing ran), and so what it
    /// most likely runs now: a driver may write against it without reading first, as long as
    /// its write fails when it is wrong.
    pub expected: Option<ServiceState>,
    pub progress: Progress,
}

/// Where a driver reports progress inside a step; Forge publishes each line as an OpsEvent.
#[derive(Debug, Clone)]
pub struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    /// A reporter and the receiving end of its lines.
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Progress(Some(sender)), receiver)
    }

    /// A reporter nobody listens to.
    pub fn silent() -> Self {
        Progress(None)
    }

    pub fn report(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(progress = %line);
        if let Some(sender) = &self.0 {
            // The receiver is gone only when the apply it reports on has ended.
            let _ = sender.send(line);
        }
    }
}

/// Applying, for drivers that change a target.
pub trait Apply: Driver {
    /// Makes `service` in `environment` run as `state`, or removes it when `state` is `None`.
    /// Applying converges from whatever runs, so a redelivered apply (after a crash, say)
    /// finishes the work instead of repeating it.
    fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Checks that the target runs `state` (healthy, for drivers that can tell).
    fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Whether the target answers now, and what it is: Forge's readiness.
    fn check(&self) -> impl Future<Output = Result<String, DriverError>> + Send;

    /// Whether Forge puts back what it applied when a step fails. A driver that hands the
    /// change to something else (a CI workflow) says no: the apply then ends FAILED.
    fn rolls_back(&self) -> bool {
        true
    }

    /// Whether an apply that returns `Ok` has already seen the target run the state, so
    /// Forge need not verify it with another call.
    fn apply_verifies(&self) -> bool {
        false
    }
}
