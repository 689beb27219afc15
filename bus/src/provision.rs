//! Idempotent provisioning of the crew's streams, durable consumers and KV buckets.
//!
//! Running it again changes nothing. Something that exists with other settings is reported
//! with each difference and left alone: recreating a stream would drop its history.

use std::{collections::BTreeSet, fmt, time::Duration};

use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{AckPolicy, DeliverPolicy, pull},
    context::ConsumerInfoErrorKind,
    context::GetStreamErrorKind,
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};
use infracrew_protocol::{AgentRole, subjects};

use crate::Bus;

/// Stream names.
pub mod streams {
    /// The work subjects: goals, plans, validations, builds, decisions, applies, ops events.
    /// Time-limited, so it is also the audit log.
    pub const WORK: &str = "CREW";
    /// Heartbeats, short-lived.
    pub const HEARTBEATS: &str = "CREW_HEARTBEATS";
    /// Dead letters, kept longest.
    pub const DEAD_LETTERS: &str = "CREW_DLQ";
    /// The server's max-deliveries advisories for the work stream, kept so a message whose
    /// handler never answered is dead-lettered even when no replica was listening then.
    pub const ADVISORIES: &str = "CREW_ADVISORIES";
}

/// Durable consumer names: one per role, shared by that role's replicas.
pub mod consumers {
    use infracrew_protocol::AgentRole;

    /// The durable consumer a role reads its work through.
    pub fn for_role(role: AgentRole) -> &'static str {
        role.as_str()
    }

    /// The Conductor's new plans (`crew.plan.pending`), apart from the work that moves plans
    /// already started, so that work goes first: the Conductor takes new plans while the
    /// crew's backlog of that work leaves room.
    pub const NEW_PLANS: &str = "conductor-new-plans";

    /// The consumers provisioned with the topology that `role` reads.
    pub fn read_by(role: AgentRole) -> Vec<&'static str> {
        match role {
            AgentRole::Conductor => vec![for_role(role), NEW_PLANS],
            _ => vec![for_role(role)],
        }
    }

    /// The Conductor's review consumer: plan moves and ops events for the review channels,
    /// read one at a time and in order, apart from the plan work so a slow Slack never
    /// holds a plan up.
    pub const REVIEWS: &str = "conductor-reviews";
}

/// Key-Value bucket names.
pub mod buckets {
    /// Plan records, moved with compare-and-set on the revision.
    pub const PLANS: &str = "crew_plans";
    /// One change in flight per environment and service: keys created only if absent.
    pub const LOCKS: &str = "crew_locks";
    /// Forge's builds waiting for their validation, by plan id.
    pub const BUILDS: &str = "crew_builds";
    /// What the dry-run driver records as running, by `<environment>.<service>`; its history
    /// holds the previous revisions.
    pub const DRY_RUN: &str = "crew_dryrun";
    /// Where each plan's review was posted outside the crew (Slack), by plan id.
    pub const REVIEWS: &str = "crew_reviews";
    /// The ids of the signed requests the Conductor took (CLI decisions, Slack's requests,
    /// GitHub's deliveries), to refuse a copy whichever replica it reaches; kept a day.
    pub const REQUESTS_SEEN: &str = "crew_requests_seen";
}

/// How long `crew_requests_seen` keeps an id: longer than a copy of any request could still
/// pass its other checks (GitHub redelivers an event for up to a day).
pub const REQUESTS_SEEN_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// Settings of the crew's bus; the defaults suit one server.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// Copies of every stream and bucket (3 on a three-node cluster).
    pub replicas: usize,
    /// How long the work stream keeps messages (the audit log's reach).
    pub work_max_age: Duration,
    pub heartbeat_max_age: Duration,
    pub dead_letter_max_age: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is stored once.
    pub duplicate_window: Duration,
    /// Largest message a stream accepts, in bytes.
    pub max_message_size: i32,
    /// How long a delivered message may go unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a failing message goes to dead letters.
    pub max_deliver: i64,
    /// Unacknowledged messages a consumer may have out at once.
    pub max_ack_pending: i64,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            replicas: 1,
            work_max_age: Duration::from_secs(30 * 24 * 3600),
            heartbeat_max_age: Duration::from_secs(3600),
            dead_letter_max_age: Duration::from_secs(90 * 24 * 3600),
            duplicate_window: Duration::from_secs(10 * 60),
            max_message_size: 1024 * 1024,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
        }
    }
}

