//! `crew status`: every agent instance heard from lately, whether it is alive and ready, and
//! how much work waits on each consumer.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy},
    context::ConsumerInfoErrorKind,
    stream::DirectGetErrorKind,
};
use chrono::Utc;
use futures::StreamExt;
use infracrew_bus::{Bus, consumers, streams};
use infracrew_protocol::{AgentRole, Heartbeat, decode, subjects};
use serde_json::json;
use uuid::Uuid;

use crate::CliError;

/// Heartbeats read per request while collecting instances.
const BATCH: usize = 1_000;

/// One agent's instances heard from, freshest first.
struct AgentState {
    role: AgentRole,
    instances: Vec<Heartbeat>,
}

fn age(beat: &Heartbeat) -> Duration {
    (Utc::now() - beat.sent_at)
        .to_std()
        .unwrap_or(Duration::ZERO)
}

impl AgentState {
    fn last(&self) -> Option<&Heartbeat> {
        self.instances.first()
    }

    fn is_alive(&self, stale_after: Duration) -> bool {
        self.instances.iter().any(|beat| age(beat) <= stale_after)
    }

    fn is_ready(&self, stale_after: Duration) -> bool {
        self.instances
            .iter()
            .any(|beat| age(beat) <= stale_after && beat.ready)
    }
}

