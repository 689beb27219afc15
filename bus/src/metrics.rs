//! What consumers measure, in Prometheus form: messages handled and failed and handler
//! latency by subject, and dead letters. Registered by the agent that serves `/metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// A metric's subject label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabel {
    pub subject: String,
}

type HistogramFamily = Family<SubjectLabel, Histogram, fn() -> Histogram>;

/// Per-subject counts and latencies of the messages an agent's consumers settle.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    handled: Family<SubjectLabel, Counter>,
    failed: Family<SubjectLabel, Counter>,
    duration: HistogramFamily,
    dead_letters: Counter,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self {
            handled: Family::default(),
            failed: Family::default(),
            duration: Family::new_with_constructor(handler_buckets),
            dead_letters: Counter::default(),
        }
    }
}

/// 1 ms to about a minute: a handler's work runs from a KV write to a whole rollout.
fn handler_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl ConsumerMetrics {
    /// Adds these metrics to `registry` (names get the registry's prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "messages_handled",
            "Messages settled by this agent's consumers, whatever the outcome",
            self.handled.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages whose handling failed (redelivered later, or dead-lettered)",
            self.failed.clone(),
        );
        registry.register_with_unit(
            "handler_duration",
            "Time from taking a message to settling it",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages this agent moved to crew.dlq.<subject>",
            self.dead_letters.clone(),
        );
    }

    pub(crate) fn settled(&self, subject: &str, failed: bool, seconds: f64) {
        let label = SubjectLabel {
            subject: subject.to_owned(),
        };
        self.handled.get_or_create(&label).inc();
        // Created at zero on the first message, so an error rate reads 0, not nothing.
        let failures = self.failed.get_or_create(&label);
        if failed {
            failures.inc();
        }
        self.duration.get_or_create(&label).observe(seconds);
    }

    pub(crate) fn dead_lettered(&self) {
        self.dead_letters.inc();
    }
}
