//! The dry-run driver: "what runs" is a record per service in a KV bucket, so its diffs are
//! real (against what was last applied through it) while it changes nothing anywhere else.

use infracrew_bus::{Bus, Kv, KvError, buckets};
use infracrew_protocol::ServiceState;

use crate::driver::{Apply, ApplyContext, Driver, DriverError};

/// Plan-only mode and the benchmark target.
#[derive(Debug, Clone)]
pub struct DryRunDriver {
    records: Kv<ServiceState>,
}

impl DryRunDriver {
    pub const NAME: &'static str = "dry-run";

    pub async fn open(bus: &Bus) -> Result<Self, KvError> {
        Ok(DryRunDriver {
            records: bus.kv(buckets::DRY_RUN).await?,
        })
    }

    /// The record key of a service in an environment.
    pub fn key(environment: &str, service: &str) -> String {
        format!("{environment}.{service}")
    }

    /// Every error of the records' bucket is the bus failing (or a write of ours whose ack was
    /// lost landing first), not the change: the apply is taken up again rather than rolled back.
    fn failed(error: KvError) -> DriverError {
        DriverError::unreachable(Self::NAME, error.to_string())
    }
}

impl Driver for DryRunDriver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn current(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        let record = self
            .records
            .get(&Self::key(environment, service))
            .await
            .map_err(Self::failed)?;
        Ok(record.map(|record| record.value))
    }

    async fn previous(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        let key = Self::key(environment, service);
        let mut history = self.records.history(&key).await.map_err(Self::failed)?;
        // The last stored value is the current revision unless the service was removed since.
        if self
            .records
            .get(&key)
            .await
            .map_err(Self::failed)?
            .is_some()
        {
            history.pop();
        }
        Ok(history.pop().map(|record| record.value))
    }
}

impl Apply for DryRunDriver {
    async fn check(&self) -> Result<String, DriverError> {
        Ok(format!(
            "records applies in the {} bucket",
            buckets::DRY_RUN
        ))
    }

    /// Records the state as running (or removes the record); nothing else changes. A state
    /// already recorded is left as it is, so an apply picked up again records nothing twice.
    /// The write is a compare-and-set on what was read: a write whose ack was lost in a
    /// failover can still land after that read, and then this one fails instead of
    /// recording the state a second time (the apply's retry finds it recorded). A service
    /// the change was rendered without is created unread: the create is the same
    /// compare-and-set (on no record), and one that finds a record reads it as above.
    async fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> Result<(), DriverError> {
        let key = Self::key(environment, service);
        if let (Some(state), None) = (state, &context.expected) {
            match self.records.create(&key, state).await {
                Ok(_) => return Ok(()),
                Err(KvError::AlreadyExists { .. }) => {}
                Err(error) => return Err(Self::failed(error)),
            }
        }
        match state {
            Some(state) => match self.records.get(&key).await {
                Ok(Some(current)) if &current.value == state => Ok(()),
                Ok(Some(current)) => self
                    .records
                    .update(&key, state, current.revision)
                    .await
                    .map(drop),
                Ok(None) => self.records.create(&key, state).await.map(drop),
                Err(error) => Err(error),
            },
            None => match self.records.get(&key).await {
                Ok(Some(current)) => self.records.delete(&key, current.revision).await,
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            },
        }
        .map_err(Self::failed)
    }

    async fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> Result<(), DriverError> {
        let recorded = self.current(environment, service).await?;
        if recorded.as_ref() == state {
            Ok(())
        } else {
            Err(DriverError::step_failed(
                Self::NAME,
                format!("{environment}.{service} is not recorded as applied"),
            ))
        }
    }
}
