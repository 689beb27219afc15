//! Forge, the builder and operator: renders each routed plan against what runs, has Sentinel
//! judge the exact change, reports the build as ready, blocked or nothing to change, and
//! applies approved plans step by step.

pub mod apply;
pub mod built;
pub mod ci_dispatch;
pub mod container;
pub mod driver;
pub mod drivers;
pub mod dry_run;
pub mod metrics;
pub mod render;

use std::{sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{Bus, ConsumerSettings, Delivery, HandlerError, Shutdown, buckets};
use infracrew_protocol::{
    ApplyRequest, BuildOutcome, BuildStatus, ChangeSet, DecodeError, Enforcement, FieldError,
    Finding, PlanDigest, PlanSpec, PlanState, SchemaVersion, ValidateRequest, ValidationResult,
    Verdict, decode, signing::Verifier, subjects,
};
use serde::{Deserialize, Serialize};

use crate::{
    apply::Records,
    driver::Apply,
    drivers::DriverMap,
    metrics::ForgeMetrics,
    render::{RenderError, diff_text, render},
};

/// What Forge reads, by subject.
#[derive(Debug)]
pub enum ForgeMessage {
    /// Boxed: a plan is much larger than the other messages.
    Plan(Box<PlanSpec>),
    Validated(ValidationResult),
    Apply(ApplyRequest),
}

impl infracrew_bus::Inbound for ForgeMessage {
    fn decode(subject: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        match subject {
            subjects::PLAN_ROUTED => decode(payload).map(|plan| ForgeMessage::Plan(Box::new(plan))),
            subjects::VALIDATE_RESULT => decode(payload).map(ForgeMessage::Validated),
            subjects::APPLY_REQUEST => decode(payload).map(ForgeMessage::Apply),
            other => Err(DecodeError::Invalid {
                kind: "forge input",
                errors: vec![FieldError {
                    path: String::new(),
                    message: format!("Forge does not read {other}"),
                }],
            }),
        }
    }
}

/// A build waiting for its validation: the exact change that was sent to be judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    pub plan: PlanSpec,
    pub change: ChangeSet,
    pub digest: PlanDigest,
    /// The apply carrying this build out, if one took it: two requests for one plan (a resent
    /// one, or one per Forge replica) never apply it at once or one after the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<ApplyLease>,
}

/// One apply's hold on a build, written by compare-and-set on the build record's revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyLease {
    /// Which Forge and which delivery of which ApplyRequest: `forge <instance>, request at
    /// stream sequence <n>, delivery <d>`.
    pub holder: String,
    /// Renewed while the apply works; one not renewed for [`apply::LEASE`] has lapsed (its
    /// Forge died) and the next delivery takes it over.
    pub renewed_at: DateTime<Utc>,
    /// How the apply ended (`applied`, `rolled back`, `failed`); set, no request applies the
    /// build again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
}

impl ApplyLease {
    /// `holder`'s lease, taken now.
    fn new(holder: &str) -> Self {
        ApplyLease {
            holder: holder.to_owned(),
            renewed_at: Utc::now(),
            ended: None,
        }
    }
}

struct Forge<D> {
    bus: Bus,
    drivers: DriverMap<D>,
    /// The Conductor's public key: only requests it signed are applied.
    conductor: Verifier,
    records: Records,
    metrics: ForgeMetrics,
    /// This process, in the apply leases it takes.
    instance: String,
}

