//! infracrew's wire contract: message types, subjects, the plan digest and schema validation.
//!
//! This crate holds types and pure functions only (no I/O, no runtime), so every agent,
//! the CLI and the tests share one definition of what goes over the bus.

mod codec;
mod digest;
pub mod examples;
mod ids;
mod messages;
mod record;
pub mod signing;
pub mod subjects;
mod version;

pub use codec::{
    DecodeError, DocumentSchema, FieldError, MAX_MESSAGE_BYTES, Message, decode, decode_value,
    encode, schema_for,
};
pub use digest::{PlanDigest, canonical_json, hex};
pub use ids::{GoalId, PlanId, PlanRefError};
pub use messages::*;
pub use record::{
    Approval, IllegalTransition, LockRecord, LockWaiter, Override, PlanRecord, PlanState,
    ReviewRecord, SlackMessageRef, Transition, lock_key,
};
pub use version::{SchemaVersion, UnsupportedVersion};
