//! The interface every deployment target implements: read what runs, apply, verify.

use std::future::Future;

use infracrew_protocol::ServiceState;

/// Why a driver could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {driver} driver: {reason}")]
pub struct DriverError {
    pub driver: &'static str,
    pub reason: String,
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

/// Applying, for drivers that change a target.
pub trait Apply: Driver {
    /// Makes `service` in `environment` run as `state`, or removes it when `state` is `None`.
    /// Applying the same state again changes nothing, so a redelivered apply is safe.
    fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Checks that the target runs `state` (healthy, for drivers that can tell).
    fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;
}
