//! The dry-run driver: "what runs" is a record per service in a KV bucket, so its diffs are
//! real (against what was last applied through it) while it changes nothing anywhere else.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, PoisonError},
};

use infracrew_bus::{Bus, Kv, KvError, buckets};
use infracrew_protocol::ServiceState;

use crate::driver::{Apply, ApplyContext, Driver, DriverError};

/// Records whose last read or write a driver keeps; past it the memory is let go and applies
/// read first. More than the services a busy crew changes within a few seconds of each other.
const SEEN_KEPT: usize = 8_192;

/// Plan-only mode and the benchmark target.
#[derive(Debug, Clone)]
pub struct DryRunDriver {
    records: Kv<ServiceState>,
    /// Each record as this driver last read or wrote it, by key: an apply changes it from
    /// there without reading it again. Another writer's change makes one stale, which the
    /// compare-and-set finds.
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    /// Hashes the states seen, the same way in every clone of the driver.
    states: RandomState,
}

/// A record as last seen: its revision, and its state's hash (a state, not a copy of it, so
/// thousands of services cost a few hundred KB). Two states with one hash read the record
/// again, as a state recorded already does: the hash can only send an apply the long way.
#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    state: u64,
}

impl DryRunDriver {
    pub const NAME: &'static str = "dry-run";

    pub async fn open(bus: &Bus) -> Result<Self, KvError> {
        Ok(DryRunDriver {
            records: bus.kv(buckets::DRY_RUN).await?,
            seen: Arc::default(),
            states: RandomState::new(),
        })
    }

    /// Keeps the record on `key` as seen holding `state` at `revision`, or forgets it.
    fn saw(&self, key: &str, record: Option<(&ServiceState, u64)>) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((state, revision)) = record else {
            seen.remove(key);
            return;
        };
        if seen.len() >= SEEN_KEPT && !seen.contains_key(key) {
            seen.clear();
        }
        let state = self.states.hash_one(state);
        seen.insert(key.to_owned(), Seen { revision, state });
    }

    /// The revision of the record on `key` as last seen, when it held another state than
    /// `state` (a state already recorded is read again: it may be recorded still).
    fn seen_other_than(&self, key: &str, state: &ServiceState) -> Option<u64> {
        let state = self.states.hash_one(state);
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(key)
            .filter(|seen| seen.state != state)
            .map(|seen| seen.revision)
    }

    /// Writes `state` over the record at `revision`, keeping it as seen.
    async fn update(&self, key: &str, state: &ServiceState, revision: u64) -> Result<(), KvError> {
        let revision = self.records.update(key, state, revision).await?;
        self.saw(key, Some((state, revision)));
        Ok(())
    }

    /// Writes `state` where no record is, keeping it as seen.
    async fn create(&self, key: &str, state: &ServiceState) -> Result<(), KvError> {
        let revision = self.records.create(key, state).await?;
        self.saw(key, Some((state, revision)));
        Ok(())
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
        let key = Self::key(environment, service);
        let record = self.records.get(&key).await.map_err(Self::failed)?;
        self.saw(
            &key,
            record
                .as_ref()
                .map(|record| (&record.value, record.revision)),
        );
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
    /// compare-and-set (on no record), and one that finds a record reads it as above. A record
    /// this driver last saw holding another state is written over unread, on the revision it
    /// saw: the write then lands only where the read would have found that record.
    async fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> Result<(), DriverError> {
        let key = Self::key(environment, service);
        if let Some(state) = state {
            let unread = match (&context.expected, self.seen_other_than(&key, state)) {
                (None, _) => Some(self.create(&key, state).await),
                (Some(_), Some(revision)) => Some(self.update(&key, state, revision).await),
                (Some(_), None) => None,
            };
            match unread {
                Some(Ok(())) => return Ok(()),
                Some(Err(KvError::AlreadyExists { .. } | KvError::Conflict { .. })) | None => {}
                Some(Err(error)) => return Err(Self::failed(error)),
            }
        }
        match state {
            Some(state) => match self.records.get(&key).await {
                Ok(Some(current)) if &current.value == state => Ok(()),
                Ok(Some(current)) => self.update(&key, state, current.revision).await,
                Ok(None) => self.create(&key, state).await,
                Err(error) => Err(error),
            },
            None => match self.records.get(&key).await {
                Ok(Some(current)) => {
                    let deleted = self.records.delete(&key, current.revision).await;
                    self.saw(&key, None);
                    deleted.map(drop)
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            },
        }
        .map_err(Self::failed)
    }

    /// Every way `apply` succeeds ends on the record as wanted: a compare-and-set the server
    /// acknowledged, a read that found it so, or a deletion. Reading it again tells nothing.
    fn apply_verifies(&self) -> bool {
        true
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