/// Runs Forge with a driver per environment until shutdown.
pub async fn run<D: Apply>(
    agent: Agent,
    drivers: DriverMap<D>,
    conductor: Verifier,
    shutdown: Shutdown,
) -> Result<(), WorkError> {
    let records = Records {
        plans: agent.bucket(buckets::PLANS).await?,
        locks: agent.bucket(buckets::LOCKS).await?,
        builds: agent.bucket(buckets::BUILDS).await?,
        built: Arc::default(),
    };
    let forge = Arc::new(Forge {
        bus: agent.bus.clone(),
        drivers,
        conductor,
        records,
        metrics: ForgeMetrics::default(),
        instance: agent.identity.instance_id.to_string(),
    });
    agent
        .metrics
        .register(|registry| forge.metrics.register(registry));
    // Checked once before the consumer binds, so no heartbeat calls Forge ready unchecked.
    check_drivers(&agent, &forge).await;
    let checks = {
        let (agent, forge, shutdown) = (agent.clone(), forge.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(agent.identity.interval);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => check_drivers(&agent, &forge).await,
                }
            }
        })
    };
    let handler = move |message: ForgeMessage, delivery: Delivery| {
        let forge = forge.clone();
        async move {
            match message {
                ForgeMessage::Plan(plan) => forge.build(*plan).await,
                ForgeMessage::Validated(result) => forge.conclude(result).await,
                ForgeMessage::Apply(request) => {
                    let started = Instant::now();
                    let holder = format!(
                        "forge {}, request at stream sequence {}, delivery {}",
                        forge.instance,
                        delivery.stream_sequence(),
                        delivery.delivered()
                    );
                    let end = apply::apply(
                        &forge.bus,
                        &forge.drivers,
                        &forge.conductor,
                        &forge.records,
                        &request,
                        &delivery,
                        &holder,
                    )
                    .await;
                    forge
                        .metrics
                        .request_ended(&end, started.elapsed().as_secs_f64());
                    end.map(drop)
                        .map_err(|error| HandlerError::Retry(error.to_string()))
                }
            }
        }
    };
    let outcome = agent
        .consume(ConsumerSettings::default(), handler, shutdown.clone())
        .await;
    shutdown.cancel();
    let _ = checks.await;
    outcome
}

/// Checks every driver's target (the container engine answers, say): Forge is ready only
/// while it could apply. Runs every heartbeat interval.
async fn check_drivers<D: Apply>(agent: &Agent, forge: &Forge<D>) {
    for driver in forge.drivers.all() {
        let need = format!("{} driver", driver.name());
        match driver.check().await {
            Ok(detail) => agent.readiness.pass(&need, detail),
            Err(error) => agent.readiness.fail(&need, error.reason),
        }
    }
}

fn retry(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(error.to_string())
}

impl<D: Apply> Forge<D> {
    /// Renders the plan; an empty diff ends as nothing to change, a render failure as
    /// blocked, anything else goes to Sentinel. The build record is written for every
    /// outcome, so a late verdict on an earlier rendering never overrides a newer one.
    async fn build(&self, plan: PlanSpec) -> Result<(), HandlerError> {
        let driver = self.drivers.get(&plan.environment, &plan.service);
        // The record is read alongside the rendering, so checking it costs no time.
        let key = plan.plan_id.to_string();
        let (rendered, record) = tokio::join!(render(&plan, driver), self.records.plans.get(&key));
        // A copy routed again (the sweeper's, for a routing it thinks lost) that arrives after
        // the plan moved on must not replace the build the plan is being decided on.
        if let Some(record) = record.map_err(retry)?
            && record.value.state != PlanState::Validating
        {
            tracing::info!(plan = %plan.plan_id, state = %record.value.state, "routed again after it was built; not built again");
            return Ok(());
        }
        self.records.built.remember_lock(&plan);
        let (change, blocked_by) = match rendered {
            Ok(change) => (change, None),
            Err(RenderError::Driver(error)) => return Err(retry(error)),
            Err(error) => {
                let finding = Finding {
                    policy: "forge".into(),
                    rule: "render".into(),
                    resource: error.resource().to_owned(),
                    enforcement: Enforcement::HardMandatory,
                    message: error.to_string(),
                };
                let empty = ChangeSet {
                    plan_id: plan.plan_id,
                    driver: driver.name().into(),
                    resources: Vec::new(),
                };
                (empty, Some(finding))
            }
        };
        let digest = change
            .digest()
            .map_err(|error| HandlerError::Reject(error.to_string()))?;
        let record = BuildRecord {
            plan: plan.clone(),
            change: change.clone(),
            digest: digest.clone(),
            applying: None,
        };
        let to_be_judged = blocked_by.is_none() && !change.summary().is_empty();
        let announced = async move {
            if let Some(finding) = blocked_by {
                return self
                    .report(
                        &change,
                        digest,
                        BuildOutcome::Blocked,
                        vec![finding],
                        None,
                        String::new(),
                    )
                    .await;
            }
            if change.summary().is_empty() {
                tracing::info!(plan = %plan.plan_id, "nothing to change");
                return self
                    .report(
                        &change,
                        digest,
                        BuildOutcome::NoChange,
                        Vec::new(),
                        None,
                        String::new(),
                    )
                    .await;
            }
            let request = ValidateRequest {
                schema_version: SchemaVersion::CURRENT,
                plan_id: plan.plan_id,
                digest,
                plan,
                change,
                requested_at: Utc::now(),
            };
            self.bus
                .publish(subjects::VALIDATE_PENDING, &request)
                .await
                .map(drop)
                .map_err(retry)
        };
        // The record is sent first and both acks are awaited together (one round trip): it is
        // read back when an ApplyRequest comes, and by a verdict that outruns its remembering
        // (one that outruns the record itself is tried again).
        let (stored, announced) = tokio::join!(self.records.builds.put(&key, &record), announced);
        let revision = stored.map_err(retry)?;
        if to_be_judged {
            self.records
                .built
                .remember_build(Arc::new(record), revision);
        }
        announced
    }

