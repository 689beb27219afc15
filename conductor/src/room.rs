//! How many new plans a Conductor may take: room while the work on plans already started is
//! short.
//!
//! Behind, a Conductor that took every new plan as it came put it in the same queues as the
//! messages that finish plans: each plan in hand made every other one wait longer, and hold its
//! service's lock longer, so that plans behind it queued on the lock. With a room, new plans
//! wait in the stream, where they cost nothing, while the crew finishes what it started.
//!
//! The work on started plans is read from the server: the messages pending or unacknowledged
//! on the consumers that carry a started plan forward (`conductor`, `forge`, `sentinel`), and
//! the new plans taken but not yet settled. Each started plan has about one such message at a
//! time. Every replica reads the same figures, so replicas sharing those consumers agree on the
//! room, whichever of them started a plan.

use std::time::{Duration, Instant};

use futures::StreamExt;
use infracrew_bus::{Bus, Shutdown, consumers, streams};
use infracrew_protocol::AgentRole;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

/// Messages on started plans the crew may have waiting before a Conductor takes no new plans:
/// about a second of the crew's work at full speed, so a crew that keeps up never waits.
pub const STARTED_WORK_AT_MOST: u64 = 1024;

/// How often the backlog is read: the limit is about a second of the crew's work, so a room
/// read this often never lets the crew run dry. Each read sets a fresh room
/// (`ConsumerSettings::room`), so replicas taking new plans at once may each take the room
/// they read.
const READ_EVERY: Duration = Duration::from_millis(200);

/// How long one read of the backlog may take before it counts as failed.
const READ_PATIENCE: Duration = Duration::from_secs(1);

/// How long reads may fail before new plans are let in regardless. Until then the room last
/// read stands: a server too busy to answer in time is no reason to give it more work.
const OPEN_AFTER: Duration = Duration::from_secs(5);

/// The consumers whose messages move a plan already started.
const STARTED_WORK: [AgentRole; 3] = [AgentRole::Conductor, AgentRole::Forge, AgentRole::Sentinel];

/// Keeps `room` set to the number of new plans that may be taken, until shutdown. When the
/// backlog cannot be read for a while, new plans are let in: a throttle that stopped the crew
/// whenever the server could not answer would do more harm than a backlog.
pub async fn keep_room(bus: Bus, room: watch::Sender<usize>, gauge: Gauge, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(READ_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    let mut letting_in = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let read = tokio::time::timeout(READ_PATIENCE, started_work(&bus))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {READ_PATIENCE:?}")));
        let backlog = match read {
            Ok(backlog) => {
                failing_since = None;
                if std::mem::take(&mut letting_in) {
                    tracing::info!(
                        backlog,
                        "the crew's backlog is read again; new plans wait for room"
                    );
                }
                backlog
            }
            Err(error) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < OPEN_AFTER {
                    continue;
                }
                if !std::mem::replace(&mut letting_in, true) {
                    tracing::warn!(%error, failing_for = ?since.elapsed(), "the crew's backlog cannot be read; new plans are let in, up to a room's worth per read, until it can");
                }
                0
            }
        };
        let free = room_for(backlog);
        gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
        if room.send(free).is_err() {
            return;
        }
    }
}

/// The room the backlog leaves.
fn room_for(backlog: u64) -> usize {
    usize::try_from(STARTED_WORK_AT_MOST.saturating_sub(backlog)).unwrap_or(usize::MAX)
}

/// Messages on started plans that the crew's consumers have not settled, and new plans taken
/// but not settled: read in one request that lists the work stream's consumers.
async fn started_work(bus: &Bus) -> Result<u64, String> {
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .map_err(|error| error.to_string())?;
    let mut infos = stream.consumers();
    let mut backlog = 0;
    // By name, each once: a listing's pages can repeat an entry.
    let mut counted = std::collections::HashSet::new();
    while let Some(info) = infos.next().await {
        let info = info.map_err(|error| error.to_string())?;
        let durable = info.config.durable_name.clone().unwrap_or_default();
        if STARTED_WORK
            .map(consumers::for_role)
            .contains(&durable.as_str())
        {
            if counted.insert(durable) {
                backlog += info.num_pending + info.num_ack_pending as u64;
            }
        } else if durable == consumers::NEW_PLANS && counted.insert(durable) {
            // New plans waiting to be taken are what the room holds back.
            backlog += info.num_ack_pending as u64;
        }
    }
    let missing: Vec<&str> = STARTED_WORK
        .map(consumers::for_role)
        .into_iter()
        .filter(|durable| !counted.contains(*durable))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the work stream lists no consumer {}",
            missing.join(", ")
        ));
    }
    Ok(backlog)
}

