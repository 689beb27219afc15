//! The Conductor's own metrics: plans by state and the age of the oldest in each live state
//! (counted by the sweeper, which reads every plan anyway), and how long decisions take.

use std::{collections::BTreeMap, sync::atomic::AtomicU64};

use chrono::{DateTime, Utc};
use infracrew_protocol::{PlanRecord, PlanState};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::approvals::Accepted;

/// Every plan state, for the metrics to show zeros rather than nothing.
const STATES: [PlanState; 15] = [
    PlanState::Submitted,
    PlanState::Planned,
    PlanState::Validating,
    PlanState::Ready,
    PlanState::Blocked,
    PlanState::NoChange,
    PlanState::AwaitingApproval,
    PlanState::Approved,
    PlanState::Applying,
    PlanState::Applied,
    PlanState::Failed,
    PlanState::RolledBack,
    PlanState::Rejected,
    PlanState::Expired,
    PlanState::Superseded,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: String,
}

type LatencyFamily = Family<DecisionLabel, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct ConductorMetrics {
    plans: Family<StateLabel, Gauge>,
    oldest: Family<StateLabel, Gauge<f64, AtomicU64>>,
    decision_latency: LatencyFamily,
    new_plan_room: Gauge,
}

/// One second to about a day: people decide in minutes or hours.
fn decision_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

impl Default for ConductorMetrics {
    fn default() -> Self {
        let metrics = Self {
            plans: Family::default(),
            oldest: Family::default(),
            decision_latency: Family::new_with_constructor(decision_buckets),
            new_plan_room: Gauge::default(),
        };
        // Every series exists from the start, at zero, so dashboards show zeros, not gaps.
        metrics.census(&PlanCensus::default(), Utc::now());
        for decision in ["approved", "rejected"] {
            let _ = metrics.decision_latency.get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
            });
        }
        metrics
    }
}

fn state_label(state: PlanState) -> StateLabel {
    StateLabel {
        state: state.to_string(),
    }
}

/// Plans counted by state, and when the longest-waiting one in each state got there.
#[derive(Debug, Default)]
pub struct PlanCensus {
    counts: BTreeMap<String, i64>,
    oldest: BTreeMap<String, DateTime<Utc>>,
}

impl PlanCensus {
    pub fn count(&mut self, record: &PlanRecord) {
        self.count_state(record.state, record.history.last().map(|last| last.at));
    }

    /// Counts a plan in `state` since `since`.
    pub fn count_state(&mut self, state: PlanState, since: Option<DateTime<Utc>>) {
        let state = state.to_string();
        if let Some(since) = since {
            let oldest = self.oldest.entry(state.clone()).or_insert(since);
            *oldest = (*oldest).min(since);
        }
        *self.counts.entry(state).or_default() += 1;
    }
}

impl ConductorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("plans", "Plans by state", self.plans.clone());
        registry.register_with_unit(
            "oldest_plan_age",
            "How long the longest-waiting plan in each live state has been there",
            Unit::Seconds,
            self.oldest.clone(),
        );
        registry.register_with_unit(
            "decision_latency",
            "Time from a plan becoming READY to its approval or rejection",
            Unit::Seconds,
            self.decision_latency.clone(),
        );
        registry.register(
            "new_plan_room",
            format!("The room for new plans at the last read: {} less the messages on started plans the crew has not settled (0 while it finishes what it started)", crate::room::STARTED_WORK_AT_MOST),
            self.new_plan_room.clone(),
        );
    }

    /// The gauge the room for new plans is shown on (see `room`).
    pub fn new_plan_room(&self) -> Gauge {
        self.new_plan_room.clone()
    }

    /// Shows a finished census.
    pub fn census(&self, census: &PlanCensus, now: DateTime<Utc>) {
        for state in STATES {
            let label = state_label(state);
            let count = census.counts.get(&label.state).copied().unwrap_or(0);
            self.plans.get_or_create(&label).set(count);
            if !state.is_terminal() && state != PlanState::Blocked {
                let age = census
                    .oldest
                    .get(&label.state)
                    .and_then(|since| (now - *since).to_std().ok())
                    .map_or(0.0, |age| age.as_secs_f64());
                self.oldest.get_or_create(&label).set(age);
            }
        }
    }

    /// Records a decision that ended the wait (an approval complete, or a rejection).
    pub fn decided(&self, accepted: &Accepted, record: &PlanRecord, now: DateTime<Utc>) {
        let decision = match accepted {
            Accepted::Approved { .. } => "approved",
            Accepted::Rejected => "rejected",
            _ => return,
        };
        let Some(opened) = record.decision_opened_at else {
            return;
        };
        let waited = (now - opened).to_std().unwrap_or_default();
        self.decision_latency
            .get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
            })
            .observe(waited.as_secs_f64());
    }
}
