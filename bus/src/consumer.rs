//! Durable pull consumers with explicit acks, backoff, dead letters and graceful shutdown.
//!
//! A message is acked only after its handler succeeds. A transient failure is nak'd with a
//! growing delay; undecodable bytes, a permanent refusal, or a failure on the last allowed
//! delivery go to dead letters (`crew.dlq.<subject>`) with the reason and the original
//! bytes, and are terminated so they are never redelivered.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use infracrew_protocol::{
    DeadLetter, DeadLetterKind, DecodeError, FieldError, Message, SchemaVersion, decode, subjects,
};
use serde::Deserialize;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    Bus, ConsumerSpec, PublishError, Shutdown, metrics::ConsumerMetrics,
    provision::max_deliveries_subject, streams, trace::TraceContext,
};

/// How long one pull request waits for messages; also the longest shutdown waits for it.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Pause before asking again after a failed pull request (the server may be restarting).
const PULL_RETRY: Duration = Duration::from_millis(250);
/// Pull failures in a row after which the consumer's existence is checked.
const GONE_CHECK_AFTER: u32 = 3;

/// A type a consumer decodes its messages into: one message type, or an enum over the
/// subjects of a consumer that reads several.
pub trait Inbound: Sized + Send + 'static {
    /// Decodes a message that arrived on `subject`.
    fn decode(subject: &str, payload: &[u8]) -> Result<Self, DecodeError>;

    /// What orders this message: one process handles messages with the same key one after
    /// another, in the order they arrived, and others at once. `None` (the default, and
    /// for bytes that do not decode) orders nothing.
    fn order_key(_subject: &str, _payload: &[u8]) -> Option<String> {
        None
    }
}

impl<M: Message> Inbound for M {
    fn decode(_subject: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        decode::<M>(payload)
    }
}

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (a dependency is down, a lock is held): nak'd with backoff,
    /// dead-lettered once the deliveries run out.
    #[error("{0}")]
    Retry(String),
    /// Will never succeed: dead-lettered now with this reason.
    #[error("{0}")]
    Reject(String),
}

/// Handles decoded messages of type `T`.
pub trait Handler<T>: Send + Sync + 'static {
    fn handle(
        &self,
        message: T,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<T, F, Fut> Handler<T> for F
where
    F: Fn(T, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(
        &self,
        message: T,
        delivery: Delivery,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(message, delivery)
    }
}

/// The delivery a handler is working on.
#[derive(Debug, Clone)]
pub struct Delivery {
    message: Arc<jetstream::Message>,
    subject: String,
    stream_sequence: u64,
    delivered: u64,
}

impl Delivery {
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Position in the stream, stable across redeliveries.
    pub fn stream_sequence(&self) -> u64 {
        self.stream_sequence
    }

    /// 1 on the first delivery.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Tells the server the handler is still working, resetting the ack deadline, so long
    /// work is not redelivered to another replica meanwhile.
    pub async fn in_progress(&self) -> Result<(), ConsumeError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|error| ConsumeError::Ack(error.to_string()))
    }
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Messages handled at once.
    pub concurrency: usize,
    /// Delay before the first redelivery of a nak'd message; doubles on each delivery.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long in-flight handlers may finish after shutdown before they are nak'd.
    pub shutdown_grace: Duration,
    /// How long a handler failing on a message's last delivery is tried again in place
    /// before the message goes to dead letters.
    pub last_delivery_patience: Duration,
    /// How many messages this consumer may take, set afresh by its owner: each value it sets
    /// lets the consumer take that many more, and no more until the next. `None` takes as many
    /// as it has free slots.
    pub room: Option<watch::Receiver<usize>>,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            // Most handlers wait on the bus, not the CPU; and the more slots are free, the more
            // messages one pull request brings (at 16, a plan cost about a third more CPU).
            concurrency: 128,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            last_delivery_patience: Duration::from_secs(120),
            room: None,
        }
    }
}

impl ConsumerSettings {
    fn backoff(&self, delivered: u64) -> Duration {
        let exponent = delivered.saturating_sub(1).min(16) as u32;
        self.backoff_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.backoff_max)
    }
}

