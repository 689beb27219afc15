//! Typed Key-Value access with compare-and-set on the revision, and create-if-absent.
//!
//! The client's requests are awaited boxed: their futures are 1 to 2 KB, and inline each one
//! would be held for the whole life of every future that awaits a `Kv` call (a handler's,
//! for as long as its message is in hand), not only while the request is out.

use std::marker::PhantomData;

use async_nats::jetstream::{
    self,
    context::PublishErrorKind,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
    message::StreamMessage,
    stream::{DirectGetErrorKind, LastRawMessageErrorKind},
};
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::Bus;

/// The header a KV delete or purge carries (a put has none, or `PUT`).
const KV_OPERATION: &str = "KV-Operation";

/// The most keys a listing's consumer hands over per pull: async-nats asks for 500, so this
/// caps its batch.
const KEYS_BATCH: i64 = 256;

/// How long a listing waits for its next key before it gives up: keys removed after it began
/// (a purge, an age limit) would leave it waiting for ever.
const KEYS_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// A value and the revision it was stored at; pass the revision back to update it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// Why a KV operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Someone else wrote the key since it was read: read it again and decide again.
    #[error("{bucket}/{key} changed since revision {expected}: another writer moved it first")]
    Conflict {
        bucket: String,
        key: String,
        expected: u64,
    },
    /// The key exists already (for locks: someone else holds it).
    #[error("{bucket}/{key} exists already")]
    AlreadyExists { bucket: String, key: String },
    #[error("{bucket}/{key} holds a value that does not decode: {reason}")]
    Decode {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("cannot encode the value for {bucket}/{key}: {reason}")]
    Encode {
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("KV bucket {bucket}: {reason}")]
    Request { bucket: String, reason: String },
}

/// A bucket whose values are JSON-encoded `T`.
#[derive(Debug, Clone)]
pub struct Kv<T> {
    store: kv::Store,
    /// For writes whose answer the client's store does not pass on (a deletion's revision).
    jetstream: jetstream::Context,
    bucket: String,
    /// The bucket has one copy, so any server that answers a direct get has the latest write.
    single_copy: bool,
    value: PhantomData<fn() -> T>,
}

impl Bus {
    /// Opens a provisioned bucket.
    pub async fn kv<T>(&self, bucket: &str) -> Result<Kv<T>, KvError> {
        let store = self
            .jetstream()
            .get_key_value(bucket)
            .await
            .map_err(|error| KvError::Request {
                bucket: bucket.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(Kv {
            jetstream: self.jetstream().clone(),
            single_copy: store.stream.cached_info().config.num_replicas <= 1,
            store,
            bucket: bucket.to_owned(),
            value: PhantomData,
        })
    }
}

impl<T: Serialize + DeserializeOwned> Kv<T> {
    /// The current value, or `None` when the key was never written or was deleted.
    ///
    /// A replicated bucket is read from its stream's leader: on a cluster a direct get may be
    /// answered by a replica that has not caught up, and the crew decides on these reads
    /// (Forge's gate and fencing token, a plan's next move), so they must see the latest
    /// write. A bucket with one copy takes the direct get, which the server answers without
    /// its JetStream API (a fraction of the work).
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<T>>, KvError> {
        let subject = format!("{}{key}", self.store.prefix);
        let Some(message) = self.last_entry(subject).await? else {
            return Ok(None);
        };
        let removed = message
            .headers
            .get(KV_OPERATION)
            .is_some_and(|operation| operation.as_str() != "PUT");
        if removed {
            return Ok(None);
        }
        let value = serde_json::from_slice(&message.payload).map_err(|error| KvError::Decode {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: error.to_string(),
        })?;
        Ok(Some(Versioned {
            value,
            revision: message.sequence,
        }))
    }

    /// The last message stored on a key's subject (a value or a deletion), if any.
    async fn last_entry(&self, subject: String) -> Result<Option<StreamMessage>, KvError> {
        let stream = &self.store.stream;
        if self.single_copy {
            match Box::pin(stream.direct_get_last_for_subject(subject)).await {
                Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
                found => Ok(Some(found.map_err(|error| self.request(error))?)),
            }
        } else {
            match Box::pin(stream.get_last_raw_message_by_subject(&subject)).await {
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                found => Ok(Some(found.map_err(|error| self.request(error))?)),
            }
        }
    }

    /// Every stored value of `key` the bucket's history keeps, oldest first (deletions are
    /// left out).
    pub async fn history(&self, key: &str) -> Result<Vec<Versioned<T>>, KvError> {
        use futures::StreamExt;
        let mut entries = self
            .store
            .history(key)
            .await
            .map_err(|error| self.request(error))?;
        let mut values = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|error| self.request(error))?;
            if entry.operation == Operation::Put {
                values.push(self.decode(key, &entry)?);
            }
        }
        Ok(values)
    }

