//! Forge's own metrics: how long applies take by how they end, and rollbacks.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::apply::{ApplyEnd, ApplyError};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

type DurationFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct ForgeMetrics {
    apply_duration: DurationFamily,
    rollbacks: Counter,
}

/// 10 ms to about an hour: a dry run is instant, a slow rollout takes many minutes.
fn apply_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 19))
}

const OUTCOMES: [&str; 3] = ["applied", "failed", "rolled_back"];

impl Default for ForgeMetrics {
    fn default() -> Self {
        let metrics = Self {
            apply_duration: Family::new_with_constructor(apply_buckets),
            rollbacks: Counter::default(),
        };
        // Every outcome is exported from the start, at zero.
        for outcome in OUTCOMES {
            let _ = metrics.apply_duration.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        metrics
    }
}

impl ForgeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "apply_duration",
            "Time an apply took, by how it ended (a failed one is tried again)",
            Unit::Seconds,
            self.apply_duration.clone(),
        );
        registry.register(
            "rollbacks",
            "Applies rolled back after a step failed",
            self.rollbacks.clone(),
        );
    }

    /// Records an apply that ran (a refused one or a duplicate changed nothing and is not
    /// counted).
    pub fn applied(&self, end: &Result<ApplyEnd, ApplyError>, seconds: f64) {
        let outcome = match end {
            Ok(ApplyEnd::Refused | ApplyEnd::Duplicate) => return,
            Ok(ApplyEnd::Applied) => OUTCOMES[0],
            Err(_) | Ok(ApplyEnd::Failed) => OUTCOMES[1],
            Ok(ApplyEnd::RolledBack) => {
                self.rollbacks.inc();
                OUTCOMES[2]
            }
        };
        self.apply_duration
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .observe(seconds);
    }
}
