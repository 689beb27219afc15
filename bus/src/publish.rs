//! Typed publishing with de-duplication and a wait for the JetStream ack.

use std::time::Duration;

use async_nats::jetstream::{
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use bytes::Bytes;
use infracrew_protocol::{Message, SchemaVersion, encode};

use crate::{
    Bus,
    trace::{TRACEPARENT, TraceContext},
};

/// Header naming the message kind (`plan_spec`, ...), for tools that read raw subjects.
pub const KIND_HEADER: &str = "Infracrew-Kind";
/// Header with the schema version the message was written with.
pub const SCHEMA_HEADER: &str = "Infracrew-Schema";

/// Tries of a publish whose ack did not come; safe because the message id de-duplicates.
const PUBLISH_ATTEMPTS: u32 = 5;

/// Where JetStream stored a published message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub stream: String,
    pub sequence: u64,
    /// True when a message with the same id was already stored within the duplicate window:
    /// `sequence` is then that earlier message's.
    pub duplicate: bool,
}

impl From<async_nats::jetstream::publish::PublishAck> for Published {
    fn from(ack: async_nats::jetstream::publish::PublishAck) -> Self {
        Published {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        }
    }
}

/// Why a publish did not get stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode {kind}: {source}")]
    Encode {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("no stream captures {subject}: provision the bus first (every agent does at start)")]
    NoStream { subject: String },
    #[error("{kind} on {subject} is {size} bytes, over the server's limit")]
    TooLarge {
        kind: &'static str,
        subject: String,
        size: usize,
    },
    #[error(
        "the NATS server does not let this user publish {kind} on {subject}: {reason}; the user's permissions are in the server configuration (deploy/nats/users.conf)"
    )]
    NotAllowed {
        kind: &'static str,
        subject: String,
        reason: String,
    },
    #[error("publishing {kind} to {subject} failed after {attempts} tries: {reason}")]
    Failed {
        kind: &'static str,
        subject: String,
        attempts: u32,
        reason: String,
    },
}

/// A message written to the connection whose stream ack has not been awaited yet.
#[must_use = "a sent message is known to be stored only once `Bus::confirm` says so"]
pub struct Sent {
    subject: String,
    kind: &'static str,
    message_id: String,
    payload: Bytes,
    /// `None` when writing it failed: confirming publishes it again.
    ack: Option<PublishAckFuture>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("subject", &self.subject)
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

/// The message as it goes out: its id, kind, schema and the current trace in the headers.
fn outgoing(payload: &Bytes, kind: &'static str, message_id: &str) -> PublishMessage {
    let mut outgoing = PublishMessage::build()
        .payload(payload.clone())
        .message_id(message_id)
        .header(KIND_HEADER, kind)
        .header(SCHEMA_HEADER, SchemaVersion::CURRENT.to_string().as_str());
    // The publishing work is the parent of the work the message causes.
    if let Some(trace) = TraceContext::current() {
        outgoing = outgoing.header(TRACEPARENT, trace.to_string().as_str());
    }
    outgoing
}

/// The `Nats-Msg-Id` of `message` on `subject`. JetStream de-duplicates per stream, and one
/// message may go on two subjects (a PlanSpec on `crew.plan.pending`, then on
/// `crew.plan.routed`), so the subject is part of the id.
pub fn message_id<M: Message>(subject: &str, message: &M) -> String {
    format!("{subject}/{}", message.message_id())
}

impl Bus {
    /// Publishes `message` on `subject` with its cause-derived id as `Nats-Msg-Id`, waits for
    /// the stream's ack, and retries a lost ack (the id makes a retry store nothing twice).
    pub async fn publish<M: Message>(
        &self,
        subject: &str,
        message: &M,
    ) -> Result<Published, PublishError> {
        self.publish_with_id(subject, message, &message.message_id())
            .await
    }

    /// Publishes `message` under `message_id` instead of the id it derives: for a copy that
    /// must be stored although the first one was (a same-id copy would be dropped as a
    /// duplicate) because the first was stored and then lost downstream. Each id is stored
    /// once within the stream's duplicate window.
    pub async fn publish_with_id<M: Message>(
        &self,
        subject: &str,
        message: &M,
        message_id: &str,
    ) -> Result<Published, PublishError> {
        let payload = encode(message).map_err(|source| PublishError::Encode {
            kind: M::KIND,
            source,
        })?;
        self.publish_bytes(
            subject,
            M::KIND,
            &format!("{subject}/{message_id}"),
            Bytes::from(payload),
        )
        .await
    }