    /// Every key that holds a value, in order, each once.
    pub async fn keys(&self) -> Result<Vec<String>, KvError> {
        use futures::TryStreamExt;
        let mut keys: Vec<String> = self.key_stream().await?.try_collect().await?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Every key that holds a value, as the server lists them, a batch at a time: over a
    /// bucket of many keys, what the caller keeps of them is about all the listing holds.
    /// (`Store::keys` pushes every key at once, which a busy process on one thread buffers
    /// before it reads them.) A key written while the listing runs may come twice.
    pub async fn key_stream(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<String, KvError>> + '_, KvError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        use futures::StreamExt;
        let prefix = self.store.prefix.as_str();
        let consumer = self
            .store
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: format!("{prefix}>"),
                headers_only: true,
                deliver_policy: DeliverPolicy::LastPerSubject,
                max_batch: KEYS_BATCH,
                ..Default::default()
            })
            .await
            .map_err(|error| self.request(error))?;
        // The listing ends at the last write there was once the consumer began: every key's
        // value then is at or before it, and the writes after it are not waited for.
        let until = self
            .store
            .stream
            .clone()
            .info()
            .await
            .map_err(|error| self.request(error))?
            .state
            .last_sequence;
        let done = consumer.cached_info().num_pending == 0;
        let messages = consumer
            .messages()
            .await
            .map_err(|error| self.request(error))?;
        Ok(futures::stream::unfold(
            (messages, done),
            move |(mut messages, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let message = match tokio::time::timeout(KEYS_STALL, messages.next()).await {
                        Ok(Some(Ok(message))) => message,
                        Ok(Some(Err(error))) => {
                            return Some((Err(self.request(error)), (messages, true)));
                        }
                        Ok(None) => return None,
                        Err(_) => {
                            let stalled = format!(
                                "the key listing had no key for {KEYS_STALL:?}; keys removed meanwhile?"
                            );
                            return Some((Err(self.request(stalled)), (messages, true)));
                        }
                    };
                    let last = match message.info() {
                        Ok(info) if info.stream_sequence > until => return None,
                        Ok(info) => info.pending == 0 || info.stream_sequence == until,
                        Err(error) => return Some((Err(self.request(error)), (messages, true))),
                    };
                    let operation = message
                        .headers
                        .as_ref()
                        .and_then(|headers| headers.get(KV_OPERATION))
                        .map(|operation| operation.as_str());
                    let key = message.subject.strip_prefix(prefix);
                    match (operation, key) {
                        (None | Some("PUT"), Some(key)) => {
                            return Some((Ok(key.to_owned()), (messages, last)));
                        }
                        _ if last => return None,
                        _ => {}
                    }
                }
            },
        ))
    }

    /// Writes `value` whatever is there; returns the new revision. For state with one writer;
    /// where writers race, use [`Kv::update`].
    pub async fn put(&self, key: &str, value: &T) -> Result<u64, KvError> {
        let bytes = self.encode(key, value)?;
        Box::pin(self.store.put(key, bytes))
            .await
            .map_err(|error| self.request(error))
    }

    /// Writes `value` only if `key` does not exist; returns the new revision.
    ///
    /// `AlreadyExists` can also mean this very write landed and its answer was lost (a
    /// failover): the client then reads the key to tell, and finds it. A caller that must
    /// know whose value is there compares it with `value`.
    pub async fn create(&self, key: &str, value: &T) -> Result<u64, KvError> {
        let bytes = self.encode(key, value)?;
        Box::pin(self.store.create(key, bytes))
            .await
            .map_err(|error| match error.kind() {
                CreateErrorKind::AlreadyExists => KvError::AlreadyExists {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                },
                _ => self.request(error),
            })
    }

    /// Writes `make(replaced)` only if `key` holds no value, where `replaced` is the revision
    /// the write goes over: 0 for a key never written, else its deletion's. Returns what was
    /// written. The value can so carry a number that grows with every create of the key (a
    /// fencing token) and still be written once.
    pub async fn create_with(
        &self,
        key: &str,
        make: impl Fn(u64) -> T,
    ) -> Result<Versioned<T>, KvError> {
        let exists = || KvError::AlreadyExists {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        };
        let value = make(0);
        match self.update(key, &value, 0).await {
            Ok(revision) => return Ok(Versioned { value, revision }),
            Err(KvError::Conflict { .. }) => {}
            Err(error) => return Err(error),
        }
        // The key was written before: free only if its last entry is a deletion.
        let subject = format!("{}{key}", self.store.prefix);
        let last = self.last_entry(subject).await?.ok_or_else(exists)?;
        let deleted = last
            .headers
            .get(KV_OPERATION)
            .is_some_and(|operation| operation.as_str() != "PUT");
        if !deleted {
            return Err(exists());
        }
        match self.create_over(key, last.sequence, make).await {
            Err(KvError::Conflict { .. }) => Err(exists()),
            written => written,
        }
    }

    /// [`Kv::create_with`] for a writer that knows the key's last entry is the deletion at
    /// `deletion` (one it made, from [`Kv::delete`]): writes `make(deletion)` in one
    /// compare-and-set on it, without trying the key as never written or reading it. A key
    /// written since is a `Conflict`.
    pub async fn create_over(
        &self,
        key: &str,
        deletion: u64,
        make: impl FnOnce(u64) -> T,
    ) -> Result<Versioned<T>, KvError> {
        let value = make(deletion);
        let revision = self.update(key, &value, deletion).await?;
        Ok(Versioned { value, revision })
    }

    /// Writes `value` only if the key is still at `revision`; returns the new revision.
    pub async fn update(&self, key: &str, value: &T, revision: u64) -> Result<u64, KvError> {
        let bytes = self.encode(key, value)?;
        Box::pin(self.store.update(key, bytes, revision))
            .await
            .map_err(|error| match error.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    expected: revision,
                },
                _ => self.request(error),
            })
    }

    /// Deletes the key only if it is still at `revision` (releasing a lock one holds); returns
    /// the deletion's revision, which [`Kv::create_over`] takes the key over from.
    ///
    /// Written as the client's own delete is (a `KV-Operation: DEL` message expecting the
    /// key's last revision), but keeping the ack's sequence, which the client drops. The bus's
    /// JetStream context has the default API prefix, so the subject takes no prefix of its own.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<u64, KvError> {
        let subject = format!(
            "{}{key}",
            self.store
                .put_prefix
                .as_deref()
                .unwrap_or(&self.store.prefix)
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(KV_OPERATION, "DEL");
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            async_nats::HeaderValue::from(revision),
        );
        let deleted = Box::pin(async {
            self.jetstream
                .publish_with_headers(subject, headers, Bytes::new())
                .await?
                .await
        });
        match deleted.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(KvError::Conflict {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    expected: revision,
                })
            }
            Err(error) => Err(self.request(error)),
        }
    }

    fn decode(&self, key: &str, entry: &kv::Entry) -> Result<Versioned<T>, KvError> {
        let value = serde_json::from_slice(&entry.value).map_err(|error| KvError::Decode {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: error.to_string(),
        })?;
        Ok(Versioned {
            value,
            revision: entry.revision,
        })
    }

    fn encode(&self, key: &str, value: &T) -> Result<Bytes, KvError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|error| KvError::Encode {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                reason: error.to_string(),
            })
    }

    fn request(&self, error: impl std::fmt::Display) -> KvError {
        KvError::Request {
            bucket: self.bucket.clone(),
            reason: error.to_string(),
        }
    }
}
