//! The bus against a real nats-server with JetStream, started per test on a free port.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the error, which is what a test should do

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use infracrew_bus::{
    Bus, ConnectArgs, ConnectError, ConsumerSettings, ConsumerSpec, Creation, Delivery,
    HandlerError, KvError, ProvisionError, ProvisionOptions, Shutdown, Topology, WorkStats,
    buckets, consumers, streams,
};
use infracrew_protocol::{
    self as protocol, DeadLetter, DeadLetterKind, GoalStatement, Message, PlanSpec, examples,
    subjects,
};
use infracrew_testkit::NatsServer;
use serde::{Deserialize, Serialize};

const PATIENCE: Duration = Duration::from_secs(20);

async fn crew_bus(server: &NatsServer) -> Bus {
    let bus = Bus::connect(&ConnectArgs::for_url(server.url()), "bus-test")
        .await
        .unwrap();
    Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .unwrap();
    bus
}

/// A test consumer on the work stream, provisioned with its own limits.
async fn test_consumer(
    bus: &Bus,
    durable: &str,
    subject: &str,
    max_deliver: i64,
    ack_wait: Duration,
) -> ConsumerSpec {
    let spec = ConsumerSpec {
        stream: streams::WORK.into(),
        durable: durable.into(),
        filter_subjects: vec![subject.into()],
        ack_wait,
        max_deliver,
        max_ack_pending: 1000,
        creation: Creation::WithTopology,
    };
    spec.ensure(bus).await.unwrap();
    spec
}

/// A server, a consumer `durable` on crew.plan.pending, and the sample plan published for it.
async fn one_sample_plan(
    durable: &str,
    max_deliver: i64,
    ack_wait: Duration,
) -> (NatsServer, Bus, ConsumerSpec) {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(&bus, durable, subjects::PLAN_PENDING, max_deliver, ack_wait).await;
    bus.publish(subjects::PLAN_PENDING, &examples::plan_spec())
        .await
        .unwrap();
    (server, bus, spec)
}

fn quick_settings() -> ConsumerSettings {
    ConsumerSettings {
        concurrency: 4,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(5),
        last_delivery_patience: Duration::ZERO,
        ..ConsumerSettings::default()
    }
}

/// Every message stored on a stream, in order, as (subject, payload).
async fn stream_messages(bus: &Bus, stream: &str) -> Vec<(String, Bytes)> {
    let mut stream = bus.jetstream().get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            out.push((message.subject.to_string(), message.payload));
        }
    }
    out
}

