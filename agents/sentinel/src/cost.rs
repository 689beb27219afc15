//! Monthly cost of what a change touches, before and after it, from the price table.

use infracrew_protocol::{ChangeSet, CostEstimate};
use serde_json::Value;

use crate::settings::Prices;

/// Hours in an average month (365 × 24 / 12).
const HOURS_PER_MONTH: f64 = 730.0;

/// Costs the change's services by their resource requests (what is reserved for them).
pub fn estimate(change: &ChangeSet, prices: &Prices) -> CostEstimate {
    let (before, after) = change
        .resources
        .iter()
        .fold((0.0, 0.0), |(before, after), resource| {
            (
                before + monthly(resource.before.as_ref(), prices),
                after + monthly(resource.after.as_ref(), prices),
            )
        });
    let cents = |amount: f64| (amount * 100.0).round() / 100.0;
    CostEstimate {
        currency: prices.currency.clone(),
        monthly_before: cents(before),
        monthly_after: cents(after),
        monthly_delta: cents(after - before),
    }
}

fn monthly(state: Option<&Value>, prices: &Prices) -> f64 {
    let Some(state) = state else { return 0.0 };
    let number = |pointer: &str| {
        state
            .pointer(pointer)
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let cores = number("/resources/cpu_request_millis") / 1000.0;
    let gib = number("/resources/memory_request_mib") / 1024.0;
    let replicas = number("/replicas");
    replicas * (cores * prices.cpu_core_hour + gib * prices.memory_gib_hour) * HOURS_PER_MONTH
}

#[cfg(test)]
mod tests {
    use infracrew_protocol::{ChangeAction, PlanId, ResourceChange};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn costs_requests_by_replicas_before_and_after() {
        let prices = Prices {
            currency: "USD".into(),
            cpu_core_hour: 0.04,
            memory_gib_hour: 0.005,
        };
        let service = |replicas: u32| json!({"replicas": replicas, "resources": {"cpu_request_millis": 500, "memory_request_mib": 1024}});
        let change = ChangeSet {
            plan_id: PlanId(Uuid::nil()),
            driver: "dry-run".into(),
            resources: vec![ResourceChange {
                resource: "service/prod/social-intel".into(),
                action: ChangeAction::Update,
                before: Some(service(2)),
                after: Some(service(4)),
                changed_fields: vec!["replicas".into()],
            }],
        };
        let cost = estimate(&change, &prices);
        // One replica: 0.5 core × 0.04 + 1 GiB × 0.005 = 0.025 per hour = 18.25 a month.
        assert_eq!(
            (cost.monthly_before, cost.monthly_after, cost.monthly_delta),
            (36.5, 73.0, 36.5)
        );
        assert_eq!(cost.currency, "USD");
    }
}
