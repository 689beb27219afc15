//! What an agent needs before it can do its work, each need checked by name: its consumers
//! bound, and its own dependencies (Forge's container engine, Sentinel's policy set).

use std::{collections::BTreeMap, sync::Mutex};

use serde::Serialize;
use tokio::sync::Notify;

/// One need and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

/// The agent's needs. A change of any need's state wakes whoever waits on `changed`, so a
/// heartbeat can say at once that the agent became ready (or stopped being).
#[derive(Debug, Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<String, Check>>,
    changed: Notify,
}

impl Readiness {
    /// Records a need as met.
    pub fn pass(&self, name: &str, detail: impl Into<String>) {
        self.set(name, true, detail.into());
    }

    /// Records a need as not met, with what is wrong.
    pub fn fail(&self, name: &str, detail: impl Into<String>) {
        self.set(name, false, detail.into());
    }

    fn set(&self, name: &str, ok: bool, detail: String) {
        let flipped = {
            let mut checks = self
                .checks
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let before = checks.insert(name.to_owned(), Check { ok, detail });
            before.is_none_or(|before| before.ok != ok)
        };
        // notify_one keeps the wake-up for a heartbeat loop that is busy publishing now.
        if flipped {
            self.changed.notify_one();
        }
    }

    /// Every need by name.
    pub fn checks(&self) -> BTreeMap<String, Check> {
        self.checks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Resolves when a need changed between met and not met (since the last call resolved).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_need_is_replaced_by_its_latest_state() {
        let readiness = Readiness::default();
        readiness.fail("engine", "not answering");
        readiness.pass("policy set", "3 policies");
        readiness.pass("engine", "Podman 4.3.1");
        let checks = readiness.checks();
        assert!(checks.values().all(|check| check.ok), "{checks:?}");
        assert_eq!(checks["engine"].detail, "Podman 4.3.1");
    }

    #[tokio::test]
    async fn a_change_made_while_nobody_waits_is_still_seen() {
        let readiness = Readiness::default();
        readiness.fail("consumer forge", "not bound yet");
        readiness.pass("consumer forge", "bound");
        tokio::time::timeout(std::time::Duration::from_secs(1), readiness.changed())
            .await
            .expect("the change is kept for the next wait");
    }
}
