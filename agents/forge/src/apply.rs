//! Applying an approved plan, step by step. Nothing is applied unless the plan's record says
//! APPROVED with the request's digest and the target's lock carries its fencing token,
//! whoever sent the request; every refusal and every step is an OpsEvent.

use chrono::Utc;
use infracrew_bus::{Bus, Kv};
use infracrew_protocol::{
    ApplyRequest, ChangeAction, LockRecord, OpsEvent, OpsEventKind, PlanRecord, PlanState,
    SchemaVersion, ServiceState, lock_key, subjects,
};

use crate::{BuildRecord, driver::Apply, render::parse_resource_name};

/// The buckets the apply checks against.
#[derive(Debug, Clone)]
pub struct Records {
    pub plans: Kv<PlanRecord>,
    pub locks: Kv<LockRecord>,
    pub builds: Kv<BuildRecord>,
}

/// Why an ApplyRequest could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Reading a record or publishing failed: worth a retry.
    #[error("{0}")]
    Transient(String),
}

/// Reports the steps of one apply, numbered so a redelivered apply repeats the same ids.
struct Steps<'a> {
    bus: &'a Bus,
    request: &'a ApplyRequest,
    driver: &'static str,
    seq: u32,
}

impl Steps<'_> {
    async fn event(
        &mut self,
        kind: OpsEventKind,
        step: Option<String>,
        message: String,
    ) -> Result<(), ApplyError> {
        // Refusals are numbered 0, so they never take the place of a step of a real apply.
        let seq = if kind == OpsEventKind::ApplyRefused {
            0
        } else {
            self.seq += 1;
            self.seq
        };
        let event = OpsEvent {
            schema_version: SchemaVersion::CURRENT,
            plan_id: self.request.plan_id,
            digest: self.request.digest.clone(),
            seq,
            kind,
            step,
            message,
            driver: self.driver.to_owned(),
            at: Utc::now(),
        };
        self.bus
            .publish(subjects::OPS_EVENT, &event)
            .await
            .map_err(|e| ApplyError::Transient(e.to_string()))?;
        Ok(())
    }
}

fn transient(error: impl std::fmt::Display) -> ApplyError {
    ApplyError::Transient(error.to_string())
}

/// Checks the gate, then applies, verifies, and rolls back what it applied on a failure.
pub async fn apply<D: Apply>(
    bus: &Bus,
    driver: &D,
    records: &Records,
    request: &ApplyRequest,
) -> Result<(), ApplyError> {
    let mut steps = Steps {
        bus,
        request,
        driver: driver.name(),
        seq: 0,
    };
    let build = match check_gate(records, request).await? {
        Ok(build) => build,
        Err(refusal) => {
            tracing::warn!(plan = %request.plan_id, %refusal, "apply refused");
            return steps
                .event(
                    OpsEventKind::ApplyRefused,
                    None,
                    format!("{refusal}; nothing was changed"),
                )
                .await;
        }
    };
    let change = &build.change;
    steps
        .event(
            OpsEventKind::ApplyStarted,
            None,
            format!(
                "applying {} resource(s) with {}",
                change.resources.len(),
                driver.name()
            ),
        )
        .await?;

    let mut applied: Vec<(&str, &str, Option<ServiceState>)> = Vec::new();
    for resource in change
        .resources
        .iter()
        .filter(|r| r.action != ChangeAction::Unchanged)
    {
        let Some((environment, service)) = parse_resource_name(&resource.resource) else {
            continue;
        };
        let decode = |value: &Option<serde_json::Value>| {
            value
                .as_ref()
                .and_then(|value| serde_json::from_value::<ServiceState>(value.clone()).ok())
        };
        let (before, after) = (decode(&resource.before), decode(&resource.after));
        let step = format!("apply {}", resource.resource);
        steps
            .event(
                OpsEventKind::StepStarted,
                Some(step.clone()),
                format!("{:?} {}", resource.action, resource.resource).to_lowercase(),
            )
            .await?;
        let outcome = match driver.apply(environment, service, after.as_ref()).await {
            Ok(()) => driver.verify(environment, service, after.as_ref()).await,
            Err(error) => Err(error),
        };
        if let Err(error) = outcome {
            steps
                .event(OpsEventKind::StepFailed, Some(step), error.to_string())
                .await?;
            applied.push((environment, service, before));
            for (environment, service, before) in applied.iter().rev() {
                driver
                    .apply(environment, service, before.as_ref())
                    .await
                    .map_err(transient)?;
            }
            return steps
                .event(
                    OpsEventKind::RolledBack,
                    None,
                    format!("rolled back after: {error}"),
                )
                .await;
        }
        steps
            .event(
                OpsEventKind::StepSucceeded,
                Some(step),
                format!("{} is as approved", resource.resource),
            )
            .await?;
        applied.push((environment, service, before));
    }
    steps
        .event(
            OpsEventKind::ApplyDone,
            None,
            format!("applied and verified with {}", driver.name()),
        )
        .await
}

/// The build to apply, or the reason the request must be refused.
async fn check_gate(
    records: &Records,
    request: &ApplyRequest,
) -> Result<Result<BuildRecord, String>, ApplyError> {
    if request.expires_at <= Utc::now() {
        return Ok(Err(format!(
            "the request expired at {}",
            request.expires_at
        )));
    }
    let key = request.plan_id.to_string();
    let Some(record) = records
        .plans
        .get(&key)
        .await
        .map_err(transient)?
        .map(|r| r.value)
    else {
        return Ok(Err(format!(
            "plan {} has no record: it was not submitted through the Conductor",
            request.plan_id
        )));
    };
    // A redelivered request finds its plan already APPLYING.
    if !matches!(record.state, PlanState::Approved | PlanState::Applying) {
        return Ok(Err(format!(
            "plan {} is {}, not APPROVED",
            request.plan_id, record.state
        )));
    }
    if record.digest() != Some(&request.digest) {
        let approved = record
            .digest()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        return Ok(Err(format!(
            "the request names digest {}, but the approved change is {approved}",
            request.digest
        )));
    }
    let lock_name = lock_key(&record.plan.environment, &record.plan.service);
    let lock = records
        .locks
        .get(&lock_name)
        .await
        .map_err(transient)?
        .map(|l| l.value);
    match lock {
        Some(lock) if lock.plan_id == request.plan_id && lock.token == request.fencing_token => {}
        Some(lock) if lock.plan_id != request.plan_id => {
            return Ok(Err(format!(
                "the lock on {lock_name} is held by plan {}",
                lock.plan_id
            )));
        }
        Some(lock) => {
            return Ok(Err(format!(
                "fencing token {} is stale: the lock on {lock_name} is at token {}",
                request.fencing_token, lock.token
            )));
        }
        None => return Ok(Err(format!("nobody holds the lock on {lock_name}"))),
    }
    let build = records
        .builds
        .get(&key)
        .await
        .map_err(transient)?
        .map(|b| b.value);
    match build {
        Some(build) if build.digest == request.digest => Ok(Ok(build)),
        _ => Ok(Err(format!(
            "no build with digest {} is recorded",
            request.digest
        ))),
    }
}