/// Who creates a consumer, and so where it starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// Provisioned with the topology; reads the stream from its first message.
    WithTopology,
    /// Created by the agent that reads it when it first needs it, reading the messages
    /// published from then on; provisioning leaves it out, so nothing piles up for a reader
    /// that an installation never runs.
    OnDemand,
}

/// One durable pull consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subjects: Vec<String>,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    pub creation: Creation,
}

impl ConsumerSpec {
    /// Creates the consumer if it is missing; one that exists is checked for these settings.
    pub async fn ensure(&self, bus: &Bus) -> Result<Provisioned, ProvisionError> {
        ensure_consumer(bus.jetstream(), self).await
    }

    /// Whether the consumer exists on its stream.
    pub async fn exists(&self, bus: &Bus) -> Result<bool, ProvisionError> {
        let stream = bus
            .jetstream()
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|error| request_error("read", "consumer", &self.name(), error))?;
        Ok(self.info_on(&stream).await?.is_some())
    }

    /// The consumer's info from `stream`, its own stream; `None` when it does not exist.
    async fn info_on(
        &self,
        stream: &jetstream::stream::Stream<()>,
    ) -> Result<Option<jetstream::consumer::Info>, ProvisionError> {
        match stream.consumer_info(&self.durable).await {
            Ok(info) => Ok(Some(info)),
            Err(error) if matches!(error.kind(), ConsumerInfoErrorKind::NotFound) => Ok(None),
            Err(error) => Err(request_error("read", "consumer", &self.name(), error)),
        }
    }

    /// `<stream>/<durable>`, as errors and reports name it.
    fn name(&self) -> String {
        format!("{}/{}", self.stream, self.durable)
    }

    fn config(&self) -> pull::Config {
        let deliver_policy = match self.creation {
            Creation::WithTopology => DeliverPolicy::All,
            Creation::OnDemand => DeliverPolicy::New,
        };
        pull::Config {
            durable_name: Some(self.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            filter_subjects: self.filter_subjects.clone(),
            ..Default::default()
        }
    }
}

/// Streams, consumers and buckets to provision.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub streams: Vec<stream::Config>,
    pub consumers: Vec<ConsumerSpec>,
    pub buckets: Vec<kv::Config>,
}

impl Topology {
    /// Everything the crew needs: the three streams, one durable consumer per role and the
    /// plan and lock buckets.
    pub fn crew(options: &ProvisionOptions) -> Self {
        let stream = |name: &str, subjects: Vec<String>, max_age: Duration| stream::Config {
            name: name.to_owned(),
            subjects,
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            duplicate_window: options.duplicate_window,
            max_message_size: options.max_message_size,
            num_replicas: options.replicas.max(1),
            allow_direct: true,
            ..Default::default()
        };
        let work_subjects = subjects::WORK.iter().map(|s| s.to_string()).collect();
        let streams = vec![
            stream(streams::WORK, work_subjects, options.work_max_age),
            stream(
                streams::HEARTBEATS,
                vec![subjects::HEARTBEATS.to_owned()],
                options.heartbeat_max_age,
            ),
            stream(
                streams::DEAD_LETTERS,
                vec![subjects::DEAD_LETTERS.to_owned()],
                options.dead_letter_max_age,
            ),
            stream(
                streams::ADVISORIES,
                vec![max_deliveries_subject(streams::WORK, "*")],
                options.dead_letter_max_age,
            ),
        ];
        let consumers = AgentRole::ALL
            .into_iter()
            .map(|role| ConsumerSpec {
                stream: streams::WORK.to_owned(),
                durable: consumers::for_role(role).to_owned(),
                filter_subjects: role_subjects(role).iter().map(|s| s.to_string()).collect(),
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                max_ack_pending: options.max_ack_pending,
                creation: Creation::WithTopology,
            })
            .chain(std::iter::once(ConsumerSpec {
                stream: streams::WORK.to_owned(),
                durable: consumers::NEW_PLANS.to_owned(),
                filter_subjects: vec![subjects::PLAN_PENDING.to_owned()],
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                max_ack_pending: options.max_ack_pending,
                creation: Creation::WithTopology,
            }))
            .chain(std::iter::once(ConsumerSpec {
                stream: streams::WORK.to_owned(),
                durable: consumers::REVIEWS.to_owned(),
                filter_subjects: vec![
                    subjects::PLAN_STATE.to_owned(),
                    subjects::OPS_EVENT.to_owned(),
                    subjects::OPS_STEP.to_owned(),
                ],
                ack_wait: options.ack_wait,
                max_deliver: options.max_deliver,
                // One message out at a time: a review's posts reach Slack in the order of the
                // plan's moves, also after a retry.
                max_ack_pending: 1,
                // Only a Conductor with a review channel (Slack, GitHub) reads it.
                creation: Creation::OnDemand,
            }))
            .collect();
        let bucket = |name: &str, history: i64| kv::Config {
            bucket: name.to_owned(),
            history,
            storage: StorageType::File,
            num_replicas: options.replicas.max(1),
            ..Default::default()
        };
        let buckets = vec![
            bucket(buckets::PLANS, 16),
            bucket(buckets::LOCKS, 1),
            bucket(buckets::BUILDS, 1),
            bucket(buckets::DRY_RUN, 16),
            bucket(buckets::REVIEWS, 1),
            kv::Config {
                max_age: REQUESTS_SEEN_FOR,
                ..bucket(buckets::REQUESTS_SEEN, 1)
            },
        ];
        Topology {
            streams,
            consumers,
            buckets,
        }
    }