#[cfg(test)]
mod tests {
    use infracrew_bus::{ConnectArgs, ProvisionOptions, Topology};
    use infracrew_protocol::{examples, subjects};
    use infracrew_testkit::NatsServer;

    use super::*;

    /// The room every replica reads: a backlog on Forge's consumer closes it, whoever started
    /// the plans, and it opens again as the backlog goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_room_closes_while_the_crew_has_a_backlog_of_started_plans() {
        let server = NatsServer::start().unwrap();
        let bus = Bus::connect(&ConnectArgs::for_url(server.url()), "room-test")
            .await
            .unwrap();
        Topology::crew(&ProvisionOptions::default())
            .provision(&bus)
            .await
            .unwrap();
        let (sender, mut room) = watch::channel(0);
        let shutdown = Shutdown::new();
        let keeper = tokio::spawn(keep_room(
            bus.clone(),
            sender,
            Gauge::default(),
            shutdown.clone(),
        ));
        room.changed().await.unwrap();
        assert_eq!(*room.borrow_and_update(), 1024, "no backlog");

        let plan = examples::plan_spec();
        let routed = async |from: u64, count: u64| {
            for n in from..from + count {
                bus.publish_with_id(subjects::PLAN_ROUTED, &plan, &format!("routed-{n}"))
                    .await
                    .unwrap();
            }
        };
        let until = async |room: &mut watch::Receiver<usize>, wanted: fn(usize) -> bool, what| {
            let seen = async {
                while !wanted(*room.borrow_and_update()) {
                    room.changed().await.unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(15), seen)
                .await
                .unwrap_or_else(|_| panic!("{what}"));
        };
        // New plans waiting to be taken are not work on started plans.
        bus.publish(subjects::PLAN_PENDING, &plan).await.unwrap();
        routed(0, STARTED_WORK_AT_MOST - 1).await;
        until(
            &mut room,
            |free| free == 1,
            "one short of the limit, room for one",
        )
        .await;
        routed(STARTED_WORK_AT_MOST - 1, 1).await;
        until(
            &mut room,
            |free| free == 0,
            "a backlog on Forge's consumer closes the room",
        )
        .await;

        let stream = bus
            .jetstream()
            .get_stream_no_info(streams::WORK)
            .await
            .unwrap();
        let forge: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(consumers::for_role(AgentRole::Forge))
            .await
            .unwrap();
        let mut batch = forge
            .fetch()
            .max_messages(STARTED_WORK_AT_MOST as usize)
            .messages()
            .await
            .unwrap();
        while let Some(message) = futures::StreamExt::next(&mut batch).await {
            message.unwrap().double_ack().await.unwrap();
        }
        until(
            &mut room,
            |free| free > 0,
            "the backlog settled opens the room",
        )
        .await;

        routed(STARTED_WORK_AT_MOST, STARTED_WORK_AT_MOST).await;
        until(&mut room, |free| free == 0, "a new backlog closes it again").await;
        stream
            .delete_consumer(consumers::for_role(AgentRole::Forge))
            .await
            .unwrap();
        let failing_from = Instant::now();
        until(
            &mut room,
            |free| free > 0,
            "a backlog that cannot be read lets new plans in",
        )
        .await;
        assert!(
            failing_from.elapsed() >= OPEN_AFTER - READ_EVERY,
            "the room last read stood for a while first: {:?}",
            failing_from.elapsed()
        );
        shutdown.cancel();
        keeper.await.unwrap();
    }

    #[test]
    fn the_room_is_what_the_backlog_leaves_of_the_limit() {
        assert_eq!(room_for(0), 1024);
        assert_eq!(room_for(1000), 24);
        assert_eq!(room_for(1024), 0);
        assert_eq!(room_for(50_000), 0);
    }
}
