//! Following a stream as it grows, for people and tools that watch the crew: an ordered
//! consumer, which the server keeps no durable state for and the client restarts on a gap.

use async_nats::jetstream::consumer::{
    DeliverPolicy,
    push::{Ordered, OrderedConfig},
};

use crate::Bus;

/// Why following a stream could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot follow {filter} on stream {stream}: {reason}")]
pub struct FollowError {
    pub stream: String,
    pub filter: String,
    pub reason: String,
}

impl Bus {
    /// The messages on `stream` that match `filter`, from `from` on, in stream order.
    pub async fn follow(
        &self,
        stream: &str,
        filter: &str,
        from: DeliverPolicy,
    ) -> Result<Ordered, FollowError> {
        let failed = |reason: String| FollowError {
            stream: stream.to_owned(),
            filter: filter.to_owned(),
            reason,
        };
        self.jetstream()
            .get_stream_no_info(stream)
            .await
            .map_err(|error| failed(error.to_string()))?
            .create_consumer(OrderedConfig {
                deliver_subject: self.client().new_inbox(),
                filter_subject: filter.to_owned(),
                deliver_policy: from,
                ..Default::default()
            })
            .await
            .map_err(|error| failed(error.to_string()))?
            .messages()
            .await
            .map_err(|error| failed(error.to_string()))
    }
}
