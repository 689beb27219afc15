//! infracrew's NATS JetStream layer, shared by every agent and the CLI: connect, provision
//! the crew's streams, consumers and buckets, publish typed messages with de-duplication,
//! consume them through durable pull consumers with dead letters, follow streams for
//! watchers, and keep state in KV.

mod connect;
mod consumer;
mod follow;
mod kv;
mod metrics;
pub mod permissions;
mod provision;
mod publish;
mod shutdown;
mod trace;

pub use connect::{Bus, ConnectArgs, ConnectError, parse_duration};
pub use consumer::{
    ConsumeError, ConsumerSettings, Delivery, Handler, HandlerError, Inbound, WorkStats,
};
pub use follow::FollowError;
pub use kv::{Kv, KvError, Versioned};
pub use metrics::ConsumerMetrics;
pub use provision::{
    ConsumerSpec, Creation, ProvisionError, ProvisionOptions, ProvisionReport, Provisioned,
    Topology, buckets, consumers, max_deliveries_subject, role_subjects, streams,
};
pub use publish::{PublishError, Published, Sent, message_id};
pub use shutdown::{Shutdown, shutdown_on_signal};
pub use trace::{TRACEPARENT, TraceContext};
