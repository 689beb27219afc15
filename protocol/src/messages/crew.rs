//! Messages about the crew itself: heartbeats and dead letters.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{FieldError, SchemaVersion, codec::message};

/// The four roles of the crew.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum AgentRole {
    Atlas,
    Forge,
    Sentinel,
    Conductor,
}

impl AgentRole {
    pub const ALL: [AgentRole; 4] = [Self::Atlas, Self::Forge, Self::Sentinel, Self::Conductor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Atlas => "atlas",
            Self::Forge => "forge",
            Self::Sentinel => "sentinel",
            Self::Conductor => "conductor",
        }
    }
}

impl std::fmt::Display for AgentRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An agent instance saying it is alive, and how its work goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {
    pub schema_version: SchemaVersion,
    pub agent: AgentRole,
    /// Unique per process start.
    pub instance_id: Uuid,
    /// The agent's build version.
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub sent_at: DateTime<Utc>,
    /// Counts from 1 per instance.
    pub seq: u64,
    pub messages_handled: u64,
    pub messages_failed: u64,
    pub in_flight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether every need of the agent is met (its /health/ready).
    pub ready: bool,
    /// The needs not met, each as "need: what is wrong".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ready: Vec<String>,
}

message!(Heartbeat, "heartbeat", |beat| format!(
    "heartbeat:{}:{}",
    beat.instance_id, beat.seq
));

/// A message the crew could not handle, kept with the reason and its original bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeadLetter {
    pub schema_version: SchemaVersion,
    /// The subject the message was published on.
    pub subject: String,
    pub stream: String,
    pub stream_sequence: u64,
    /// The durable consumer that gave up on it.
    pub consumer: String,
    /// How many times it was delivered.
    pub delivered: u64,
    pub kind: DeadLetterKind,
    /// The reason, for a person.
    pub reason: String,
    /// Each schema violation, with its JSON path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The original headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The original bytes, base64 (standard alphabet, padded).
    pub payload_base64: String,
    pub dead_at: DateTime<Utc>,
}

message!(DeadLetter, "dead_letter", |letter| format!(
    "dead:{}:{}:{}",
    letter.stream, letter.consumer, letter.stream_sequence
));

impl DeadLetter {
    /// The original bytes.
    pub fn payload(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(&self.payload_base64)
    }

    /// Encodes original bytes for [`DeadLetter::payload_base64`].
    pub fn encode_payload(payload: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(payload)
    }
}

/// Why a message was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetterKind {
    /// Not JSON.
    Malformed,
    /// JSON that breaks its schema.
    Invalid,
    /// A schema major version this crew does not read.
    UnsupportedVersion,
    /// The handler refused it for good.
    Rejected,
    /// It failed on every one of its allowed deliveries.
    MaxDeliveries,
}