pub async fn show(
    bus: &Bus,
    wait: Option<Duration>,
    stale_after: Duration,
    as_json: bool,
) -> Result<ExitCode, CliError> {
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let ready = |agents: &[AgentState]| agents.iter().all(|agent| agent.is_ready(stale_after));
    // While waiting, a crew that has not provisioned its streams yet (no agent has started)
    // is just not ready; after the wait, it is an error worth showing.
    let (agents, backlogs) = loop {
        let read = async {
            Ok::<_, CliError>((
                read_agents(bus, stale_after).await?,
                read_backlogs(bus).await?,
            ))
        };
        let waiting = deadline.is_some_and(|deadline| tokio::time::Instant::now() < deadline);
        match read.await {
            Ok((agents, backlogs)) => {
                if !waiting || ready(&agents) {
                    break (agents, backlogs);
                }
            }
            Err(error) if !waiting => return Err(error),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    if as_json {
        print_json(bus, &agents, &backlogs, stale_after);
    } else {
        print_table(bus, &agents, &backlogs, stale_after);
    }
    Ok(if ready(&agents) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn instance_json(beat: &Heartbeat, stale_after: Duration) -> serde_json::Value {
    json!({
        "instance_id": beat.instance_id,
        "alive": age(beat) <= stale_after,
        "ready": beat.ready,
        "not_ready": beat.not_ready,
        "age_seconds": age(beat).as_secs_f64(),
        "version": beat.version,
        "started_at": beat.started_at,
        "last_heartbeat": beat,
    })
}

fn print_json(bus: &Bus, agents: &[AgentState], backlogs: &[Backlog], stale_after: Duration) {
    let agents: Vec<_> = agents
        .iter()
        .map(|agent| {
            json!({
                "agent": agent.role,
                "alive": agent.is_alive(stale_after),
                "ready": agent.is_ready(stale_after),
                "age_seconds": agent.last().map(|beat| age(beat).as_secs_f64()),
                "last_heartbeat": agent.last(),
                "instances": agent.instances.iter().map(|beat| instance_json(beat, stale_after)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let consumers: Vec<_> = backlogs
        .iter()
        .map(|backlog| {
            json!({"consumer": backlog.name, "pending": backlog.pending, "ack_pending": backlog.ack_pending, "redelivered": backlog.redelivered})
        })
        .collect();
    println!(
        "{}",
        json!({"nats": bus.url(), "agents": agents, "consumers": consumers})
    );
}

fn print_table(bus: &Bus, agents: &[AgentState], backlogs: &[Backlog], stale_after: Duration) {
    println!("NATS {}", bus.url());
    println!();
    let row = |cells: [&str; 9]| {
        println!(
            "{:<10} {:<6} {:<9} {:<8} {:<6} {:>14} {:>8} {:>7} {:>9}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8]
        );
    };
    row([
        "AGENT",
        "STATE",
        "INSTANCE",
        "VERSION",
        "READY",
        "LAST HEARTBEAT",
        "HANDLED",
        "FAILED",
        "IN FLIGHT",
    ]);
    for agent in agents {
        let role = agent.role.to_string();
        if agent.instances.is_empty() {
            row([&role, "DOWN", "-", "-", "-", "never", "", "", ""]);
            continue;
        }
        for beat in &agent.instances {
            let state = if age(beat) <= stale_after {
                "up"
            } else {
                "DOWN"
            };
            row([
                &role,
                state,
                &beat.instance_id.to_string()[..8],
                &beat.version,
                if beat.ready { "yes" } else { "NO" },
                &format!("{}s ago", age(beat).as_secs()),
                &beat.messages_handled.to_string(),
                &beat.messages_failed.to_string(),
                &beat.in_flight.to_string(),
            ]);
            for need in &beat.not_ready {
                println!("{:<10} not ready: {need}", "");
            }
            if let Some(error) = &beat.last_error {
                println!("{:<10} last error: {error}", "");
            }
        }
    }
    println!();
    println!(
        "{:<18} {:>8} {:>12} {:>12}",
        "CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED"
    );
    for backlog in backlogs {
        println!(
            "{:<18} {:>8} {:>12} {:>12}",
            backlog.name, backlog.pending, backlog.ack_pending, backlog.redelivered
        );
    }
}

fn read_error(reason: impl ToString) -> CliError {
    CliError::Read {
        what: "heartbeats",
        reason: reason.to_string(),
    }
}

/// Every instance that sent a heartbeat within a few staleness windows, and for an agent
/// with none, its last heartbeat whenever it came.
async fn read_agents(bus: &Bus, stale_after: Duration) -> Result<Vec<AgentState>, CliError> {
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::HEARTBEATS)
        .await
        .map_err(read_error)?;
    let mut latest: BTreeMap<Uuid, Heartbeat> = BTreeMap::new();
    let mut keep = |beat: Heartbeat| {
        let newer = latest
            .get(&beat.instance_id)
            .is_none_or(|known| known.sent_at <= beat.sent_at);
        if newer {
            latest.insert(beat.instance_id, beat);
        }
    };

    let lookback = (stale_after * 4).max(Duration::from_secs(120));
    let since = Utc::now() - chrono::Duration::from_std(lookback).unwrap_or_default();
    let start_time =
        time::OffsetDateTime::from_unix_timestamp(since.timestamp()).map_err(read_error)?;
    let recent = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            filter_subject: subjects::HEARTBEATS.to_owned(),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .map_err(read_error)?;
    loop {
        let mut batch = recent
            .fetch()
            .max_messages(BATCH)
            .messages()
            .await
            .map_err(read_error)?;
        let mut read = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(read_error)?;
            read += 1;
            if let Ok(beat) = decode::<Heartbeat>(&message.payload) {
                keep(beat);
            }
        }
        if read < BATCH {
            break;
        }
    }
    let _ = stream.delete_consumer(&recent.cached_info().name).await;

    for role in AgentRole::ALL {
        // No message on the subject yet reads as "never"; anything else that keeps a
        // heartbeat from being read is said, so it is not mistaken for a silent agent.
        match stream
            .direct_get_last_for_subject(subjects::heartbeat(role))
            .await
        {
            Ok(message) => match decode::<Heartbeat>(&message.payload) {
                Ok(beat) => keep(beat),
                Err(error) => eprintln!("crew: {role}'s last heartbeat is unreadable: {error}"),
            },
            Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => {}
            Err(error) => return Err(read_error(error)),
        }
    }

    Ok(AgentRole::ALL
        .into_iter()
        .map(|role| {
            let mut instances: Vec<Heartbeat> = latest
                .values()
                .filter(|beat| beat.agent == role)
                .cloned()
                .collect();
            instances.sort_by_key(|beat| std::cmp::Reverse(beat.sent_at));
            AgentState { role, instances }
        })
        .collect())
}

/// A durable consumer's backlog.
struct Backlog {
    name: String,
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
}

async fn read_backlogs(bus: &Bus) -> Result<Vec<Backlog>, CliError> {
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
        .chain([consumers::NEW_PLANS, consumers::REVIEWS]);
    for name in durables {
        let info = match stream.consumer_info(name).await {
            Ok(info) => info,
            // Reviews' is created only by a Conductor with a review channel, new plans' by a
            // Conductor of this version on a store from before it.
            Err(error)
                if [consumers::REVIEWS, consumers::NEW_PLANS].contains(&name)
                    && matches!(error.kind(), ConsumerInfoErrorKind::NotFound) =>
            {
                continue;
            }
            Err(error) => {
                return Err(CliError::Read {
                    what: "consumer state",
                    reason: error.to_string(),
                });
            }
        };
        backlogs.push(Backlog {
            name: name.to_owned(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
        });
    }
    Ok(backlogs)
}