    /// Turns Sentinel's verdict on the change it was sent into the build's status.
    async fn conclude(&self, result: ValidationResult) -> Result<(), HandlerError> {
        let Some(build) = self.judged_build(&result).await? else {
            return Ok(());
        };
        let outcome = match result.verdict {
            Verdict::Pass => BuildOutcome::Ready,
            Verdict::Fail => BuildOutcome::Blocked,
        };
        self.report(
            &build.change,
            result.digest,
            outcome,
            result.findings,
            result.cost,
            result.policy_set,
        )
        .await
    }

    /// The build `result` judged: remembered from its rendering, or else read from the build
    /// record; `None` when the record holds another rendering.
    async fn judged_build(
        &self,
        result: &ValidationResult,
    ) -> Result<Option<Arc<BuildRecord>>, HandlerError> {
        if let Some(build) = self.records.built.judged(result.plan_id, &result.digest) {
            return Ok(Some(build));
        }
        let record = self
            .records
            .builds
            .get(&result.plan_id.to_string())
            .await
            .map_err(retry)?;
        // Every rendering stores its record before Sentinel can answer, so a missing one is a
        // read that has not caught up (a lagging replica): try again rather than lose the verdict.
        let Some(record) = record.map(|record| record.value) else {
            return Err(HandlerError::Retry(format!(
                "no build is recorded for plan {} yet",
                result.plan_id
            )));
        };
        if record.digest != result.digest {
            tracing::warn!(plan = %result.plan_id, judged = %result.digest, built = %record.digest, "a validation result for an older rendering; ignored");
            return Ok(None);
        }
        Ok(Some(Arc::new(record)))
    }

    /// Reports the build of `change`, whose digest the caller computed when it was rendered.
    async fn report(
        &self,
        change: &ChangeSet,
        digest: PlanDigest,
        outcome: BuildOutcome,
        findings: Vec<Finding>,
        cost: Option<infracrew_protocol::CostEstimate>,
        policy_set: String,
    ) -> Result<(), HandlerError> {
        let status = BuildStatus {
            schema_version: SchemaVersion::CURRENT,
            plan_id: change.plan_id,
            digest,
            outcome,
            summary: change.summary(),
            diff_text: diff_text(change),
            change: change.clone(),
            findings,
            cost,
            policy_set,
            built_at: Utc::now(),
        };
        tracing::info!(plan = %status.plan_id, outcome = ?status.outcome, "build reported");
        self.bus
            .publish(subjects::BUILD_STATUS, &status)
            .await
            .map_err(retry)?;
        Ok(())
    }
}
