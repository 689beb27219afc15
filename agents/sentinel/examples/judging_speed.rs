//! Sentinel's judging speed with the default policy pack, through the same `judge` the agent
//! runs (input document, every policy, levels, cost), on one core.
//!
//! Run: `cargo run --release -p infracrew-sentinel --example judging_speed -- [SECONDS]`.

use std::{path::PathBuf, time::Duration};

use infracrew_protocol::{
    ChangeAction, ChangeSet, ResourceChange, SchemaVersion, ValidateRequest, examples,
};
use infracrew_sentinel::{Config, judge};
use infracrew_testkit::speed::{run_for, seconds_from_args};
use serde_json::json;

fn request(services: usize) -> ValidateRequest {
    let plan = examples::plan_spec();
    let resources = (0..services)
        .map(|index| ResourceChange {
            // One real catalog service; a 20-service plan repeats it under new names, which
            // the port and blast-radius rules then flag, as they would.
            resource: if services == 1 {
                "service/staging/social-intel".to_owned()
            } else {
                format!("service/staging/social-intel-{index}")
            },
            action: ChangeAction::Update,
            before: Some(json!({"image": "infracrew/social-intel:1.3.0", "replicas": 2, "port": 9000, "published_port": 9000,
                "resources": {"cpu_request_millis": 250, "cpu_limit_millis": 500, "memory_request_mib": 256, "memory_limit_mib": 512},
                "health": {"live": "/health/live", "ready": "/health/ready"}, "privileged": false, "host_network": false})),
            after: Some(json!({"image": "infracrew/social-intel:1.4.0", "replicas": 2, "port": 9000, "published_port": 9000,
                "env": {"LOG_LEVEL": "info"},
                "resources": {"cpu_request_millis": 250, "cpu_limit_millis": 500, "memory_request_mib": 256, "memory_limit_mib": 512},
                "health": {"live": "/health/live", "ready": "/health/ready"}, "privileged": false, "host_network": false})),
            changed_fields: vec!["image".into()],
        })
        .collect();
    let change = ChangeSet {
        plan_id: plan.plan_id,
        driver: "dry-run".into(),
        resources,
    };
    ValidateRequest {
        schema_version: SchemaVersion::CURRENT,
        plan_id: plan.plan_id,
        digest: change
            .digest()
            .unwrap_or_else(|_| unreachable!("a change set always serializes")),
        plan,
        change,
        requested_at: chrono::Utc::now(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = seconds_from_args()?;
    let playbooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks");
    let config = Config {
        playbooks,
        reload_interval: Duration::from_secs(60),
    };
    let loaded = config.load()?;
    println!(
        "sentinel bench: default pack ({} rules in {} files), policy set {}, one thread, {seconds} s per case",
        loaded.policies.rules().len(),
        std::fs::read_dir(config.policies_dir())?
            .filter(|entry| entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "rego")))
            .count(),
        &loaded.policies.version()[..19]
    );
    for services in [1, 20] {
        let request = request(services);
        let now = chrono::Utc::now();
        let first = judge::judge(&request, &loaded.policies, &loaded.context, now)?;
        let rate = run_for(seconds, || {
            judge::judge(&request, &loaded.policies, &loaded.context, now).map(drop)
        })?;
        println!(
            "{services:>2} service(s) per plan: {:>8.0} evaluations/s  ({:.1} µs each; verdict {:?}, {} finding(s))",
            rate.per_second,
            rate.micros_each,
            first.verdict,
            first.findings.len()
        );
    }
    Ok(())
}
