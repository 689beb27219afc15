//! The agent's Heartbeat on `crew.heartbeat.<agent>`, every interval and at once when its
//! readiness changes; the same tick refreshes its consumers' backlog metrics.

use std::sync::atomic::Ordering;

use chrono::Utc;
use infracrew_protocol::{Heartbeat, SchemaVersion, subjects};

use infracrew_bus::Shutdown;

use crate::Agent;

/// Publishes heartbeats until shutdown. A failed publish is logged and the loop goes on: a
/// missing heartbeat is itself the signal others watch for.
pub(crate) async fn publish_heartbeats(agent: Agent, shutdown: Shutdown) {
    let subject = subjects::heartbeat(agent.role);
    let mut ticker = tokio::time::interval(agent.identity.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => agent.observe_consumers().await,
            _ = agent.readiness.changed() => {}
        }
        seq += 1;
        let not_ready = agent.not_ready();
        agent.metrics.set_ready(not_ready.is_empty());
        let stats = &agent.stats;
        let beat = Heartbeat {
            schema_version: SchemaVersion::CURRENT,
            agent: agent.role,
            instance_id: agent.identity.instance_id,
            version: agent.identity.version.clone(),
            started_at: agent.identity.started_at,
            sent_at: Utc::now(),
            seq,
            messages_handled: stats.handled.load(Ordering::Relaxed),
            messages_failed: stats.failed.load(Ordering::Relaxed),
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            last_error: stats.last_error(),
            ready: not_ready.is_empty(),
            not_ready,
        };
        match agent.bus.publish(&subject, &beat).await {
            Ok(_) => agent.metrics.heartbeat_sent(beat.sent_at),
            Err(error) => tracing::warn!(%error, "heartbeat not published"),
        }
    }
}
