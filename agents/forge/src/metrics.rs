//! Forge's own metrics: how long applies take by how they end, rollbacks, and the requests
//! its gate refused, by the check that refused them.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use infracrew_protocol::GateCheck;

use crate::apply::{ApplyEnd, ApplyError};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub check: String,
}

type DurationFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct ForgeMetrics {
    apply_duration: DurationFamily,
    rollbacks: Counter,
    refused: Family<CheckLabel, Counter>,
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
            refused: Family::default(),
        };
        // Every outcome and check is exported from the start, at zero.
        for outcome in OUTCOMES {
            let _ = metrics.apply_duration.get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            });
        }
        for check in GateCheck::ALL {
            let _ = metrics.refused.get_or_create(&check_label(check));
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
        // A SIGNATURE refusal is a security signal: a request the Conductor did not sign.
        registry.register(
            "apply_requests_refused",
            "ApplyRequests Forge's gate refused, by the check that refused them (nothing was changed)",
            self.refused.clone(),
        );
    }

    /// Records how a request ended: a refused one by its check, an apply that ran by its
    /// outcome (a duplicate changed nothing and is not counted).
    pub fn request_ended(&self, end: &Result<ApplyEnd, ApplyError>, seconds: f64) {
        let outcome = match end {
            Ok(ApplyEnd::Refused(check)) => {
                self.refused.get_or_create(&check_label(*check)).inc();
                return;
            }
            Ok(ApplyEnd::Duplicate) => return,
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

fn check_label(check: GateCheck) -> CheckLabel {
    CheckLabel {
        check: check.as_str().to_owned(),
    }
}
