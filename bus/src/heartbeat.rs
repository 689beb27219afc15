//! Each agent's periodic Heartbeat on `crew.heartbeat.<agent>`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use infracrew_protocol::{AgentRole, Heartbeat, SchemaVersion, subjects};
use uuid::Uuid;

use crate::{Bus, Shutdown, WorkStats};

/// Who sends the heartbeat, and how often.
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    pub agent: AgentRole,
    pub instance_id: Uuid,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub interval: Duration,
}

/// Publishes a heartbeat now and then every interval until shutdown. A failed publish is
/// logged and the loop goes on: a missing heartbeat is itself the signal others watch for.
pub async fn publish_heartbeats(
    bus: Bus,
    settings: HeartbeatSettings,
    stats: Arc<WorkStats>,
    shutdown: Shutdown,
) {
    let subject = subjects::heartbeat(settings.agent);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        seq += 1;
        let beat = Heartbeat {
            schema_version: SchemaVersion::CURRENT,
            agent: settings.agent,
            instance_id: settings.instance_id,
            version: settings.version.clone(),
            started_at: settings.started_at,
            sent_at: Utc::now(),
            seq,
            messages_handled: stats.handled.load(Ordering::Relaxed),
            messages_failed: stats.failed.load(Ordering::Relaxed),
            in_flight: stats.in_flight.load(Ordering::Relaxed),
            last_error: stats.last_error(),
        };
        if let Err(error) = bus.publish(&subject, &beat).await {
            tracing::warn!(%error, "heartbeat not published");
        }
    }
}