    /// Writes `message` to the connection without waiting for the stream's ack, so several
    /// messages cost one round trip: they are stored in the order they were sent, and
    /// `confirm` waits for their acks (publishing again any whose ack was lost).
    pub async fn send<M: Message>(&self, subject: &str, message: &M) -> Result<Sent, PublishError> {
        let payload = Bytes::from(encode(message).map_err(|source| PublishError::Encode {
            kind: M::KIND,
            source,
        })?);
        let message_id = message_id(subject, message);
        let ack = self
            .start_publish(subject, &payload, M::KIND, &message_id)
            .await
            .ok();
        Ok(Sent {
            subject: subject.to_owned(),
            kind: M::KIND,
            message_id,
            payload,
            ack,
        })
    }

    /// Waits until every sent message is stored; one whose ack did not come is published
    /// again under its id (stored once whatever happened to the first), and a refusal is
    /// reported as `publish` reports it.
    pub async fn confirm(&self, sent: Vec<Sent>) -> Result<Vec<Published>, PublishError> {
        // In turn: every message is already on its way, so the last ack comes as soon as it
        // would awaited together, without a joined future per message to allocate and move.
        let mut published = Vec::with_capacity(sent.len());
        for sent in sent {
            let acked = match sent.ack {
                Some(ack) => ack.await.ok(),
                None => None,
            };
            published.push(match acked {
                Some(ack) => Published::from(ack),
                None => {
                    // Boxed: a lost ack is rare, and inline its retries would size every
                    // future that confirms.
                    Box::pin(self.publish_bytes(
                        &sent.subject,
                        sent.kind,
                        &sent.message_id,
                        sent.payload,
                    ))
                    .await?
                }
            });
        }
        Ok(published)
    }

    /// Writes one message to the connection; its ack comes through the returned future.
    /// Boxed, as the `Kv` requests are (see kv.rs): held only while it is out.
    async fn start_publish(
        &self,
        subject: &str,
        payload: &Bytes,
        kind: &'static str,
        message_id: &str,
    ) -> Result<PublishAckFuture, async_nats::jetstream::context::PublishError> {
        Box::pin(
            self.jetstream()
                .send_publish(subject.to_owned(), outgoing(payload, kind, message_id)),
        )
        .await
    }

    /// Publishes bytes that are already encoded, under the given message id.
    pub async fn publish_bytes(
        &self,
        subject: &str,
        kind: &'static str,
        message_id: &str,
        payload: Bytes,
    ) -> Result<Published, PublishError> {
        let size = payload.len();
        let mut delay = Duration::from_millis(50);
        let mut last_reason = String::new();
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let result = match self
                .start_publish(subject, &payload, kind, message_id)
                .await
            {
                Ok(ack) => ack.await,
                Err(error) => Err(error),
            };
            match result {
                Ok(ack) => return Ok(Published::from(ack)),
                Err(error) => match error.kind() {
                    // On a cluster electing a new stream leader the stream reads as missing
                    // for a moment: tried again like a lost ack, reported if it stays so.
                    PublishErrorKind::StreamNotFound if attempt == PUBLISH_ATTEMPTS => {
                        return Err(PublishError::NoStream {
                            subject: subject.to_owned(),
                        });
                    }
                    PublishErrorKind::StreamNotFound => {
                        last_reason = error.to_string();
                        tracing::debug!(subject, attempt, "no stream answers yet; retrying");
                    }
                    PublishErrorKind::MaxPayloadExceeded => {
                        return Err(PublishError::TooLarge {
                            kind,
                            subject: subject.to_owned(),
                            size,
                        });
                    }
                    // Only a lost ack or connection is worth another try: the message id makes
                    // it safe. Anything else (limits, permissions) fails the same way again.
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                        // A refused publish gets no ack; the refusal came on the connection.
                        if let Some(reason) = self.refusal_for(subject) {
                            return Err(PublishError::NotAllowed {
                                kind,
                                subject: subject.to_owned(),
                                reason,
                            });
                        }
                        last_reason = error.to_string();
                        tracing::debug!(subject, attempt, %error, "publish not acknowledged; retrying");
                    }
                    _ => {
                        return Err(PublishError::Failed {
                            kind,
                            subject: subject.to_owned(),
                            attempts: attempt,
                            reason: error.to_string(),
                        });
                    }
                },
            }
            if attempt < PUBLISH_ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
        Err(PublishError::Failed {
            kind,
            subject: subject.to_owned(),
            attempts: PUBLISH_ATTEMPTS,
            reason: last_reason,
        })
    }
}
