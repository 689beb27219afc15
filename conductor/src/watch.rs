//! The Conductor watches the crew: every agent instance's heartbeats, an agent marked down
//! when none of its instances has been heard from within the silence (and back up when one
//! is), alerts on both, the metrics Grafana's heartbeat panels show, and the health gate that
//! refuses an approval no live agent could carry out.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use async_nats::jetstream::consumer::DeliverPolicy;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use infracrew_bus::{Bus, Shutdown, streams};
use infracrew_protocol::{AgentRole, Heartbeat, decode, subjects};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use uuid::Uuid;

/// An agent role's label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabel {
    pub agent: String,
}

/// An agent going down or coming back, as people are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAlert {
    pub agent: AgentRole,
    pub up: bool,
    pub text: String,
}

/// What the Conductor has heard from the crew.
#[derive(Debug)]
pub struct CrewWatch {
    silence: Duration,
    started_at: DateTime<Utc>,
    state: Mutex<Heard>,
    up: Family<AgentLabel, Gauge>,
    age: Family<AgentLabel, Gauge<f64, AtomicU64>>,
}

#[derive(Debug, Default)]
struct Heard {
    instances: BTreeMap<Uuid, Heartbeat>,
    /// Each agent's state as last announced; absent until first judged.
    announced: BTreeMap<AgentRole, bool>,
}

impl CrewWatch {
    pub fn new(silence: Duration, started_at: DateTime<Utc>) -> Self {
        Self {
            silence,
            started_at,
            state: Mutex::default(),
            up: Family::default(),
            age: Family::default(),
        }
    }

    /// Adds the watch's metrics to the Conductor's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "agent_up",
            "1 while some instance of the agent has sent a heartbeat within the Conductor's silence",
            self.up.clone(),
        );
        registry.register_with_unit(
            "agent_heartbeat_age",
            "Age of the agent's freshest heartbeat, as the Conductor sees it",
            Unit::Seconds,
            self.age.clone(),
        );
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Heard> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes a heartbeat in (an older one than already heard from its instance is ignored).
    pub fn observe(&self, beat: Heartbeat) {
        let mut heard = self.heard();
        let newer = heard
            .instances
            .get(&beat.instance_id)
            .is_none_or(|known| known.sent_at <= beat.sent_at);
        if newer {
            heard.instances.insert(beat.instance_id, beat);
        }
    }

    fn freshest(heard: &Heard, agent: AgentRole) -> Option<&Heartbeat> {
        heard
            .instances
            .values()
            .filter(|beat| beat.agent == agent)
            .max_by_key(|beat| beat.sent_at)
    }

    fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        (now - at).to_std().unwrap_or(Duration::ZERO)
    }

    /// Judges every agent at `now`: updates the metrics, and returns the agents that went
    /// down or came back since the last judgement. An agent never heard from is judged down
    /// only once the Conductor itself has waited out the silence.
    pub fn judge(&self, now: DateTime<Utc>) -> Vec<AgentAlert> {
        let mut heard = self.heard();
        // Instances long gone say nothing the freshest one does not.
        let forget_after = self
            .silence
            .saturating_mul(10)
            .max(Duration::from_secs(600));
        heard
            .instances
            .retain(|_, beat| Self::age(beat.sent_at, now) <= forget_after);
        let mut alerts = Vec::new();
        for agent in AgentRole::ALL {
            let freshest = Self::freshest(&heard, agent).cloned();
            let age = Self::age(
                freshest
                    .as_ref()
                    .map_or(self.started_at, |beat| beat.sent_at),
                now,
            );
            let up = freshest.is_some() && age <= self.silence;
            let label = AgentLabel {
                agent: agent.to_string(),
            };
            self.up.get_or_create(&label).set(i64::from(up));
            self.age.get_or_create(&label).set(age.as_secs_f64());

            let before = heard.announced.get(&agent).copied();
            let judged = up || age > self.silence;
            if !judged || before == Some(up) {
                continue;
            }
            heard.announced.insert(agent, up);
            let text = match (&freshest, up, before) {
                (_, true, None) => continue,
                (Some(beat), true, _) => format!(
                    ":large_green_circle: {agent} is back: instance {} ({}) is sending heartbeats again.",
                    short(beat.instance_id),
                    beat.version
                ),
                (Some(beat), false, _) => format!(
                    ":red_circle: {agent} is down: no heartbeat for {} (the last came from instance {}, {}). Work for it waits on its consumer; see `crew status`.",
                    human(age),
                    short(beat.instance_id),
                    beat.version
                ),
                (None, _, _) => format!(
                    ":red_circle: {agent} is down: no heartbeat since this Conductor started {} ago. Work for it waits on its consumer; see `crew status`.",
                    human(age)
                ),
            };
            alerts.push(AgentAlert { agent, up, text });
        }
        alerts
    }

    /// Whether `agent` can take work now: some instance with a fresh heartbeat that says it is
    /// ready. The refusal names the agent and how long it has been silent, or what it lacks.
    pub fn gate(&self, agent: AgentRole, now: DateTime<Utc>) -> Result<(), String> {
        let heard = self.heard();
        let fresh: Vec<&Heartbeat> = heard
            .instances
            .values()
            .filter(|beat| beat.agent == agent && Self::age(beat.sent_at, now) <= self.silence)
            .collect();
        if fresh.iter().any(|beat| beat.ready) {
            return Ok(());
        }
        if let Some(beat) = fresh.first() {
            return Err(format!(
                "{agent} is not ready: instance {} says {} (heartbeat {} ago)",
                short(beat.instance_id),
                beat.not_ready.join("; "),
                human(Self::age(beat.sent_at, now))
            ));
        }
        Err(match Self::freshest(&heard, agent) {
            Some(beat) => format!(
                "{agent} is down: its last heartbeat came {} ago from instance {}",
                human(Self::age(beat.sent_at, now)),
                short(beat.instance_id)
            ),
            None => format!(
                "{agent} is down: no heartbeat since this Conductor started {} ago",
                human(Self::age(self.started_at, now))
            ),
        })
    }

    /// Follows the heartbeats (starting from each agent's last) and judges the crew every
    /// second until shutdown, handing each alert to `alert`.
    pub async fn follow<F, Fut>(self: Arc<Self>, bus: Bus, shutdown: Shutdown, alert: F)
    where
        F: Fn(AgentAlert) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut judging = tokio::time::interval(Duration::from_secs(1).min(self.silence / 2));
        judging.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            let mut beats = match bus
                .follow(
                    streams::HEARTBEATS,
                    subjects::HEARTBEATS,
                    DeliverPolicy::LastPerSubject,
                )
                .await
            {
                Ok(beats) => beats,
                Err(error) => {
                    tracing::warn!(%error, "cannot follow heartbeats; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = judging.tick() => {
                        for change in self.judge(Utc::now()) {
                            if change.up {
                                tracing::info!(agent = %change.agent, "{}", change.text);
                            } else {
                                tracing::warn!(agent = %change.agent, "{}", change.text);
                            }
                            alert(change).await;
                        }
                    }
                    beat = beats.next() => match beat {
                        Some(Ok(message)) => match decode::<Heartbeat>(&message.payload) {
                            Ok(beat) => self.observe(beat),
                            Err(error) => tracing::warn!(%error, subject = %message.subject, "an unreadable heartbeat"),
                        },
                        Some(Err(error)) => {
                            tracing::warn!(%error, "following heartbeats interrupted");
                            break;
                        }
                        None => break,
                    },
                }
            }
        }
    }
}