    /// The consumer spec of a durable name.
    pub fn consumer(&self, durable: &str) -> Option<&ConsumerSpec> {
        self.consumers.iter().find(|spec| spec.durable == durable)
    }

    /// Creates what is missing and checks that what exists has these settings; on-demand
    /// consumers are left to the agents that read them. On a store from before new plans had a
    /// consumer of their own, moves them over (see `provision_as`).
    pub async fn provision(&self, bus: &Bus) -> Result<ProvisionReport, ProvisionError> {
        self.provision_for(bus, None).await
    }

    /// Provisions as an agent of `role` does at its start. On a store from before new plans had
    /// a consumer of their own, only a Conductor moves them over: an older Conductor still
    /// running keeps reading them until one of this version starts, and agents of the other
    /// roles leave the Conductor's consumers as they are.
    pub async fn provision_as(
        &self,
        bus: &Bus,
        role: AgentRole,
    ) -> Result<ProvisionReport, ProvisionError> {
        self.provision_for(bus, Some(role)).await
    }

    async fn provision_for(
        &self,
        bus: &Bus,
        role: Option<AgentRole>,
    ) -> Result<ProvisionReport, ProvisionError> {
        let js = bus.jetstream();
        let mut report = ProvisionReport::default();
        for config in &self.streams {
            report.items.push(ensure_stream(js, config).await?);
        }
        for config in &self.buckets {
            report.items.push(ensure_bucket(js, config).await?);
        }
        let mut left_to_a_conductor: Vec<&str> = Vec::new();
        if let (Some(conductor), Some(new_plans)) = (
            self.consumer(consumers::for_role(AgentRole::Conductor)),
            self.consumer(consumers::NEW_PLANS),
        ) && let Some(older) = OlderConductor::find(js, conductor, new_plans).await?
        {
            if role.is_none_or(|role| role == AgentRole::Conductor) {
                report.items.extend(older.split(new_plans).await?);
            } else {
                tracing::info!(consumer = %conductor.name(), "the Conductor's consumer still reads new plans; a Conductor of this version moves them to their own consumer");
                left_to_a_conductor = vec![&conductor.durable, &new_plans.durable];
            }
        }
        for spec in self.consumers.iter().filter(|spec| {
            spec.creation == Creation::WithTopology
                && !left_to_a_conductor.contains(&spec.durable.as_str())
        }) {
            report.items.push(ensure_consumer(js, spec).await?);
        }
        Ok(report)
    }
}

/// The Conductor's consumer as a crew left it before new plans had a consumer of their own:
/// it reads them too.
struct OlderConductor {
    stream: jetstream::stream::Stream<()>,
    name: String,
    found: jetstream::consumer::Info,
    /// Its filters without new plans'.
    kept: Vec<String>,
}

impl OlderConductor {
    /// The Conductor's consumer, when it still reads new plans (and something else).
    async fn find(
        js: &jetstream::Context,
        conductor: &ConsumerSpec,
        new_plans: &ConsumerSpec,
    ) -> Result<Option<Self>, ProvisionError> {
        let name = conductor.name();
        let stream = js
            .get_stream_no_info(&conductor.stream)
            .await
            .map_err(|error| request_error("read", "consumer", &name, error))?;
        let Some(found) = conductor.info_on(&stream).await? else {
            return Ok(None);
        };
        let filters = found
            .config
            .filter_subjects
            .iter()
            .chain(Some(&found.config.filter_subject).filter(|subject| !subject.is_empty()));
        let (moved, kept): (Vec<String>, Vec<String>) = filters
            .cloned()
            .partition(|subject| new_plans.filter_subjects.contains(subject));
        // Nothing to move, or nothing left to read: either way not this change, and
        // provisioning reports what differs.
        if moved.is_empty() || kept.is_empty() {
            return Ok(None);
        }
        Ok(Some(OlderConductor {
            stream,
            name,
            found,
            kept,
        }))
    }

