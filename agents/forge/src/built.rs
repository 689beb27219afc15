//! What this Forge remembers of the plans it built lately, to save reading back what it
//! wrote itself. Only hints: whatever is not remembered (a plan built by another replica, or
//! before a restart, or forgotten to keep the memory bounded) is read from the buckets, and
//! nothing remembered is trusted beyond what its reader checks.

use std::{collections::HashMap, sync::Mutex};

use infracrew_protocol::{ChangeSet, PlanDigest, PlanId, PlanSpec, lock_key};

/// How many plans' locks are kept; past that the memory starts again empty.
const LOCKS_KEPT: usize = 4096;

/// How many changes waiting for their verdicts are kept: more than a Forge has in flight.
const JUDGED_KEPT: usize = 1024;

#[derive(Debug, Default)]
pub struct BuiltPlans(Mutex<Remembered>);

#[derive(Debug, Default)]
struct Remembered {
    /// The lock each plan needs, so the gate reads it together with the plan and build rather
    /// than after them; the gate checks the lock its plan's record names.
    locks: HashMap<PlanId, String>,
    /// The change each plan sent to Sentinel, stored in its build record, until its verdict:
    /// the verdict names the digest, and the same digest is the same change.
    judged: HashMap<PlanId, (PlanDigest, ChangeSet)>,
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

    /// Remembers a change once its build record is stored.
    pub fn remember_judged(&self, digest: PlanDigest, change: ChangeSet) {
        let mut remembered = self.remembered();
        if remembered.judged.len() >= JUDGED_KEPT {
            remembered.judged.clear();
        }
        remembered.judged.insert(change.plan_id, (digest, change));
    }

    /// The change with `digest` that `plan_id` sent to be judged, forgotten once taken. A
    /// verdict on another rendering takes nothing, and is read against the build record.
    pub fn take_judged(&self, plan_id: PlanId, digest: &PlanDigest) -> Option<ChangeSet> {
        let mut remembered = self.remembered();
        match remembered.judged.get(&plan_id) {
            Some((judged, _)) if judged == digest => {
                remembered.judged.remove(&plan_id).map(|(_, change)| change)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do
mod tests {
    use infracrew_protocol::examples;

    use super::*;

    #[test]
    fn a_remembered_change_is_taken_once_and_only_for_its_own_digest() {
        let built = BuiltPlans::default();
        let change = examples::change_set();
        let digest = change.digest().unwrap();
        let other = ChangeSet {
            resources: Vec::new(),
            ..change.clone()
        }
        .digest()
        .unwrap();
        built.remember_judged(digest.clone(), change.clone());

        assert_eq!(built.take_judged(change.plan_id, &other), None);
        assert_eq!(
            built.take_judged(change.plan_id, &digest),
            Some(change.clone())
        );
        assert_eq!(
            built.take_judged(change.plan_id, &digest),
            None,
            "taken once"
        );
    }
}