fn short(instance: Uuid) -> String {
    instance.to_string()[..8].to_owned()
}

/// A duration as people read it: 45s, 2m 5s, 1h 3m.
pub fn human(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m {}s", seconds / 60, seconds % 60),
        _ => format!("{}h {}m", seconds / 3600, seconds % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(agent: AgentRole, sent_at: DateTime<Utc>, ready: bool) -> Heartbeat {
        Heartbeat {
            agent,
            sent_at,
            ready,
            not_ready: if ready {
                vec![]
            } else {
                vec!["container engine: not answering".into()]
            },
            ..infracrew_protocol::examples::heartbeat()
        }
    }

    #[test]
    fn an_agent_goes_down_after_the_silence_and_comes_back_once() {
        let start = Utc::now();
        let watch = CrewWatch::new(Duration::from_secs(120), start);
        let forge = beat(AgentRole::Forge, start, true);
        watch.observe(forge.clone());
        assert!(watch.judge(start).is_empty(), "first judgement: no news");
        assert!(
            watch
                .judge(start + chrono::Duration::seconds(100))
                .is_empty()
        );

        let later = start + chrono::Duration::seconds(121);
        let alerts = watch.judge(later);
        let forge_down: Vec<_> = alerts
            .iter()
            .filter(|alert| alert.agent == AgentRole::Forge)
            .collect();
        assert_eq!(forge_down.len(), 1, "{alerts:?}");
        assert!(!forge_down[0].up);
        assert!(
            forge_down[0]
                .text
                .contains("forge is down: no heartbeat for 2m 1s")
        );
        // The others were never heard from; down once the Conductor waited the silence too.
        assert_eq!(alerts.len(), 4, "{alerts:?}");
        assert!(watch.judge(later).is_empty(), "said once");

        watch.observe(beat(AgentRole::Forge, later, true));
        let back = watch.judge(later);
        assert_eq!(back.len(), 1);
        assert!(back[0].up && back[0].text.contains("forge is back"));
    }

    #[test]
    fn the_gate_wants_a_fresh_ready_instance_and_says_what_is_missing() {
        let start = Utc::now();
        let watch = CrewWatch::new(Duration::from_secs(120), start);
        let refusal = watch.gate(AgentRole::Forge, start).unwrap_err();
        assert_eq!(
            refusal,
            "forge is down: no heartbeat since this Conductor started 0s ago"
        );

        watch.observe(beat(AgentRole::Forge, start, false));
        let refusal = watch.gate(AgentRole::Forge, start).unwrap_err();
        assert!(
            refusal.contains("forge is not ready") && refusal.contains("container engine"),
            "{refusal}"
        );

        watch.observe(beat(AgentRole::Forge, start, true));
        assert_eq!(watch.gate(AgentRole::Forge, start), Ok(()));
        let refusal = watch
            .gate(AgentRole::Forge, start + chrono::Duration::seconds(185))
            .unwrap_err();
        assert!(
            refusal.starts_with("forge is down: its last heartbeat came 3m 5s ago"),
            "{refusal}"
        );
    }
}