    /// Moves new plans to `new_plans`: that consumer starts after this one's ack floor, and
    /// this one then stops reading them. No plan is skipped; those this one had in hand, or
    /// settled out of order past its floor, are read again, which the Conductor takes as the
    /// copies they are. Run again after a crash in between, it finishes the change; a
    /// `new_plans` consumer with other settings stops it before the Conductor's is changed.
    async fn split(self, new_plans: &ConsumerSpec) -> Result<Vec<Provisioned>, ProvisionError> {
        let created = match new_plans.info_on(&self.stream).await? {
            Some(info) => {
                check_new_plans(new_plans, &info)?;
                false
            }
            None => {
                let config = pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.found.ack_floor.stream_sequence + 1,
                    },
                    ..new_plans.config()
                };
                // Strict: an agent moving them at the same moment may have made it first, from
                // an ack floor read a moment apart, and its start stands.
                match self.stream.create_consumer_strict(config).await {
                    Ok(_) => true,
                    Err(error) => {
                        let info = self
                            .stream
                            .consumer_info(&new_plans.durable)
                            .await
                            .map_err(|_| {
                                request_error("create", "consumer", &new_plans.name(), &error)
                            })?;
                        check_new_plans(new_plans, &info)?;
                        false
                    }
                }
            }
        };
        // Only the filter changes: any other setting that differs stays as it was, for
        // provisioning to report.
        let narrowed = jetstream::consumer::Config {
            filter_subject: String::new(),
            filter_subjects: self.kept,
            ..self.found.config
        };
        self.stream
            .update_consumer(narrowed)
            .await
            .map_err(|error| request_error("update", "consumer", &self.name, error))?;
        tracing::info!(from = %self.name, to = %new_plans.durable, "new plans moved to a consumer of their own");
        Ok(vec![
            Provisioned {
                kind: "consumer",
                name: new_plans.name(),
                created,
                changed: false,
            },
            Provisioned {
                kind: "consumer",
                name: self.name,
                created: false,
                changed: true,
            },
        ])
    }
}

fn check_new_plans(
    new_plans: &ConsumerSpec,
    found: &jetstream::consumer::Info,
) -> Result<(), ProvisionError> {
    check(
        consumer_differences(&new_plans.config(), &found.config),
        "consumer",
        &new_plans.name(),
    )
}

/// The subject of the server's advisory that `durable` on `stream` gave up on a message.
pub fn max_deliveries_subject(stream: &str, durable: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}")
}

/// The subjects each role reads through its own consumer.
pub fn role_subjects(role: AgentRole) -> &'static [&'static str] {
    match role {
        AgentRole::Atlas => &[subjects::GOAL_SUBMITTED],
        // New plans come through `consumers::NEW_PLANS`.
        AgentRole::Conductor => &[subjects::BUILD_STATUS, subjects::OPS_EVENT],
        AgentRole::Forge => &[
            subjects::PLAN_ROUTED,
            subjects::VALIDATE_RESULT,
            subjects::APPLY_REQUEST,
        ],
        AgentRole::Sentinel => &[subjects::VALIDATE_PENDING],
    }
}

/// What provisioning found or did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    pub items: Vec<Provisioned>,
}

impl ProvisionReport {
    /// True when everything already existed as wanted.
    pub fn is_noop(&self) -> bool {
        self.changes().next().is_none()
    }

    pub fn created(&self) -> impl Iterator<Item = &Provisioned> {
        self.items.iter().filter(|item| item.created)
    }

    /// What was created or changed.
    pub fn changes(&self) -> impl Iterator<Item = &Provisioned> {
        self.items
            .iter()
            .filter(|item| item.created || item.changed)
    }
}

/// One provisioned resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// `stream`, `consumer` or `bucket`.
    pub kind: &'static str,
    pub name: String,
    /// False when it existed already.
    pub created: bool,
    /// True when an existing one was changed: the Conductor's consumer, when new plans moved
    /// to their own.
    pub changed: bool,
}

