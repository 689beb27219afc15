//! Refusing a copy of a request already taken: Slack's signed requests, signed CLI decisions
//! and GitHub's deliveries each carry an id. The ids live in the `crew_requests_seen` bucket,
//! which every Conductor replica shares and a restarted one still reads, so a copy is refused
//! whichever replica it reaches. The bucket forgets an id after a day (its maximum age), longer
//! than any copy could pass the other checks: Slack's and the CLI's five-minute windows, and
//! GitHub's redelivery of a day-old event.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use infracrew_bus::{Kv, KvError};
use sha2::{Digest, Sha256};

/// Where a request came from; its ids are kept apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSource {
    /// A signed decision from the CLI, by its request id.
    Decision,
    /// A request Slack signed, by its signature.
    Slack,
    /// A GitHub webhook delivery, by its `X-GitHub-Delivery` id.
    Github,
}

impl RequestSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::Slack => "slack",
            Self::Github => "github",
        }
    }
}

/// The requests taken lately, shared by every Conductor replica.
#[derive(Debug, Clone)]
pub struct SeenRequests {
    /// When each was first taken, by source and hashed id.
    seen: Kv<DateTime<Utc>>,
}

impl SeenRequests {
    pub fn new(seen: Kv<DateTime<Utc>>) -> Self {
        SeenRequests { seen }
    }

    /// True the first time `id` comes from `source`, false for a copy. One create-only write
    /// decides it, so two replicas taking copies at the same moment cannot both see it first.
    /// An error means the bucket did not answer: the caller refuses the request, to be sent
    /// again, rather than take one it cannot check.
    pub async fn first_time(
        &self,
        source: RequestSource,
        id: &str,
    ) -> Result<bool, ReplayUnchecked> {
        let key = key(source, id);
        let now = Utc::now();
        match self.seen.create(&key, &now).await {
            Ok(_) => Ok(true),
            // Found taken: by a copy before, or by this write, landed with its answer lost in
            // a failover. The time written tells which.
            Err(KvError::AlreadyExists { .. }) => match self.seen.get(&key).await {
                Ok(seen) => Ok(seen.is_some_and(|seen| seen.value == now)),
                Err(error) => Err(ReplayUnchecked(error)),
            },
            Err(error) => Err(ReplayUnchecked(error)),
        }
    }
}

/// The bucket did not answer, so a request is refused unchecked; nothing was done.
#[derive(Debug, thiserror::Error)]
#[error(
    "whether this request was taken already cannot be checked ({0}); nothing was done, send it again"
)]
pub struct ReplayUnchecked(KvError);

/// Over HTTP: 503, so the sender tries again.
impl IntoResponse for ReplayUnchecked {
    fn into_response(self) -> Response {
        let reason = self.to_string();
        tracing::warn!(%reason, "refused a request");
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

/// `<source>.<sha-256 of the id in hex>`: the id comes from outside, the hash is always a
/// valid key of one length.
fn key(source: RequestSource, id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{}.{}", source.as_str(), infracrew_protocol::hex(&digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_valid_whatever_the_id_and_keeps_sources_apart() {
        let odd = key(RequestSource::Github, "../* >{weird id}\n");
        assert!(odd.starts_with("github."), "{odd}");
        assert_eq!(odd.len(), "github.".len() + 64);
        assert!(
            odd.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
            "{odd}"
        );
        assert_ne!(
            key(RequestSource::Slack, "v0=abc"),
            key(RequestSource::Decision, "v0=abc")
        );
    }
}
