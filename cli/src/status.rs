//! `crew status`: who is alive, and how much work waits.

use std::{process::ExitCode, time::Duration};

use async_nats::jetstream::stream::DirectGetErrorKind;
use chrono::Utc;
use infracrew_bus::{Bus, consumers, streams};
use infracrew_protocol::{AgentRole, Heartbeat, decode, subjects};
use serde_json::json;

use crate::CliError;

/// One agent's last heartbeat, if any.
struct AgentState {
    role: AgentRole,
    last: Option<Heartbeat>,
}

impl AgentState {
    fn age(&self) -> Option<Duration> {
        let last = self.last.as_ref()?;
        (Utc::now() - last.sent_at)
            .to_std()
            .ok()
            .or(Some(Duration::ZERO))
    }

    fn is_fresh(&self, stale_after: Duration) -> bool {
        self.age().is_some_and(|age| age <= stale_after)
    }
}

pub async fn show(
    bus: &Bus,
    wait: Option<Duration>,
    stale_after: Duration,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    // While waiting, a crew that has not provisioned its streams yet (no agent has started)
    // is just not ready; after the wait, it is an error worth showing.
    let (agents, backlogs) = loop {
        let read =
            async { Ok::<_, CliError>((read_agents(bus).await?, read_backlogs(bus).await?)) };
        let waiting = deadline.is_some_and(|deadline| tokio::time::Instant::now() < deadline);
        match read.await {
            Ok((agents, backlogs)) => {
                if !waiting || agents.iter().all(|agent| agent.is_fresh(stale_after)) {
                    break (agents, backlogs);
                }
            }
            Err(error) if !waiting => return Err(error),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let all_fresh = agents.iter().all(|agent| agent.is_fresh(stale_after));

    if as_json {
        let agents: Vec<_> = agents
            .iter()
            .map(|agent| {
                json!({
                    "agent": agent.role,
                    "alive": agent.is_fresh(stale_after),
                    "age_seconds": agent.age().map(|age| age.as_secs_f64()),
                    "last_heartbeat": agent.last,
                })
            })
            .collect();
        let consumers: Vec<_> = backlogs
            .iter()
            .map(|(name, pending, ack_pending, redelivered)| {
                json!({"consumer": name, "pending": pending, "ack_pending": ack_pending, "redelivered": redelivered})
            })
            .collect();
        println!(
            "{}",
            json!({"nats": bus.url(), "agents": agents, "consumers": consumers})
        );
    } else {
        println!("NATS {}", bus.url());
        println!();
        println!(
            "{:<10} {:<6} {:<9} {:<8} {:>14} {:>8} {:>7} {:>9}",
            "AGENT",
            "STATE",
            "INSTANCE",
            "VERSION",
            "LAST HEARTBEAT",
            "HANDLED",
            "FAILED",
            "IN FLIGHT"
        );
        for agent in &agents {
            let state = if agent.is_fresh(stale_after) {
                "up"
            } else {
                "DOWN"
            };
            match (&agent.last, agent.age()) {
                (Some(beat), Some(age)) => println!(
                    "{:<10} {:<6} {:<9} {:<8} {:>14} {:>8} {:>7} {:>9}",
                    agent.role,
                    state,
                    &beat.instance_id.to_string()[..8],
                    beat.version,
                    format!("{}s ago", age.as_secs()),
                    beat.messages_handled,
                    beat.messages_failed,
                    beat.in_flight
                ),
                _ => println!(
                    "{:<10} {:<6} {:<9} {:<8} {:>14}",
                    agent.role, state, "-", "-", "never"
                ),
            }
        }
        println!();
        println!(
            "{:<10} {:>8} {:>12} {:>12}",
            "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"
        );
        for (name, pending, ack_pending, redelivered) in &backlogs {
            println!("{name:<10} {pending:>8} {ack_pending:>12} {redelivered:>12}");
        }
    }
    Ok(if all_fresh {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn read_agents(bus: &Bus) -> Result<Vec<AgentState>, CliError> {
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::HEARTBEATS)
        .await
        .map_err(|error| CliError::Read {
            what: "heartbeats",
            reason: error.to_string(),
        })?;
    let mut agents = Vec::new();
    for role in AgentRole::ALL {
        // No message on the subject yet reads as "never"; anything else that keeps a
        // heartbeat from being read is said, so it is not mistaken for a silent agent.
        let last = match stream
            .direct_get_last_for_subject(subjects::heartbeat(role))
            .await
        {
            Ok(message) => match decode::<Heartbeat>(&message.payload) {
                Ok(beat) => Some(beat),
                Err(error) => {
                    eprintln!("crew: {role}'s last heartbeat is unreadable: {error}");
                    None
                }
            },
            Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => None,
            Err(error) => {
                return Err(CliError::Read {
                    what: "heartbeats",
                    reason: error.to_string(),
                });
            }
        };
        agents.push(AgentState { role, last });
    }
    Ok(agents)
}

async fn read_backlogs(bus: &Bus) -> Result<Vec<(String, u64, usize, usize)>, CliError> {
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .map_err(|error| CliError::Read {
            what: "the work stream",
            reason: error.to_string(),
        })?;
    let mut backlogs = Vec::new();
    let durables = AgentRole::ALL
        .into_iter()
        .map(consumers::for_role)
        .chain([consumers::REVIEWS]);
    for name in durables {
        let info = stream
            .consumer_info(name)
            .await
            .map_err(|error| CliError::Read {
                what: "consumer state",
                reason: error.to_string(),
            })?;
        backlogs.push((
            name.to_owned(),
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
        ));
    }
    Ok(backlogs)
}