impl fmt::Display for Provisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match (self.created, self.changed) {
            (true, _) => "created",
            (false, true) => "changed",
            (false, false) => "present",
        };
        write!(f, "{} {} {state}", self.kind, self.name)
    }
}

/// A setting that differs between what exists and what the crew wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub wanted: String,
    pub found: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} (wanted {})",
            self.field, self.found, self.wanted
        )
    }
}

/// Why provisioning stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{kind} {name} exists with other settings: {}. It was left as it is; change it by hand (deleting a stream loses its messages) or align the crew's settings", list(.differences))]
    Conflict {
        kind: &'static str,
        name: String,
        differences: Vec<Difference>,
    },
    #[error("cannot {action} {kind} {name}: {reason}")]
    Request {
        action: &'static str,
        kind: &'static str,
        name: String,
        reason: String,
    },
}

fn list(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(Difference::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn request_error(
    action: &'static str,
    kind: &'static str,
    name: &str,
    error: impl fmt::Display,
) -> ProvisionError {
    ProvisionError::Request {
        action,
        kind,
        name: name.to_owned(),
        reason: error.to_string(),
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    wanted: &stream::Config,
) -> Result<Provisioned, ProvisionError> {
    let name = &wanted.name;
    let existing = match js.get_stream(name).await {
        Ok(mut found) => Some(
            found
                .info()
                .await
                .map_err(|e| request_error("read", "stream", name, e))?
                .config
                .clone(),
        ),
        Err(error) if is_stream_not_found(error.kind()) => None,
        Err(error) => return Err(request_error("read", "stream", name, error)),
    };
    let created = match existing {
        Some(found) => {
            check(stream_differences(wanted, &found), "stream", name)?;
            false
        }
        None => {
            // Another process may create it at the same moment; then compare with theirs.
            match js.create_stream(wanted.clone()).await {
                Ok(_) => true,
                Err(error) => {
                    let mut found = js
                        .get_stream(name)
                        .await
                        .map_err(|_| request_error("create", "stream", name, &error))?;
                    let found = found
                        .info()
                        .await
                        .map_err(|e| request_error("read", "stream", name, e))?
                        .config
                        .clone();
                    check(stream_differences(wanted, &found), "stream", name)?;
                    false
                }
            }
        }
    };
    Ok(Provisioned {
        kind: "stream",
        name: name.clone(),
        created,
        changed: false,
    })
}

fn is_stream_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(error) if error.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn stream_differences(wanted: &stream::Config, found: &stream::Config) -> Vec<Difference> {
    let subjects =
        |config: &stream::Config| config.subjects.iter().cloned().collect::<BTreeSet<_>>();
    let mut differences = Differences::default();
    differences.check("subjects", &subjects(wanted), &subjects(found));
    differences.check("storage", &wanted.storage, &found.storage);
    differences.check("retention", &wanted.retention, &found.retention);
    differences.check("max_age", &wanted.max_age, &found.max_age);
    differences.check(
        "duplicate_window",
        &wanted.duplicate_window,
        &found.duplicate_window,
    );
    differences.check("num_replicas", &wanted.num_replicas, &found.num_replicas);
    differences.check(
        "max_message_size",
        &wanted.max_message_size,
        &found.max_message_size,
    );
    differences.check("discard", &wanted.discard, &found.discard);
    // `crew status` and `crew dlq` read with direct gets.
    differences.check("allow_direct", &wanted.allow_direct, &found.allow_direct);
    differences.check("max_messages", &wanted.max_messages, &found.max_messages);
    differences.check("max_bytes", &wanted.max_bytes, &found.max_bytes);
    differences.check(
        "max_messages_per_subject",
        &wanted.max_messages_per_subject,
        &found.max_messages_per_subject,
    );
    differences.0
}

async fn ensure_bucket(
    js: &jetstream::Context,
    wanted: &kv::Config,
) -> Result<Provisioned, ProvisionError> {
    let name = &wanted.bucket;
    let stream_name = format!("KV_{name}");
    let created = match js.get_stream(&stream_name).await {
        Ok(mut found) => {
            let found = found
                .info()
                .await
                .map_err(|e| request_error("read", "bucket", name, e))?
                .config
                .clone();
            check(bucket_differences(wanted, &found), "bucket", name)?;
            false
        }
        Err(error) if is_stream_not_found(error.kind()) => {
            match js.create_key_value(wanted.clone()).await {
                Ok(_) => true,
                Err(error) => {
                    let mut found = js
                        .get_stream(&stream_name)
                        .await
                        .map_err(|_| request_error("create", "bucket", name, &error))?;
                    let found = found
                        .info()
                        .await
                        .map_err(|e| request_error("read", "bucket", name, e))?
                        .config
                        .clone();
                    check(bucket_differences(wanted, &found), "bucket", name)?;
                    false
                }
            }
        }
        Err(error) => return Err(request_error("read", "bucket", name, error)),
    };
    Ok(Provisioned {
        kind: "bucket",
        name: name.clone(),
        created,
        changed: false,
    })
}

fn bucket_differences(wanted: &kv::Config, found: &stream::Config) -> Vec<Difference> {
    let mut differences = Differences::default();
    differences.check("history", &wanted.history, &found.max_messages_per_subject);
    differences.check(
        "num_replicas",
        &wanted.num_replicas.max(1),
        &found.num_replicas,
    );
    differences.check("storage", &wanted.storage, &found.storage);
    differences.0
}

async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<Provisioned, ProvisionError> {
    let name = spec.name();
    let stream = js
        .get_stream_no_info(&spec.stream)
        .await
        .map_err(|error| request_error("read", "consumer", &name, error))?;
    let wanted = spec.config();
    let created = match stream.consumer_info(&spec.durable).await {
        Ok(info) => {
            check(
                consumer_differences(&wanted, &info.config),
                "consumer",
                &name,
            )?;
            false
        }
        Err(error) if matches!(error.kind(), ConsumerInfoErrorKind::NotFound) => {
            match stream.create_consumer(wanted.clone()).await {
                Ok(_) => true,
                Err(error) => {
                    let info = stream
                        .consumer_info(&spec.durable)
                        .await
                        .map_err(|_| request_error("create", "consumer", &name, &error))?;
                    check(
                        consumer_differences(&wanted, &info.config),
                        "consumer",
                        &name,
                    )?;
                    false
                }
            }
        }
        Err(error) => return Err(request_error("read", "consumer", &name, error)),
    };
    Ok(Provisioned {
        kind: "consumer",
        name,
        created,
        changed: false,
    })
}

fn consumer_differences(
    wanted: &pull::Config,
    found: &jetstream::consumer::Config,
) -> Vec<Difference> {
    // The server keeps a single filter in `filter_subject`, several in `filter_subjects`.
    let filters = |subject: &String, subjects: &Vec<String>| -> BTreeSet<String> {
        subjects
            .iter()
            .chain(Some(subject).filter(|s| !s.is_empty()))
            .cloned()
            .collect()
    };
    let mut differences = Differences::default();
    differences.check(
        "filter_subjects",
        &filters(&wanted.filter_subject, &wanted.filter_subjects),
        &filters(&found.filter_subject, &found.filter_subjects),
    );
    differences.check("ack_policy", &wanted.ack_policy, &found.ack_policy);
    differences.check("ack_wait", &wanted.ack_wait, &found.ack_wait);
    differences.check("max_deliver", &wanted.max_deliver, &found.max_deliver);
    differences.check(
        "max_ack_pending",
        &wanted.max_ack_pending,
        &found.max_ack_pending,
    );
    // New plans' consumer split off the Conductor's (`OlderConductor::split`) starts where that one
    // had got to, which is all of the stream this consumer has not read: what `All` asks for.
    let split_off = wanted.durable_name.as_deref() == Some(consumers::NEW_PLANS)
        && matches!(found.deliver_policy, DeliverPolicy::ByStartSequence { .. });
    if !split_off {
        differences.check(
            "deliver_policy",
            &wanted.deliver_policy,
            &found.deliver_policy,
        );
    }
    differences.0
}

/// Collects each setting whose existing value is not the wanted one.
#[derive(Default)]
struct Differences(Vec<Difference>);

impl Differences {
    fn check<T: PartialEq + fmt::Debug>(&mut self, field: &'static str, wanted: &T, found: &T) {
        if wanted != found {
            self.0.push(Difference {
                field,
                wanted: format!("{wanted:?}"),
                found: format!("{found:?}"),
            });
        }
    }
}

fn check(
    differences: Vec<Difference>,
    kind: &'static str,
    name: &str,
) -> Result<(), ProvisionError> {
    if differences.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::Conflict {
            kind,
            name: name.to_owned(),
            differences,
        })
    }
}