/// One process's work: totals for its heartbeats, and per-subject metrics for `/metrics`.
#[derive(Debug, Default)]
pub struct WorkStats {
    pub handled: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub in_flight: AtomicU32,
    pub metrics: ConsumerMetrics,
    last_error: Mutex<Option<String>>,
}

impl WorkStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|guard| guard.clone())
            .unwrap_or(None)
    }

    fn record_error(&self, error: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut guard) = self.last_error.lock() {
            *guard = Some(error.to_owned());
        }
    }
}

/// Why a consumer stopped or could not settle a message.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error(
        "consumer {durable} on stream {stream} is missing or unreadable: {reason}. Agents provision it at start: restart the agent, or check the server's JetStream state"
    )]
    Bind {
        stream: String,
        durable: String,
        reason: String,
    },
    #[error(
        "consumer {durable} on stream {stream} no longer exists (deleted while in use); restart the agent to provision it again"
    )]
    Gone { stream: String, durable: String },
    #[error("pulling from consumer {durable} failed: {reason}")]
    Pull { durable: String, reason: String },
    #[error("acknowledging a message failed: {0}")]
    Ack(String),
    #[error("publishing a dead letter failed: {0}")]
    DeadLetter(#[from] PublishError),
}

impl Bus {
    /// Reads `spec`'s durable consumer until `shutdown` fires, handing each decoded message
    /// to `handler`. On shutdown it stops pulling, lets in-flight handlers finish within the
    /// grace period, and naks the rest so they are redelivered at once elsewhere.
    pub async fn consume<T, H>(
        &self,
        spec: &ConsumerSpec,
        settings: ConsumerSettings,
        stats: Arc<WorkStats>,
        handler: H,
        shutdown: Shutdown,
    ) -> Result<(), ConsumeError>
    where
        T: Inbound,
        H: Handler<T>,
    {
        let bind_error = |reason: String| ConsumeError::Bind {
            stream: spec.stream.clone(),
            durable: spec.durable.clone(),
            reason,
        };
        let consumer: jetstream::consumer::PullConsumer = self
            .jetstream()
            .get_consumer_from_stream(&spec.durable, &spec.stream)
            .await
            .map_err(|error| bind_error(error.to_string()))?;
        let _advisories = self.dead_letter_advisories(spec, shutdown.clone()).await;

        let context = Arc::new(Settle {
            bus: self.clone(),
            spec: spec.clone(),
            settings: settings.clone(),
            stats,
            handler,
        });
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
        let in_flight: Arc<Mutex<HashMap<u64, Arc<jetstream::Message>>>> = Arc::default();
        // Jobs waiting behind a running one with the same order key.
        let queues: Arc<Mutex<HashMap<String, VecDeque<Job>>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let mut next_task = 0u64;

        // One pull request at a time, for as many messages as there are free handler slots,
        // so nothing is fetched that cannot start at once and shutdown can hand back exactly
        // what was fetched but not started.
        let mut failures = 0u32;
        let mut stopped_by: Option<ConsumeError> = None;
        let mut room = settings.room.clone();
        // Messages taken since the room was last set.
        let mut taken_of_room = 0usize;
        'pulling: while !shutdown.is_cancelled() {
            // Pull failures are expected while the server restarts; many in a row may mean the
            // consumer itself is gone, which no retry mends.
            if failures >= GONE_CHECK_AFTER && self.consumer_is_gone(spec).await {
                stopped_by = Some(ConsumeError::Gone {
                    stream: spec.stream.clone(),
                    durable: spec.durable.clone(),
                });
                break;
            }
            let first_permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let free = match &mut room {
                Some(room) => match wait_for_room(room, &mut taken_of_room, &shutdown).await {
                    Some(free) => free,
                    None => break,
                },
                None => usize::MAX,
            };
            let wanted = (permits.available_permits() + 1).min(free);
            let mut batch = match consumer
                .batch()
                .max_messages(wanted)
                .expires(PULL_EXPIRES)
                .messages()
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(durable = %spec.durable, %error, failures, "pull request failed; retrying");
                    drop(first_permit);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(PULL_RETRY) => continue,
                    }
                }
            };
            let mut permit = Some(first_permit);
            loop {
                let next = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        give_back_rest_of_batch(&mut batch).await;
                        break 'pulling;
                    }
                    next = batch.next() => next,
                };
                let message = match next {
                    None => break,
                    Some(Ok(message)) => {
                        failures = 0;
                        taken_of_room += 1;
                        Arc::new(message)
                    }
                    Some(Err(error)) => {
                        failures += 1;
                        tracing::warn!(durable = %spec.durable, %error, failures, "pull interrupted");
                        break;
                    }
                };
                let permit = match permit.take() {
                    Some(permit) => permit,
                    // The batch asked only for free slots, and only this loop takes them.
                    None => match permits.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break 'pulling,
                    },
                };
                while tasks.try_join_next().is_some() {}
                next_task += 1;
                lock(&in_flight).insert(next_task, message.clone());
                let job = Job {
                    id: next_task,
                    message,
                    _permit: permit,
                };
                let Some(key) = T::order_key(&job.message.subject, &job.message.payload) else {
                    let (context, in_flight) = (context.clone(), in_flight.clone());
                    tasks.spawn(async move { context.run::<T>(job, &in_flight).await });
                    continue;
                };
                // A task already handling this key takes the job after the ones before it.
                let mut waiting = lock(&queues);
                if let Some(queue) = waiting.get_mut(&key) {
                    queue.push_back(job);
                    continue;
                }
                waiting.insert(key.clone(), VecDeque::new());
                drop(waiting);
                let (context, in_flight, queues) =
                    (context.clone(), in_flight.clone(), queues.clone());
                tasks.spawn(async move {
                    let mut job = job;
                    loop {
                        context.run::<T>(job, &in_flight).await;
                        let mut waiting = lock(&queues);
                        match waiting.get_mut(&key).and_then(VecDeque::pop_front) {
                            Some(next) => job = next,
                            None => {
                                waiting.remove(&key);
                                break;
                            }
                        }
                    }
                });
            }
        }

        let finished = tokio::time::timeout(settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tasks.abort_all();
            let unfinished: Vec<_> = lock(&in_flight)
                .drain()
                .map(|(_, message)| message)
                .collect();
            tracing::warn!(
                durable = %spec.durable,
                count = unfinished.len(),
                "handlers did not finish within the shutdown grace; returning their messages"
            );
            for message in unfinished {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
        }
        // Acks are not confirmed one by one: the finished work's acks reach the server before
        // this returns, so a consumer started next does not get that work again.
        if let Err(error) = self.client().flush().await {
            tracing::warn!(durable = %spec.durable, %error, "could not flush the last acks; their messages will be redelivered");
        }
        stopped_by.map_or(Ok(()), Err)
    }

    /// Whether the server says the consumer does not exist (any other answer is not proof).
    async fn consumer_is_gone(&self, spec: &ConsumerSpec) -> bool {
        let Ok(stream) = self.jetstream().get_stream_no_info(&spec.stream).await else {
            return false;
        };
        matches!(
            stream.consumer_info(&spec.durable).await,
            Err(error) if matches!(error.kind(), async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound)
        )
    }

    /// Dead-letters messages the server stopped redelivering because their handler never
    /// answered (the process died, or the ack deadline passed, on every delivery). The
    /// advisories are kept in a stream and read through a durable consumer, so one that came
    /// while no replica ran is handled when one starts.
    async fn dead_letter_advisories(
        &self,
        spec: &ConsumerSpec,
        shutdown: Shutdown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(format!("{}-max-deliveries", spec.durable)),
            filter_subject: max_deliveries_subject(&spec.stream, &spec.durable),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        };
        let consumer = match self
            .jetstream()
            .get_stream_no_info(streams::ADVISORIES)
            .await
        {
            Ok(stream) => {
                stream
                    .get_or_create_consumer(
                        &config.durable_name.clone().unwrap_or_default(),
                        config,
                    )
                    .await
            }
            Err(error) => {
                tracing::warn!(%error, "no advisories stream: messages whose handler never answers will not be dead-lettered");
                return None;
            }
        };
        let mut advisories = match consumer {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot read max-deliveries advisories");
                    return None;
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot bind the max-deliveries advisory consumer");
                return None;
            }
        };
        let bus = self.clone();
        let spec = spec.clone();
        Some(tokio::spawn(async move {
            loop {
                let advisory = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    advisory = advisories.next() => match advisory {
                        Some(Ok(advisory)) => advisory,
                        Some(Err(error)) => {
                            tracing::warn!(%error, "reading advisories interrupted");
                            continue;
                        }
                        None => break,
                    },
                };
                match bus
                    .dead_letter_from_advisory(&spec, &advisory.payload)
                    .await
                {
                    Ok(()) => {
                        let _ = advisory.double_ack().await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "dead-lettering after max deliveries failed; retrying");
                        let _ = advisory.ack_with(AckKind::Nak(Some(PULL_RETRY * 4))).await;
                    }
                }
            }
        }))
    }

    async fn dead_letter_from_advisory(
        &self,
        spec: &ConsumerSpec,
        payload: &[u8],
    ) -> Result<(), ConsumeError> {
        #[derive(Deserialize)]
        struct MaxDeliveries {
            stream_seq: u64,
            deliveries: u64,
        }
        let advisory: MaxDeliveries =
            serde_json::from_slice(payload).map_err(|error| ConsumeError::Pull {
                durable: spec.durable.clone(),
                reason: error.to_string(),
            })?;
        let stream = self
            .jetstream()
            .get_stream_no_info(&spec.stream)
            .await
            .map_err(|error| ConsumeError::Pull {
                durable: spec.durable.clone(),
                reason: error.to_string(),
            })?;
        let original = stream
            .get_raw_message(advisory.stream_seq)
            .await
            .map_err(|error| ConsumeError::Pull {
                durable: spec.durable.clone(),
                reason: error.to_string(),
            })?;
        let letter = DeadLetter {
            schema_version: SchemaVersion::CURRENT,
            subject: original.subject.to_string(),
            stream: spec.stream.clone(),
            stream_sequence: advisory.stream_seq,
            consumer: spec.durable.clone(),
            delivered: advisory.deliveries,
            kind: DeadLetterKind::MaxDeliveries,
            reason: format!(
                "delivered {} times without an acknowledgement (the handler crashed or overran the ack deadline each time)",
                advisory.deliveries
            ),
            errors: Vec::new(),
            headers: header_map(&original.headers),
            payload_base64: DeadLetter::encode_payload(&original.payload),
            dead_at: Utc::now(),
        };
        self.publish(&subjects::dead_letter(&letter.subject), &letter)
            .await?;
        Ok(())
    }
}

