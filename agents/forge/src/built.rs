//! What this Forge remembers of the plans it built lately, to save reading back what it
//! wrote itself. Only hints: whatever is not remembered (a plan built by another replica, or
//! before a restart, or forgotten to keep the memory bounded) is read from the buckets, and
//! nothing remembered is trusted beyond what its reader checks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use infracrew_bus::Versioned;
use infracrew_protocol::{PlanDigest, PlanId, PlanSpec, lock_key};

use crate::BuildRecord;

/// How many plans' locks are kept; past that the memory starts again empty.
const LOCKS_KEPT: usize = 4096;

/// How many builds waiting for their verdicts or applies are kept: more than a Forge has in
/// flight.
const BUILDS_KEPT: usize = 1024;

#[derive(Debug, Default)]
pub struct BuiltPlans(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    /// The lock each plan needs, so the gate reads it together with the plan and build rather
    /// than after them; the gate checks the lock its plan's record names.
    locks: HashMap<PlanId, String>,
    /// The build record each plan sent to Sentinel, as stored and at its revision, until its
    /// apply: the verdict names the digest, and the same digest is the same change; the apply
    /// takes its lease on the record at that revision without reading it first.
    builds: HashMap<PlanId, Versioned<Arc<BuildRecord>>>,
}

impl BuiltPlans {
    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn remember_lock(&self, plan: &PlanSpec) {
        let mut remembered = self.remembered();
        if remembered.locks.len() >= LOCKS_KEPT {
            remembered.locks.clear();
        }
        remembered
            .locks
            .insert(plan.plan_id, lock_key(&plan.environment, &plan.service));
    }

    pub fn lock_of(&self, plan_id: PlanId) -> Option<String> {
        self.remembered().locks.get(&plan_id).cloned()
    }

    /// Remembers a build sent to be judged once its record is stored at `revision`.
    pub fn remember_build(&self, record: Arc<BuildRecord>, revision: u64) {
        let mut remembered = self.remembered();
        if remembered.builds.len() >= BUILDS_KEPT {
            remembered.builds.clear();
        }
        remembered.builds.insert(
            record.plan.plan_id,
            Versioned {
                value: record,
                revision,
            },
        );
    }

    /// The build with `digest` that `plan_id` sent to be judged, kept for its apply. A verdict
    /// on another rendering finds nothing, and is read against the build record.
    pub fn judged(&self, plan_id: PlanId, digest: &PlanDigest) -> Option<Arc<BuildRecord>> {
        self.remembered()
            .builds
            .get(&plan_id)
            .filter(|build| build.value.digest == *digest)
            .map(|build| Arc::clone(&build.value))
    }

    /// The stored build with `digest` that `plan_id`'s apply is to take its lease on,
    /// forgotten once taken.
    pub fn take_build(
        &self,
        plan_id: PlanId,
        digest: &PlanDigest,
    ) -> Option<Versioned<BuildRecord>> {
        let mut remembered = self.remembered();
        if remembered.builds.get(&plan_id)?.value.digest != *digest {
            return None;
        }
        remembered.builds.remove(&plan_id).map(|build| Versioned {
            value: Arc::unwrap_or_clone(build.value),
            revision: build.revision,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do
mod tests {
    use infracrew_protocol::examples;

    use super::*;

    #[test]
    fn a_remembered_build_serves_its_verdict_and_is_taken_once_by_its_apply() {
        let built = BuiltPlans::default();
        let plan = examples::plan_spec();
        let change = infracrew_protocol::ChangeSet {
            plan_id: plan.plan_id,
            ..examples::change_set()
        };
        let digest = change.digest().unwrap();
        let other = infracrew_protocol::ChangeSet {
            resources: Vec::new(),
            ..change.clone()
        }
        .digest()
        .unwrap();
        let record = BuildRecord {
            plan,
            change,
            digest: digest.clone(),
            applying: None,
        };
        let plan_id = record.plan.plan_id;
        built.remember_build(Arc::new(record.clone()), 7);

        assert!(built.judged(plan_id, &other).is_none());
        assert!(built.take_build(plan_id, &other).is_none());
        let judged = built.judged(plan_id, &digest).unwrap();
        assert_eq!(judged.change, record.change, "kept after the verdict");
        let taken = built.take_build(plan_id, &digest).unwrap();
        assert_eq!((taken.value.digest, taken.revision), (digest.clone(), 7));
        assert!(built.take_build(plan_id, &digest).is_none(), "taken once");
        assert!(built.judged(plan_id, &digest).is_none());
    }
}
