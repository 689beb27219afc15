//! The metrics every agent exports on `/metrics`: who it is, its last heartbeat, whether it
//! is ready, its consumers' work and backlogs; and a place for its role's own metrics.

use std::sync::{Mutex, atomic::AtomicU64};

use infracrew_bus::WorkStats;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

/// An agent instance's labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub agent: String,
    pub instance_id: String,
}

/// A durable consumer's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabel {
    pub consumer: String,
}

/// A durable consumer's backlog, as the server reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    pub ack_pending: usize,
    pub redelivered: usize,
}

/// The agent's registry (every name prefixed `infracrew_`) and the metrics it keeps itself.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    instance: InstanceLabels,
    heartbeat_at: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    ready: Gauge,
    pending: Family<ConsumerLabel, Gauge>,
    ack_pending: Family<ConsumerLabel, Gauge>,
    redelivered: Family<ConsumerLabel, Gauge>,
}

impl AgentMetrics {
    pub fn new(instance: InstanceLabels, version: &str, stats: &WorkStats) -> Self {
        let mut registry = Registry::with_prefix("infracrew");
        let info = Info::new(vec![
            ("agent".to_owned(), instance.agent.clone()),
            ("instance_id".to_owned(), instance.instance_id.clone()),
            ("version".to_owned(), version.to_owned()),
        ]);
        registry.register("agent", "The agent instance and its build version", info);
        stats.metrics.register(&mut registry);
        let heartbeat_at = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "heartbeat_timestamp",
            "When this instance last published its heartbeat (Unix time)",
            Unit::Seconds,
            heartbeat_at.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when every need of the agent is met (see /health/ready)",
            ready.clone(),
        );
        let [pending, ack_pending, redelivered] = [
            (
                "consumer_pending_messages",
                "Messages on the stream a durable consumer has not delivered yet",
            ),
            (
                "consumer_ack_pending_messages",
                "Messages a durable consumer delivered that are not acknowledged yet",
            ),
            (
                "consumer_redelivered_messages",
                "Messages a durable consumer is redelivering",
            ),
        ]
        .map(|(name, help)| {
            let family = Family::<ConsumerLabel, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        });
        Self {
            registry: Mutex::new(registry),
            instance,
            heartbeat_at,
            ready,
            pending,
            ack_pending,
            redelivered,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds a role's own metrics.
    pub fn register(&self, add: impl FnOnce(&mut Registry)) {
        add(&mut self.lock());
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.lock());
        text
    }

    pub(crate) fn heartbeat_sent(&self, at: chrono::DateTime<chrono::Utc>) {
        let seconds = at.timestamp_micros() as f64 / 1e6;
        self.heartbeat_at.get_or_create(&self.instance).set(seconds);
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub(crate) fn set_backlog(&self, consumer: &str, backlog: Backlog) {
        let label = ConsumerLabel {
            consumer: consumer.to_owned(),
        };
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.pending
            .get_or_create(&label)
            .set(gauge(backlog.pending));
        self.ack_pending
            .get_or_create(&label)
            .set(gauge(backlog.ack_pending as u64));
        self.redelivered
            .get_or_create(&label)
            .set(gauge(backlog.redelivered as u64));
    }
}