/// Waits until `room` lets the consumer take a message, and says how many it may take; `None`
/// when shutdown comes first. `taken` counts the messages taken since the room was last set,
/// and starts again at each new value. A room whose owner is gone limits nothing.
async fn wait_for_room(
    room: &mut watch::Receiver<usize>,
    taken: &mut usize,
    shutdown: &Shutdown,
) -> Option<usize> {
    loop {
        let free = {
            let set = room.borrow_and_update();
            // Read with the value, so a value set in between is never taken as seen before.
            if set.has_changed() {
                *taken = 0;
            }
            set.saturating_sub(*taken)
        };
        if free > 0 {
            return Some(free);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            changed = room.changed() => match changed {
                Ok(()) => *taken = 0,
                Err(_) => return Some(usize::MAX),
            },
        }
    }
}

/// Naks what the open pull request still delivers, so it is redelivered at once.
async fn give_back_rest_of_batch(batch: &mut jetstream::consumer::pull::Batch) {
    let drained = tokio::time::timeout(PULL_EXPIRES, async {
        while let Some(Ok(message)) = batch.next().await {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::debug!("the last pull request did not end in time");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header_map(headers: &async_nats::HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .map(|(name, values)| {
            let joined: Vec<&str> = values.iter().map(|value| value.as_str()).collect();
            (name.to_string(), joined.join(", "))
        })
        .collect()
}

/// A fetched message with the handler slot it holds until it is settled.
struct Job {
    id: u64,
    message: Arc<jetstream::Message>,
    _permit: OwnedSemaphorePermit,
}

/// What a message task needs to settle one message.
struct Settle<H> {
    bus: Bus,
    spec: ConsumerSpec,
    settings: ConsumerSettings,
    stats: Arc<WorkStats>,
    handler: H,
}

/// How one delivery ended.
enum Outcome {
    Done,
    Retry(String),
    Dead {
        kind: DeadLetterKind,
        reason: String,
        errors: Vec<FieldError>,
    },
}

impl<H> Settle<H> {
    /// Settles `job`'s message and frees its slot.
    async fn run<T>(&self, job: Job, in_flight: &Mutex<HashMap<u64, Arc<jetstream::Message>>>)
    where
        T: Inbound,
        H: Handler<T>,
    {
        self.settle::<T>(job.message).await;
        lock(in_flight).remove(&job.id);
    }

    async fn settle<T>(&self, message: Arc<jetstream::Message>)
    where
        T: Inbound,
        H: Handler<T>,
    {
        let (stream_sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64),
            Err(error) => {
                tracing::error!(%error, "a delivery without JetStream metadata; leaving it to redelivery");
                return;
            }
        };
        let subject = message.subject.to_string();
        // The handler works inside the message's trace (or starts one for a message that
        // came without), so what it publishes carries the trace on.
        let parent = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(crate::trace::TRACEPARENT))
            .and_then(|value| TraceContext::parse(value.as_str()));
        let span = tracing::info_span!("message", durable = %self.spec.durable, %subject, stream_sequence, delivered, trace_id = tracing::field::Empty);
        let trace = TraceContext::for_handler(parent, &span);
        span.record("trace_id", trace.trace_id());
        trace
            .scope(self.settle_delivery::<T>(message, subject, stream_sequence, delivered))
            .instrument(span)
            .await;
    }

    async fn settle_delivery<T>(
        &self,
        message: Arc<jetstream::Message>,
        subject: String,
        stream_sequence: u64,
        delivered: u64,
    ) where
        T: Inbound,
        H: Handler<T>,
    {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();

        let mut outcome = self
            .attempt::<T>(&message, &subject, stream_sequence, delivered)
            .await;
        let last_delivery = self.spec.max_deliver > 0 && delivered >= self.spec.max_deliver as u64;
        if last_delivery {
            // The last delivery: a failure that passes (a stream electing its leader, a
            // server restarting) is tried again in place, the message kept in progress, so
            // work is not dead-lettered for an outage of the bus underneath it.
            let patience_ends = started + self.settings.last_delivery_patience;
            let mut delay = self.settings.backoff_base;
            while let Outcome::Retry(reason) = &outcome
                && std::time::Instant::now() + delay < patience_ends
            {
                tracing::warn!(%reason, ?delay, "handler failed on the last delivery; trying again in place");
                let _ = message.ack_with(AckKind::Progress).await;
                tokio::time::sleep(delay).await;
                // Kept well inside the ack wait, so the message stays this handler's.
                delay = (delay * 2)
                    .min(self.settings.backoff_max)
                    .min(self.spec.ack_wait / 3);
                outcome = self
                    .attempt::<T>(&message, &subject, stream_sequence, delivered)
                    .await;
            }
        }

        let outcome = match outcome {
            Outcome::Retry(reason) if last_delivery => Outcome::Dead {
                kind: DeadLetterKind::MaxDeliveries,
                reason: format!("failed on all {delivered} deliveries; the last error: {reason}"),
                errors: Vec::new(),
            },
            other => other,
        };

        let failed = !matches!(outcome, Outcome::Done);
        self.stats
            .metrics
            .settled(&subject, failed, started.elapsed().as_secs_f64());
        tracing::debug!(
            failed,
            seconds = started.elapsed().as_secs_f64(),
            "message handled"
        );
        let settled = match outcome {
            // A plain ack, not one the server confirms: a lost ack only means a redelivery,
            // which every handler takes as the duplicate it is, while a confirmation is one
            // more server reply per message (about a sixth of the crew's throughput).
            Outcome::Done => {
                self.stats.handled.fetch_add(1, Ordering::Relaxed);
                message
                    .ack()
                    .await
                    .map_err(|error| ConsumeError::Ack(error.to_string()))
            }
            Outcome::Retry(reason) => {
                self.stats.record_error(&reason);
                let delay = self.settings.backoff(delivered);
                tracing::warn!(%reason, ?delay, "handler failed; redelivering later");
                message
                    .ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(|error| ConsumeError::Ack(error.to_string()))
            }
            Outcome::Dead {
                kind,
                reason,
                errors,
            } => {
                self.stats.record_error(&reason);
                // Boxed, as it is rare: inline, its publish would make every message's task
                // that much larger.
                Box::pin(self.dead_letter(
                    &message,
                    stream_sequence,
                    delivered,
                    kind,
                    reason,
                    errors,
                ))
                .await
            }
        };
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Err(error) = settled {
            tracing::error!(%error, "could not settle a message; it stays unacknowledged (redelivered, or dead-lettered from the max-deliveries advisory on its last delivery)");
        }
    }

    /// Decodes the message and runs the handler on it once.
    async fn attempt<T>(
        &self,
        message: &Arc<jetstream::Message>,
        subject: &str,
        stream_sequence: u64,
        delivered: u64,
    ) -> Outcome
    where
        T: Inbound,
        H: Handler<T>,
    {
        match T::decode(subject, &message.payload) {
            // This build cannot read its own schema: the message is not at fault, so it must
            // not be dead-lettered; it waits for a build that can.
            Err(error @ DecodeError::SchemaUnavailable { .. }) => {
                tracing::error!(%error, "this build cannot check messages; fix the build");
                Outcome::Retry(error.to_string())
            }
            Err(error) => Outcome::Dead {
                kind: match error {
                    DecodeError::Malformed { .. } => DeadLetterKind::Malformed,
                    DecodeError::UnsupportedVersion(_) => DeadLetterKind::UnsupportedVersion,
                    DecodeError::Invalid { .. } | DecodeError::SchemaUnavailable { .. } => {
                        DeadLetterKind::Invalid
                    }
                },
                errors: error.field_errors().to_vec(),
                reason: error.to_string(),
            },
            Ok(decoded) => {
                let delivery = Delivery {
                    message: message.clone(),
                    subject: subject.to_owned(),
                    stream_sequence,
                    delivered,
                };
                // Boxed: a handler's future runs to many kilobytes, and inline it would be
                // copied into each future around it, up to the message's task (50 KB in the
                // Conductor), on every message.
                let handling = Box::pin(self.handler.handle(decoded, delivery));
                let handled = AssertUnwindSafe(handling).catch_unwind().await;
                match handled {
                    Ok(Ok(())) => Outcome::Done,
                    Ok(Err(HandlerError::Reject(reason))) => Outcome::Dead {
                        kind: DeadLetterKind::Rejected,
                        reason,
                        errors: Vec::new(),
                    },
                    Ok(Err(HandlerError::Retry(reason))) => Outcome::Retry(reason),
                    Err(panic) => {
                        Outcome::Retry(format!("the handler panicked: {}", panic_text(&panic)))
                    }
                }
            }
        }
    }

    /// Publishes the dead letter first and terminates the original only once that is stored,
    /// so a failure in between leaves the message to redelivery, or, on its last delivery,
    /// to the server's max-deliveries advisory, which dead-letters it then.
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        stream_sequence: u64,
        delivered: u64,
        kind: DeadLetterKind,
        reason: String,
        errors: Vec<FieldError>,
    ) -> Result<(), ConsumeError> {
        tracing::error!(?kind, %reason, "dead-lettering a message");
        let letter = DeadLetter {
            schema_version: SchemaVersion::CURRENT,
            subject: message.subject.to_string(),
            stream: self.spec.stream.clone(),
            stream_sequence,
            consumer: self.spec.durable.clone(),
            delivered,
            kind,
            reason,
            errors,
            headers: message.headers.as_ref().map(header_map).unwrap_or_default(),
            payload_base64: DeadLetter::encode_payload(&message.payload),
            dead_at: Utc::now(),
        };
        if let Err(error) = self
            .bus
            .publish(&subjects::dead_letter(&letter.subject), &letter)
            .await
        {
            let _ = message
                .ack_with(AckKind::Nak(Some(self.settings.backoff(delivered))))
                .await;
            return Err(error.into());
        }
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.stats.metrics.dead_lettered();
        message
            .double_ack_with(AckKind::Term)
            .await
            .map_err(|error| ConsumeError::Ack(error.to_string()))
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