async fn dead_letters(bus: &Bus) -> Vec<DeadLetter> {
    stream_messages(bus, streams::DEAD_LETTERS)
        .await
        .into_iter()
        .map(|(_, payload)| protocol::decode::<DeadLetter>(&payload).unwrap())
        .collect()
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether every message was delivered and acked. Acks are not confirmed, so the server may
/// count the last ones a moment after the handler finished: it is given a second.
async fn consumer_is_drained(bus: &Bus, spec: &ConsumerSpec) -> bool {
    let stream = bus
        .jetstream()
        .get_stream_no_info(&spec.stream)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let info = stream.consumer_info(&spec.durable).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn goal_number(n: u32) -> GoalStatement {
    let mut goal = examples::goal();
    goal.goal_id = None;
    goal.reason = Some(format!("goal number {n}"));
    goal.with_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_round_trips_through_jetstream() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;

    async fn round_trip<M: Message + PartialEq + std::fmt::Debug>(
        bus: &Bus,
        subject: &str,
        message: M,
    ) {
        let published = bus.publish(subject, &message).await.unwrap();
        let stream = bus
            .jetstream()
            .get_stream_no_info(&published.stream)
            .await
            .unwrap();
        let stored = stream.get_raw_message(published.sequence).await.unwrap();
        assert_eq!(stored.subject.as_str(), subject);
        assert_eq!(
            stored
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned()),
            Some(infracrew_bus::message_id(subject, &message))
        );
        assert_eq!(
            stored.headers.get("Infracrew-Kind").map(|v| v.as_str()),
            Some(M::KIND)
        );
        let decoded: M = protocol::decode(&stored.payload).unwrap();
        assert_eq!(
            decoded,
            message,
            "{} changed on its way through JetStream",
            M::KIND
        );
    }

    round_trip(&bus, subjects::GOAL_SUBMITTED, examples::goal()).await;
    round_trip(&bus, subjects::GOAL_REJECTED, examples::goal_rejected()).await;
    round_trip(&bus, subjects::PLAN_PENDING, examples::plan_spec()).await;
    round_trip(
        &bus,
        subjects::VALIDATE_PENDING,
        examples::validate_request(),
    )
    .await;
    round_trip(
        &bus,
        subjects::VALIDATE_RESULT,
        examples::validation_result(),
    )
    .await;
    round_trip(&bus, subjects::BUILD_STATUS, examples::build_status()).await;
    round_trip(
        &bus,
        subjects::APPROVAL_DECIDED,
        examples::approval_decision(),
    )
    .await;
    round_trip(&bus, subjects::APPLY_REQUEST, examples::apply_request()).await;
    round_trip(&bus, subjects::OPS_EVENT, examples::ops_event()).await;
    round_trip(
        &bus,
        &subjects::heartbeat(protocol::AgentRole::Forge),
        examples::heartbeat(),
    )
    .await;
    round_trip(
        &bus,
        &subjects::dead_letter(subjects::GOAL_SUBMITTED),
        examples::dead_letter(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_message_id_twice_stores_one_message() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let plan = examples::plan_spec();

    let first = bus.publish(subjects::PLAN_PENDING, &plan).await.unwrap();
    let second = bus.publish(subjects::PLAN_PENDING, &plan).await.unwrap();

    assert!(!first.duplicate);
    assert!(
        second.duplicate,
        "the retry must be recognised as a duplicate"
    );
    assert_eq!(first.sequence, second.sequence);
    assert_eq!(stream_messages(&bus, streams::WORK).await.len(), 1);
}

/// A goal ordered by its number modulo 3: three keys, handled in order within each.
struct OrderedGoal(GoalStatement);

fn goal_number_of(goal: &GoalStatement) -> u32 {
    goal.reason
        .as_deref()
        .and_then(|reason| reason.strip_prefix("goal number "))
        .and_then(|number| number.parse().ok())
        .unwrap()
}

impl infracrew_bus::Inbound for OrderedGoal {
    fn decode(_subject: &str, payload: &[u8]) -> Result<Self, protocol::DecodeError> {
        protocol::decode(payload).map(OrderedGoal)
    }

    fn order_key(_subject: &str, payload: &[u8]) -> Option<String> {
        let goal: GoalStatement = protocol::decode(payload).ok()?;
        Some((goal_number_of(&goal) % 3).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_with_one_order_key_are_handled_in_order_and_other_keys_at_once() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(
        &bus,
        "order-test",
        subjects::GOAL_SUBMITTED,
        5,
        Duration::from_secs(30),
    )
    .await;
    const COUNT: u32 = 30;
    for n in 0..COUNT {
        bus.publish(subjects::GOAL_SUBMITTED, &goal_number(n))
            .await
            .unwrap();
    }

    let finished = Arc::new(Mutex::new(Vec::new()));
    let (running, most_at_once) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let shutdown = Shutdown::new();
    let handler = {
        let (finished, running, most_at_once, stop) = (
            finished.clone(),
            running.clone(),
            most_at_once.clone(),
            shutdown.clone(),
        );
        move |goal: OrderedGoal, _delivery: Delivery| {
            let (finished, running, most_at_once, stop) = (
                finished.clone(),
                running.clone(),
                most_at_once.clone(),
                stop.clone(),
            );
            async move {
                let n = goal_number_of(&goal.0);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                // Earlier messages take longer, so any reordering within a key would show.
                tokio::time::sleep(Duration::from_millis(u64::from(COUNT - n))).await;
                running.fetch_sub(1, Ordering::SeqCst);
                let mut done = finished.lock().unwrap();
                done.push(n);
                if done.len() == COUNT as usize {
                    stop.cancel();
                }
                Ok(())
            }
        }
    };
    let settings = ConsumerSettings {
        concurrency: 8,
        ..quick_settings()
    };
    let stats = Arc::new(WorkStats::default());
    tokio::time::timeout(
        PATIENCE,
        bus.consume(&spec, settings, stats, handler, shutdown),
    )
    .await
    .expect("all messages are handled")
    .unwrap();

    let finished = finished.lock().unwrap().clone();
    for key in 0..3 {
        let of_key: Vec<u32> = finished.iter().copied().filter(|n| n % 3 == key).collect();
        let mut sorted = of_key.clone();
        sorted.sort_unstable();
        assert_eq!(
            of_key, sorted,
            "key {key}'s messages were handled out of order"
        );
        assert_eq!(of_key.len(), 10);
    }
    assert!(
        most_at_once.load(Ordering::SeqCst) >= 2,
        "different keys should be handled at once"
    );
    assert!(consumer_is_drained(&bus, &spec).await);
}

/// Runs `spec` with `handler` on a task of its own, taking messages as `room` lets it.
fn consume_with_room(
    bus: &Bus,
    spec: &ConsumerSpec,
    room: tokio::sync::watch::Receiver<usize>,
    handler: impl infracrew_bus::Handler<GoalStatement>,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<Result<(), infracrew_bus::ConsumeError>> {
    let settings = ConsumerSettings {
        room: Some(room),
        ..quick_settings()
    };
    let (bus, spec, shutdown) = (bus.clone(), spec.clone(), shutdown.clone());
    tokio::spawn(async move {
        bus.consume(&spec, settings, Arc::default(), handler, shutdown)
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_takes_no_more_messages_than_each_room_its_owner_sets() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(&bus, "room-test", subjects::GOAL_SUBMITTED, 5, PATIENCE).await;
    for n in 0..4 {
        bus.publish(subjects::GOAL_SUBMITTED, &goal_number(n))
            .await
            .unwrap();
    }
    let (room, watched) = tokio::sync::watch::channel(0usize);
    let taken = Arc::new(AtomicU64::new(0));
    let handler = {
        let taken = taken.clone();
        move |_goal: GoalStatement, _delivery: Delivery| {
            let taken = taken.clone();
            async move {
                taken.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let shutdown = Shutdown::new();
    let consumer = consume_with_room(&bus, &spec, watched, handler, &shutdown);
    let taken_after = async |pause: Duration| {
        tokio::time::sleep(pause).await;
        taken.load(Ordering::SeqCst)
    };
    let settle = Duration::from_millis(500);

    assert_eq!(taken_after(settle).await, 0, "taken with no room");
    room.send_replace(1);
    assert_eq!(taken_after(settle).await, 1, "a room of one, one message");
    assert_eq!(
        taken_after(settle).await,
        1,
        "its message handled, the room is still spent"
    );
    room.send_replace(2);
    assert_eq!(taken_after(settle).await, 3, "a new room of two, two more");
    drop(room);
    assert_eq!(
        taken_after(settle).await,
        4,
        "a room no one keeps limits nothing"
    );
    eventually("every message settled", || consumer_is_drained(&bus, &spec)).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_waiting_for_room_stops_at_shutdown() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(&bus, "no-room-test", subjects::GOAL_SUBMITTED, 5, PATIENCE).await;
    bus.publish(subjects::GOAL_SUBMITTED, &goal_number(1))
        .await
        .unwrap();
    let (_room, watched) = tokio::sync::watch::channel(0usize);
    let handler = |_goal: GoalStatement, _delivery: Delivery| async { Ok(()) };
    let shutdown = Shutdown::new();
    let consumer = consume_with_room(&bus, &spec, watched, handler, &shutdown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), consumer)
        .await
        .expect("stopped at once")
        .unwrap()
        .unwrap();
    let info = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .unwrap()
        .consumer_info(&spec.durable)
        .await
        .unwrap();
    assert_eq!(info.num_pending, 1, "the message waits for the next start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nakd_message_is_redelivered_and_then_acked() {
    let (_server, bus, spec) = one_sample_plan("nak-test", 5, Duration::from_secs(30)).await;

    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let seen = deliveries.clone();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handler = move |plan: PlanSpec, delivery: Delivery| {
        let seen = seen.clone();
        let stop = stop.clone();
        async move {
            seen.lock()
                .unwrap()
                .push((plan.plan_id, delivery.delivered()));
            if delivery.delivered() == 1 {
                return Err(HandlerError::Retry("the first try fails".into()));
            }
            stop.cancel();
            Ok(())
        }
    };
    let stats = Arc::new(WorkStats::default());
    tokio::time::timeout(
        PATIENCE,
        bus.consume(&spec, quick_settings(), stats.clone(), handler, shutdown),
    )
    .await
    .expect("the consumer stops once the redelivery is handled")
    .unwrap();

    let plan_id = examples::plan_spec().plan_id;
    assert_eq!(
        *deliveries.lock().unwrap(),
        vec![(plan_id, 1), (plan_id, 2)]
    );
    assert_eq!(stats.handled.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert!(
        consumer_is_drained(&bus, &spec).await,
        "the redelivered message was acked"
    );
    assert!(dead_letters(&bus).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_go_to_dead_letters_once_and_are_not_redelivered() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(
        &bus,
        "dlq-test",
        subjects::GOAL_SUBMITTED,
        5,
        Duration::from_secs(1),
    )
    .await;

    let bad_goal = br#"{"intent":"deploy","servce":"social-intel","environment":"staging","requested_by":"dave"}"#;
    let newer_major = br#"{"schema_version":"2.0","intent":"deploy","service":"social-intel","environment":"staging","requested_by":"dave"}"#;
    let not_json = b"intent=deploy";
    for (id, payload) in [
        ("bad", &bad_goal[..]),
        ("newer", &newer_major[..]),
        ("garbage", &not_json[..]),
    ] {
        bus.publish_bytes(
            subjects::GOAL_SUBMITTED,
            "goal_statement",
            id,
            Bytes::from_static(payload),
        )
        .await
        .unwrap();
    }
    bus.publish(subjects::GOAL_SUBMITTED, &examples::goal())
        .await
        .unwrap();

    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let handler = move |_goal: GoalStatement, _delivery: Delivery| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    };
    let shutdown = Shutdown::new();
    let consumer = {
        let bus = bus.clone();
        let spec = spec.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            bus.consume(&spec, quick_settings(), Arc::default(), handler, shutdown)
                .await
        })
    };

    eventually("three dead letters", || async {
        dead_letters(&bus).await.len() >= 3
    })
    .await;
    // Longer than ack_wait and the backoff: a redelivery would show up by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    let letters = dead_letters(&bus).await;
    assert_eq!(
        letters.len(),
        3,
        "each bad message is dead-lettered exactly once"
    );
    assert_eq!(
        handled.load(Ordering::Relaxed),
        1,
        "only the valid goal reaches the handler"
    );
    assert!(
        consumer_is_drained(&bus, &spec).await,
        "bad messages are terminated, not pending"
    );

    let by_kind = |kind| letters.iter().find(|letter| letter.kind == kind).unwrap();
    let invalid = by_kind(DeadLetterKind::Invalid);
    assert_eq!(invalid.subject, subjects::GOAL_SUBMITTED);
    assert_eq!(invalid.consumer, "dlq-test");
    assert_eq!(invalid.delivered, 1);
    assert_eq!(
        invalid.payload().unwrap(),
        bad_goal.to_vec(),
        "the original bytes are kept"
    );
    let paths: HashSet<&str> = invalid.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        HashSet::from(["/servce", "/service"]),
        "{:?}",
        invalid.errors
    );
    assert_eq!(
        invalid.headers.get("Nats-Msg-Id").map(String::as_str),
        Some("bad")
    );

    let newer = by_kind(DeadLetterKind::UnsupportedVersion);
    assert!(
        newer.reason.contains("schema_version 2.0"),
        "{}",
        newer.reason
    );
    let garbage = by_kind(DeadLetterKind::Malformed);
    assert!(
        garbage.reason.contains("not valid JSON"),
        "{}",
        garbage.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_passes_on_the_last_delivery_is_tried_again_in_place_not_dead_lettered() {
    let (_server, bus, spec) = one_sample_plan("outage-test", 2, Duration::from_secs(30)).await;

    // Fails on both deliveries and once more in place, as while a stream elects its leader.
    let attempts = Arc::new(AtomicU64::new(0));
    let count = attempts.clone();
    let handler = move |_plan: PlanSpec, _delivery: Delivery| {
        let count = count.clone();
        async move {
            if count.fetch_add(1, Ordering::Relaxed) < 3 {
                return Err(HandlerError::Retry(
                    "no stream found for given subject".into(),
                ));
            }
            Ok(())
        }
    };
    let settings = ConsumerSettings {
        last_delivery_patience: Duration::from_secs(10),
        ..quick_settings()
    };
    let stats = Arc::new(WorkStats::default());
    let shutdown = Shutdown::new();
    let consumer = {
        let (bus, spec, stats, shutdown) =
            (bus.clone(), spec.clone(), stats.clone(), shutdown.clone());
        tokio::spawn(async move { bus.consume(&spec, settings, stats, handler, shutdown).await })
    };

    eventually("the message handled", || async {
        stats.handled.load(Ordering::Relaxed) == 1
    })
    .await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    assert_eq!(attempts.load(Ordering::Relaxed), 4);
    assert!(dead_letters(&bus).await.is_empty());
    assert!(consumer_is_drained(&bus, &spec).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_dead_letters_after_max_deliveries() {
    let (_server, bus, spec) = one_sample_plan("poison-test", 3, Duration::from_secs(30)).await;

    let attempts = Arc::new(AtomicU64::new(0));
    let count = attempts.clone();
    let handler = move |_plan: PlanSpec, _delivery: Delivery| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(HandlerError::Retry("the database is on fire".into()))
        }
    };
    let shutdown = Shutdown::new();
    let consumer = {
        let (bus, spec, shutdown) = (bus.clone(), spec.clone(), shutdown.clone());
        tokio::spawn(async move {
            bus.consume(&spec, quick_settings(), Arc::default(), handler, shutdown)
                .await
        })
    };

    eventually("a dead letter", || async {
        !dead_letters(&bus).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    let letters = dead_letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, DeadLetterKind::MaxDeliveries);
    assert_eq!(letters[0].delivered, 3);
    assert!(
        letters[0].reason.contains("the database is on fire"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        3,
        "no delivery after the last allowed one"
    );
    assert!(consumer_is_drained(&bus, &spec).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_message_with_in_progress_acks() {
    let (_server, bus, spec) = one_sample_plan("progress-test", 5, Duration::from_secs(1)).await;

    let calls = Arc::new(AtomicU64::new(0));
    let count = calls.clone();
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handler = move |_plan: PlanSpec, delivery: Delivery| {
        let (count, stop) = (count.clone(), stop.clone());
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            // Three times the ack deadline, reporting progress well inside it.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                delivery.in_progress().await.unwrap();
            }
            stop.cancel();
            Ok(())
        }
    };
    bus.consume(&spec, quick_settings(), Arc::default(), handler, shutdown)
        .await
        .unwrap();

    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "never redelivered while in progress"
    );
    assert!(consumer_is_drained(&bus, &spec).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stopped_after_400_of_1000_resumes_with_exactly_the_other_600() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(
        &bus,
        "resume-test",
        subjects::GOAL_SUBMITTED,
        5,
        Duration::from_secs(2),
    )
    .await;
    let published: Vec<_> = (0..1000).map(goal_number).collect();
    for goal in &published {
        bus.publish(subjects::GOAL_SUBMITTED, goal).await.unwrap();
    }

    let first_run = Arc::new(Mutex::new(Vec::new()));
    let shutdown = Shutdown::new();
    let (seen, stop) = (first_run.clone(), shutdown.clone());
    let handler = move |goal: GoalStatement, _delivery: Delivery| {
        let (seen, stop) = (seen.clone(), stop.clone());
        async move {
            let mut seen = seen.lock().unwrap();
            seen.push(goal.id());
            if seen.len() == 400 {
                stop.cancel();
            }
            Ok(())
        }
    };
    let sequential = ConsumerSettings {
        concurrency: 1,
        ..quick_settings()
    };
    bus.consume(&spec, sequential.clone(), Arc::default(), handler, shutdown)
        .await
        .unwrap();
    bus.drain().await;
    assert_eq!(first_run.lock().unwrap().len(), 400);

    // A new process: a new connection to the same durable consumer.
    let restarted = Bus::connect(&ConnectArgs::for_url(server.url()), "bus-test-2")
        .await
        .unwrap();
    let second_run = Arc::new(Mutex::new(Vec::new()));
    let shutdown = Shutdown::new();
    let seen = second_run.clone();
    let handler = move |goal: GoalStatement, _delivery: Delivery| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(goal.id());
            Ok(())
        }
    };
    let consumer = {
        let (bus, spec, shutdown) = (restarted.clone(), spec.clone(), shutdown.clone());
        tokio::spawn(async move {
            bus.consume(&spec, sequential, Arc::default(), handler, shutdown)
                .await
        })
    };
    eventually("the other 600", || async {
        second_run.lock().unwrap().len() >= 600
    })
    .await;
    // Past ack_wait: anything left unacked by the first run would have come back by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    let first = first_run.lock().unwrap().clone();
    let second = second_run.lock().unwrap().clone();
    assert_eq!(
        second.len(),
        600,
        "exactly the remaining 600, no duplicates"
    );
    let all: HashSet<_> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len(), 1000, "no message lost, none seen twice");
    let expected: HashSet<_> = published.iter().map(GoalStatement::id).collect();
    assert_eq!(all, expected);
    assert!(consumer_is_drained(&restarted, &spec).await);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    state: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_writes_once_over_nothing_or_a_deletion_with_what_it_replaces() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let locks = bus.kv::<Record>(buckets::LOCKS).await.unwrap();
    let token = |replaced: u64| Record {
        state: format!("token {}", replaced + 1),
    };

    // Never written: made from 0, one write.
    let first = locks.create_with("dev.a", token).await.unwrap();
    assert_eq!(first.value.state, "token 1");
    assert_eq!(
        locks.get("dev.a").await.unwrap().unwrap().revision,
        first.revision
    );
    // Held: refused, whatever it would write.
    assert!(matches!(
        locks.create_with("dev.a", token).await,
        Err(KvError::AlreadyExists { .. })
    ));
    // Released: made from the deletion's revision, so the next token is higher.
    let deletion = locks.delete("dev.a", first.revision).await.unwrap();
    let second = locks.create_with("dev.a", token).await.unwrap();
    assert_eq!(
        second.value.state,
        format!("token {}", deletion + 1),
        "the write directly follows the deletion it replaces"
    );
    assert_eq!(second.revision, deletion + 1);
    assert!(second.revision > first.revision);

    // A writer that kept the deletion's revision takes the key over from it in one write, as
    // create_with does once it has read the deletion; a deletion since replaced is refused.
    let deletion = locks.delete("dev.a", second.revision).await.unwrap();
    let third = token(deletion);
    let taken = locks.create_over("dev.a", deletion, token).await.unwrap();
    assert_eq!(locks.get("dev.a").await.unwrap().unwrap().value, third);
    assert!(matches!(
        locks.create_over("dev.a", deletion, token).await,
        Err(KvError::Conflict { .. })
    ));
    assert!(taken.revision > deletion);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_keys_are_listed_a_batch_at_a_time_without_the_deleted_ones() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let plans = bus.kv::<Record>(buckets::PLANS).await.unwrap();
    assert!(plans.keys().await.unwrap().is_empty(), "an empty bucket");

    // More keys than one batch fetches, one of them written twice and one deleted.
    let record = Record {
        state: "PLANNED".into(),
    };
    for index in 0..600 {
        plans
            .put(&format!("plan-{index:03}"), &record)
            .await
            .unwrap();
    }
    plans.put("plan-007", &record).await.unwrap();
    let last = plans.put("plan-599", &record).await.unwrap();
    plans.delete("plan-599", last).await.unwrap();

    let mut keys = plans.keys().await.unwrap();
    keys.sort();
    let expected: Vec<String> = (0..599).map(|index| format!("plan-{index:03}")).collect();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_compare_and_set_detects_a_concurrent_writer() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let plans = bus.kv::<Record>(buckets::PLANS).await.unwrap();

    let revision = plans
        .create(
            "plan-1",
            &Record {
                state: "PLANNED".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        plans
            .create(
                "plan-1",
                &Record {
                    state: "PLANNED".into()
                }
            )
            .await,
        Err(KvError::AlreadyExists { .. })
    ));

    // Two writers read the same revision; the first one to write wins.
    let reader_a = plans.get("plan-1").await.unwrap().unwrap();
    let reader_b = plans.get("plan-1").await.unwrap().unwrap();
    assert_eq!(reader_a.revision, revision);
    let moved = plans
        .update(
            "plan-1",
            &Record {
                state: "VALIDATING".into(),
            },
            reader_a.revision,
        )
        .await
        .unwrap();
    let lost = plans
        .update(
            "plan-1",
            &Record {
                state: "REJECTED".into(),
            },
            reader_b.revision,
        )
        .await;
    assert!(
        matches!(lost, Err(KvError::Conflict { expected, .. }) if expected == revision),
        "{lost:?}"
    );
    assert_eq!(
        plans.get("plan-1").await.unwrap().unwrap().value.state,
        "VALIDATING"
    );

    // Locks: created only if absent, released only by the holder's revision.
    let locks = bus.kv::<Record>(buckets::LOCKS).await.unwrap();
    let held = locks
        .create(
            "staging.social-intel",
            &Record {
                state: "plan-1".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        locks
            .create(
                "staging.social-intel",
                &Record {
                    state: "plan-2".into()
                }
            )
            .await,
        Err(KvError::AlreadyExists { .. })
    ));
    assert!(matches!(
        locks.delete("staging.social-intel", held + 100).await,
        Err(KvError::Conflict { .. })
    ));
    locks.delete("staging.social-intel", held).await.unwrap();
    assert!(locks.get("staging.social-intel").await.unwrap().is_none());
    assert!(moved > revision);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_twice_is_a_noop_and_conflicts_are_reported_not_recreated() {
    let server = NatsServer::start().unwrap();
    let bus = Bus::connect(&ConnectArgs::for_url(server.url()), "bus-test")
        .await
        .unwrap();
    let topology = Topology::crew(&ProvisionOptions::default());

    let first = topology.provision(&bus).await.unwrap();
    assert_eq!(
        first.created().count(),
        4 + 6 + 5,
        "4 streams, 6 buckets, a consumer per role and the Conductor's for new plans"
    );
    let second = topology.provision(&bus).await.unwrap();
    assert!(second.is_noop(), "{second:?}");

    // The reviews consumer is left to the Conductor that has somewhere to post: created
    // then, it reads from the next message on, not the stream's history.
    let reviews = topology.consumer(consumers::REVIEWS).unwrap();
    assert!(!reviews.exists(&bus).await.unwrap());
    bus.publish_with_id(subjects::OPS_EVENT, &examples::ops_event(), "before")
        .await
        .unwrap();
    assert!(reviews.ensure(&bus).await.unwrap().created);
    assert!(reviews.exists(&bus).await.unwrap());
    assert!(!reviews.ensure(&bus).await.unwrap().created);
    let pending = async || {
        bus.jetstream()
            .get_stream_no_info(streams::WORK)
            .await
            .unwrap()
            .consumer_info(consumers::REVIEWS)
            .await
            .unwrap()
            .num_pending
    };
    assert_eq!(pending().await, 0, "the ops event before it is not read");
    bus.publish_with_id(subjects::OPS_EVENT, &examples::ops_event(), "after")
        .await
        .unwrap();
    assert_eq!(pending().await, 1, "the ops event after it is");

    bus.publish(subjects::PLAN_PENDING, &examples::plan_spec())
        .await
        .unwrap();
    let shorter = ProvisionOptions {
        work_max_age: Duration::from_secs(60),
        ..Default::default()
    };
    let error = Topology::crew(&shorter).provision(&bus).await.unwrap_err();
    assert!(
        matches!(&error, ProvisionError::Conflict { name, .. } if name == streams::WORK),
        "{error}"
    );
    assert!(error.to_string().contains("max_age"), "{error}");
    assert_eq!(
        stream_messages(&bus, streams::WORK).await.len(),
        3,
        "the stream kept its messages"
    );

    let stricter = ProvisionOptions {
        max_deliver: 9,
        ..Default::default()
    };
    let error = Topology {
        streams: vec![],
        buckets: vec![],
        ..Topology::crew(&stricter)
    }
    .provision(&bus)
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("max_deliver is 5 (wanted 9)"),
        "{error}"
    );
}

fn assert_reads_no_new_plans(info: &async_nats::jetstream::consumer::Info) {
    assert!(
        !info
            .config
            .filter_subjects
            .contains(&subjects::PLAN_PENDING.to_owned()),
        "{:?}",
        info.config.filter_subjects
    );
}

/// A crew's bus with its consumers as a crew left them before new plans had a consumer of their
/// own: the Conductor's reads them too, changed further by `change`.
async fn crew_bus_from_before_new_plans_had_a_consumer(
    server: &NatsServer,
    change: impl FnOnce(&mut ConsumerSpec),
) -> (Bus, async_nats::jetstream::stream::Stream<()>) {
    let bus = crew_bus(server).await;
    let conductor = consumers::for_role(protocol::AgentRole::Conductor);
    let stream = bus
        .jetstream()
        .get_stream_no_info(streams::WORK)
        .await
        .unwrap();
    stream.delete_consumer(consumers::NEW_PLANS).await.unwrap();
    stream.delete_consumer(conductor).await.unwrap();
    let mut older = Topology::crew(&ProvisionOptions::default())
        .consumer(conductor)
        .unwrap()
        .clone();
    older
        .filter_subjects
        .push(subjects::PLAN_PENDING.to_owned());
    change(&mut older);
    older.ensure(&bus).await.unwrap();
    (bus, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crew_whose_conductor_read_new_plans_itself_gets_them_moved_to_their_own_consumer() {
    let server = NatsServer::start().unwrap();
    let (bus, stream) = crew_bus_from_before_new_plans_had_a_consumer(&server, |_| {}).await;
    let conductor = consumers::for_role(protocol::AgentRole::Conductor);
    let (first, second) = (goal_number(1), goal_number(2));
    let plan = |goal: &GoalStatement| PlanSpec {
        plan_id: protocol::PlanId::for_goal(goal.id()),
        ..examples::plan_spec()
    };
    bus.publish(subjects::PLAN_PENDING, &plan(&first))
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(conductor).await.unwrap();
    let mut taken = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = futures::StreamExt::next(&mut taken).await.unwrap().unwrap();
    message.double_ack().await.unwrap();
    bus.publish(subjects::PLAN_PENDING, &plan(&second))
        .await
        .unwrap();

    let report = Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .unwrap();
    assert!(
        report
            .created()
            .any(|item| item.name.ends_with(consumers::NEW_PLANS)),
        "{report:?}"
    );
    let new_plans = stream.consumer_info(consumers::NEW_PLANS).await.unwrap();
    assert_eq!(
        new_plans.num_pending, 1,
        "only the plan the Conductor had not settled"
    );
    let old = stream.consumer_info(conductor).await.unwrap();
    assert_reads_no_new_plans(&old);
    assert_eq!(old.num_pending, 0);
    let again = Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .unwrap();
    assert!(again.is_noop(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_conductors_moving_new_plans_at_once_both_start_and_the_plans_waiting_are_read_once() {
    let server = NatsServer::start().unwrap();
    let (bus, stream) = crew_bus_from_before_new_plans_had_a_consumer(&server, |_| {}).await;
    bus.publish(subjects::PLAN_PENDING, &examples::plan_spec())
        .await
        .unwrap();
    let other = Bus::connect(&ConnectArgs::for_url(server.url()), "second-conductor")
        .await
        .unwrap();
    let topology = Topology::crew(&ProvisionOptions::default());

    let (first, second) = tokio::join!(
        topology.provision_as(&bus, protocol::AgentRole::Conductor),
        topology.provision_as(&other, protocol::AgentRole::Conductor),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    // Both may report it created: from the same ack floor both ask for the same consumer, and
    // the server takes a create that changes nothing as done. There is one consumer either way.
    assert!(
        first
            .created()
            .chain(second.created())
            .any(|item| item.name.ends_with(consumers::NEW_PLANS)),
        "{first:?}\n{second:?}"
    );
    let new_plans = stream.consumer_info(consumers::NEW_PLANS).await.unwrap();
    assert_eq!(new_plans.num_pending, 1, "the plan waiting, once");
    assert_reads_no_new_plans(
        &stream
            .consumer_info(consumers::for_role(protocol::AgentRole::Conductor))
            .await
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_older_store_only_a_conductor_moves_new_plans_and_the_others_start_meanwhile() {
    let server = NatsServer::start().unwrap();
    let (bus, stream) = crew_bus_from_before_new_plans_had_a_consumer(&server, |_| {}).await;
    let conductor = consumers::for_role(protocol::AgentRole::Conductor);
    let topology = Topology::crew(&ProvisionOptions::default());

    let as_forge = topology
        .provision_as(&bus, protocol::AgentRole::Forge)
        .await
        .unwrap();
    assert!(as_forge.is_noop(), "{as_forge:?}");
    let old = stream.consumer_info(conductor).await.unwrap();
    assert!(
        old.config
            .filter_subjects
            .contains(&subjects::PLAN_PENDING.to_owned()),
        "an older Conductor still running keeps its new plans"
    );
    assert!(stream.consumer_info(consumers::NEW_PLANS).await.is_err());

    let as_conductor = topology
        .provision_as(&bus, protocol::AgentRole::Conductor)
        .await
        .unwrap();
    let changes: Vec<String> = as_conductor.changes().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        [
            format!(
                "consumer {}/{} created",
                streams::WORK,
                consumers::NEW_PLANS
            ),
            format!("consumer {}/{conductor} changed", streams::WORK),
        ]
    );
    assert_reads_no_new_plans(&stream.consumer_info(conductor).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plans_consumer_with_other_settings_stops_the_move_before_the_conductors_changes() {
    let server = NatsServer::start().unwrap();
    let (bus, stream) = crew_bus_from_before_new_plans_had_a_consumer(&server, |_| {}).await;
    let mut other = Topology::crew(&ProvisionOptions::default())
        .consumer(consumers::NEW_PLANS)
        .unwrap()
        .clone();
    other.max_ack_pending = 7;
    other.ensure(&bus).await.unwrap();

    let error = Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ProvisionError::Conflict { name, .. } if name.ends_with(consumers::NEW_PLANS)),
        "{error}"
    );
    let old = stream
        .consumer_info(consumers::for_role(protocol::AgentRole::Conductor))
        .await
        .unwrap();
    assert!(
        old.config
            .filter_subjects
            .contains(&subjects::PLAN_PENDING.to_owned()),
        "the Conductor's consumer still reads new plans, so none is lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_new_plans_over_changes_only_the_conductors_filter() {
    let server = NatsServer::start().unwrap();
    // An older crew's consumer, with a setting someone changed by hand as well.
    let (bus, stream) = crew_bus_from_before_new_plans_had_a_consumer(&server, |older| {
        older.max_deliver = 9;
    })
    .await;
    let conductor = consumers::for_role(protocol::AgentRole::Conductor);

    let error = Topology::crew(&ProvisionOptions::default())
        .provision(&bus)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ProvisionError::Conflict { name, .. } if name.ends_with(conductor)),
        "{error}"
    );
    assert!(error.to_string().contains("max_deliver"), "{error}");
    let old = stream.consumer_info(conductor).await.unwrap();
    assert_eq!(old.config.max_deliver, 9, "left for a person to align");
    assert_reads_no_new_plans(&old);
    assert!(stream.consumer_info(consumers::NEW_PLANS).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_problems_are_named() {
    let down = {
        let server = NatsServer::start().unwrap();
        server.url()
    };
    let error = Bus::connect(&ConnectArgs::for_url(&down), "bus-test")
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains(&down), "{error}");

    let core_only = NatsServer::start_without_jetstream().unwrap();
    let error = Bus::connect(&ConnectArgs::for_url(core_only.url()), "bus-test")
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::JetStreamUnavailable { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("nats-server -js"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_work_finish_and_acks_it() {
    let server = NatsServer::start().unwrap();
    let bus = crew_bus(&server).await;
    let spec = test_consumer(
        &bus,
        "grace-test",
        subjects::GOAL_SUBMITTED,
        5,
        Duration::from_secs(30),
    )
    .await;
    for n in 0..4 {
        bus.publish(subjects::GOAL_SUBMITTED, &goal_number(n))
            .await
            .unwrap();
    }
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let shutdown = Shutdown::new();
    let (begun, done, stop) = (started.clone(), finished.clone(), shutdown.clone());
    let handler = move |_goal: GoalStatement, _delivery: Delivery| {
        let (begun, done, stop) = (begun.clone(), done.clone(), stop.clone());
        async move {
            if begun.fetch_add(1, Ordering::SeqCst) == 3 {
                stop.cancel();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    };
    bus.consume(&spec, quick_settings(), Arc::default(), handler, shutdown)
        .await
        .unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        started.load(Ordering::SeqCst)
    );
    assert!(
        consumer_is_drained(&bus, &spec).await,
        "finished work was acked before stopping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_handler_never_answers_is_dead_lettered_from_the_advisory() {
    let (_server, bus, spec) = one_sample_plan("hang-test", 2, Duration::from_secs(1)).await;

    let calls = Arc::new(AtomicU64::new(0));
    let count = calls.clone();
    // Like a process that dies mid-message: no ack, no nak, on every delivery.
    let handler = move |_plan: PlanSpec, _delivery: Delivery| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    };
    let shutdown = Shutdown::new();
    let settings = ConsumerSettings {
        shutdown_grace: Duration::from_millis(200),
        ..quick_settings()
    };
    let consumer = {
        let (bus, spec, shutdown) = (bus.clone(), spec.clone(), shutdown.clone());
        tokio::spawn(async move {
            bus.consume(&spec, settings, Arc::default(), handler, shutdown)
                .await
        })
    };

    eventually("a dead letter from the advisory", || async {
        !dead_letters(&bus).await.is_empty()
    })
    .await;
    shutdown.cancel();
    consumer.await.unwrap().unwrap();

    let letters = dead_letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].kind, DeadLetterKind::MaxDeliveries);
    assert_eq!(
        (letters[0].delivered, letters[0].consumer.as_str()),
        (2, "hang-test")
    );
    assert!(
        letters[0].reason.contains("without an acknowledgement"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        protocol::decode::<PlanSpec>(&letters[0].payload().unwrap()).unwrap(),
        examples::plan_spec(),
        "the original message is kept"
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "delivered as often as allowed, then no more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_that_came_while_no_replica_ran_is_handled_by_the_next() {
    let (_server, bus, spec) = one_sample_plan("gap-test", 2, Duration::from_secs(1)).await;

    let calls = Arc::new(AtomicU64::new(0));
    let shutdown = Shutdown::new();
    let (count, stop) = (calls.clone(), shutdown.clone());
    // Never answers; the runner stops as soon as the last allowed delivery has begun.
    let handler = move |_plan: PlanSpec, _delivery: Delivery| {
        let (count, stop) = (count.clone(), stop.clone());
        async move {
            if count.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                stop.cancel();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    };
    let settings = ConsumerSettings {
        shutdown_grace: Duration::from_millis(100),
        ..quick_settings()
    };
    bus.consume(&spec, settings.clone(), Arc::default(), handler, shutdown)
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Past the ack deadline, with nobody running: the server gives up and advises.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        dead_letters(&bus).await.is_empty(),
        "nobody has handled the advisory yet"
    );

    let shutdown = Shutdown::new();
    let next = {
        let (bus, spec, shutdown) = (bus.clone(), spec.clone(), shutdown.clone());
        let handler = |_plan: PlanSpec, _delivery: Delivery| async { Ok(()) };
        tokio::spawn(async move {
            bus.consume(&spec, settings, Arc::default(), handler, shutdown)
                .await
        })
    };
    eventually("the dead letter from the kept advisory", || async {
        !dead_letters(&bus).await.is_empty()
    })
    .await;
    shutdown.cancel();
    next.await.unwrap().unwrap();
    let letters = dead_letters(&bus).await;
    assert_eq!(
        (letters.len(), letters[0].kind, letters[0].delivered),
        (1, DeadLetterKind::MaxDeliveries, 2)
    );
}
