//! `crew plans` and `crew show`: the plan records the Conductor keeps.

use infracrew_bus::{Bus, Kv, buckets};
use infracrew_protocol::{LockRecord, PlanId, PlanRecord, PlanRefError, ReviewRecord, lock_key};
use serde_json::json;

use crate::CliError;

fn read_error(error: impl std::fmt::Display) -> CliError {
    CliError::Read {
        what: "plan records",
        reason: error.to_string(),
    }
}

async fn records(bus: &Bus) -> Result<Vec<PlanRecord>, CliError> {
    let plans: Kv<PlanRecord> = bus.kv(buckets::PLANS).await.map_err(read_error)?;
    let mut records = Vec::new();
    for key in plans.keys().await.map_err(read_error)? {
        if let Some(record) = plans.get(&key).await.map_err(read_error)? {
            records.push(record.value);
        }
    }
    records.sort_by_key(|record| record.plan.created_at);
    Ok(records)
}

/// The plan a full id or a unique prefix of one names.
pub async fn resolve_plan(bus: &Bus, text: &str) -> Result<PlanId, CliError> {
    if let Ok(id) = text.parse::<PlanId>() {
        return Ok(id);
    }
    let plans: Kv<PlanRecord> = bus.kv(buckets::PLANS).await.map_err(read_error)?;
    let keys = plans.keys().await.map_err(read_error)?;
    PlanId::resolve(text, keys.iter().map(String::as_str)).map_err(|error| match error {
        PlanRefError::NoMatch(_) => {
            CliError::UnknownPlan(format!("{error} (crew plans lists them)"))
        }
        PlanRefError::Ambiguous { .. } => CliError::UnknownPlan(error.to_string()),
    })
}

pub async fn list(bus: &Bus, as_json: bool) -> Result<(), CliError> {
    let records = records(bus).await?;
    if as_json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| json!({"plan_id": r.plan.plan_id, "service": r.plan.service, "environment": r.plan.environment, "intent": r.plan.intent, "state": r.state, "requested_by": r.plan.requested_by, "created_at": r.plan.created_at}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if records.is_empty() {
        println!("no plans");
        return Ok(());
    }
    println!(
        "{:<10} {:<18} {:<9} {:<13} {:<18} {:<10}",
        "PLAN", "SERVICE", "ENV", "INTENT", "STATE", "BY"
    );
    for record in &records {
        let intent = serde_json::to_value(record.plan.intent)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<10} {:<18} {:<9} {:<13} {:<18} {:<10}",
            &record.plan.plan_id.to_string()[..8],
            record.plan.service,
            record.plan.environment,
            intent,
            record.state.to_string(),
            record.plan.requested_by
        );
    }
    Ok(())
}

pub async fn show(bus: &Bus, plan: &str, as_json: bool) -> Result<(), CliError> {
    let plan_id = resolve_plan(bus, plan).await?;
    let plans: Kv<PlanRecord> = bus.kv(buckets::PLANS).await.map_err(read_error)?;
    let Some(record) = plans
        .get(&plan_id.to_string())
        .await
        .map_err(read_error)?
        .map(|r| r.value)
    else {
        return Err(CliError::UnknownPlan(format!("there is no plan {plan_id}")));
    };
    if as_json {
        let text = serde_json::to_string_pretty(&record).map_err(read_error)?;
        println!("{text}");
        return Ok(());
    }
    let plan = &record.plan;
    println!("plan {}  {}", plan.plan_id, record.state);
    println!(
        "  {:?} {} in {}, requested by {}",
        plan.intent, plan.service, plan.environment, plan.requested_by
    );
    println!(
        "  playbook {} {}, risk {:?} ({})",
        plan.playbook.name,
        plan.playbook.version,
        plan.risk.level,
        plan.risk.reasons.join("; ")
    );
    if let Some(key) = &record.waiting_for_lock {
        let locks: Kv<LockRecord> = bus.kv(buckets::LOCKS).await.map_err(read_error)?;
        let holder = locks
            .get(key)
            .await
            .map_err(read_error)?
            .map(|lock| lock.value.plan_id.to_string());
        println!(
            "  waits for the lock on {key}, held by plan {}",
            holder.unwrap_or_else(|| "nobody (it is next)".into())
        );
    } else if !record.state.is_terminal() && record.lock_token.is_some() {
        println!(
            "  holds the lock on {}",
            lock_key(&plan.environment, &plan.service)
        );
    }
    if let Some(build) = &record.build {
        println!(
            "\n  change {} ({})",
            build.digest.short(),
            build.change.driver
        );
        for line in build.diff_text.lines() {
            println!("    {line}");
        }
        if let Some(cost) = &build.cost {
            println!(
                "  cost {:.2} -> {:.2} {} a month ({:+.2})",
                cost.monthly_before, cost.monthly_after, cost.currency, cost.monthly_delta
            );
        }
        for finding in &build.findings {
            println!(
                "  finding {:?} {}/{} on {}: {}",
                finding.enforcement,
                finding.policy,
                finding.rule,
                finding.resource,
                finding.message
            );
        }
    }
    for approval in &record.approvals {
        println!(
            "  approved by {} via {:?} at {}",
            approval.approver,
            approval.channel,
            approval.at.format("%H:%M:%S")
        );
    }
    for lifted in &record.overrides {
        println!(
            "  {} overrode {}: {}",
            lifted.owner,
            lifted.rules.join(", "),
            lifted.reason
        );
    }
    let reviews: Kv<ReviewRecord> = bus.kv(buckets::REVIEWS).await.map_err(read_error)?;
    if let Some(review) = reviews
        .get(&plan_id.to_string())
        .await
        .map_err(read_error)?
        .map(|r| r.value)
    {
        if let Some(message) = &review.slack {
            println!(
                "\n  slack review: message {} in channel {}",
                message.ts, message.channel
            );
        }
        if let Some(error) = &review.slack_error {
            println!("\n  slack review NOT POSTED: {error}");
        }
        if let Some(comment) = review.github_comment {
            println!("\n  pull-request comment: {comment}");
        }
        if let Some(error) = &review.github_error {
            println!("\n  pull request NOT UPDATED: {error}");
        }
    }
    println!("\n  history");
    for step in &record.history {
        println!(
            "    {}  {:<18} by {:<10} {}",
            step.at.format("%H:%M:%S"),
            step.to.to_string(),
            step.by,
            step.why
        );
    }
    Ok(())
}
