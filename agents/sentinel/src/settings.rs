//! Sentinel's policy settings (`policy.toml`): thresholds, raises, freezes, prices, budgets.

use std::{collections::BTreeMap, path::Path};

use chrono::{DateTime, Utc};
use infracrew_playbooks::{Catalog, LoadError, LoadErrors, load_toml};
use infracrew_protocol::Enforcement;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the policies are configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub prod_environments: Vec<String>,
    #[schemars(range(min = 1))]
    pub min_prod_replicas: u32,
    #[schemars(range(min = 1))]
    pub max_services_per_plan: u32,
    /// Per environment, rule name -> the level it is raised to there.
    #[serde(default)]
    pub raise: BTreeMap<String, BTreeMap<String, Enforcement>>,
    #[serde(default)]
    pub freeze: Vec<FreezeWindow>,
    /// Per environment; every catalog environment needs one.
    pub prices: BTreeMap<String, Prices>,
    /// Per environment; every catalog environment needs one.
    pub budget: BTreeMap<String, Budget>,
}

/// A time during which changes to an environment need an override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FreezeWindow {
    pub environment: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub reason: String,
}

/// What capacity costs per hour in one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub currency: String,
    #[schemars(range(min = 0))]
    pub cpu_core_hour: f64,
    #[schemars(range(min = 0))]
    pub memory_gib_hour: f64,
}

/// How much one plan may add to an environment's monthly cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[schemars(range(min = 0))]
    pub max_monthly_increase: f64,
}

impl PolicySettings {
    /// Loads `file` and checks it against the catalog's environments.
    pub fn load(file: &Path, catalog: &Catalog) -> Result<Self, LoadErrors> {
        let settings: PolicySettings = load_toml(file)?;
        let mut errors = Vec::new();
        let mut error = |path: String, reason: String| {
            errors.push(LoadError {
                file: file.to_owned(),
                path,
                reason,
            })
        };
        for environment in &catalog.environments {
            if !settings.prices.contains_key(environment) {
                error(
                    "/prices".into(),
                    format!("no prices for environment {environment}"),
                );
            }
            if !settings.budget.contains_key(environment) {
                error(
                    "/budget".into(),
                    format!("no budget for environment {environment}"),
                );
            }
        }
        for (index, window) in settings.freeze.iter().enumerate() {
            if window.end <= window.start {
                error(
                    format!("/freeze/{index}/end"),
                    "ends before it starts".into(),
                );
            }
        }
        if errors.is_empty() {
            Ok(settings)
        } else {
            Err(LoadErrors(errors))
        }
    }

    /// The freeze in force in `environment` at `now`, if any.
    pub fn freeze_at(&self, environment: &str, now: DateTime<Utc>) -> Option<&FreezeWindow> {
        self.freeze.iter().find(|window| {
            window.environment == environment && window.start <= now && now < window.end
        })
    }

    /// A rule's level in an environment: the declared one, or higher if configured so.
    pub fn enforcement(&self, environment: &str, rule: &str, declared: Enforcement) -> Enforcement {
        let raised = self
            .raise
            .get(environment)
            .and_then(|rules| rules.get(rule))
            .copied();
        raised.map_or(declared, |raised| raised.max(declared))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use infracrew_playbooks::Playbooks;

    use super::*;

    #[test]
    fn levels_are_raised_per_environment_and_never_lowered() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks");
        let catalog = Playbooks::load(&dir).unwrap().catalog;
        let mut settings = PolicySettings::load(&dir.join("policy.toml"), &catalog).unwrap();
        let raised = settings.enforcement("prod", "large_scale_change", Enforcement::Advisory);
        assert_eq!(
            raised,
            Enforcement::SoftMandatory,
            "raised in prod by policy.toml"
        );
        let staging = settings.enforcement("staging", "large_scale_change", Enforcement::Advisory);
        assert_eq!(staging, Enforcement::Advisory);

        settings
            .raise
            .entry("prod".into())
            .or_default()
            .insert("image_pinned".into(), Enforcement::Advisory);
        let kept = settings.enforcement("prod", "image_pinned", Enforcement::HardMandatory);
        assert_eq!(
            kept,
            Enforcement::HardMandatory,
            "a configured lower level is ignored"
        );
    }

    #[test]
    fn every_environment_needs_prices_and_a_budget() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../playbooks");
        let mut catalog = Playbooks::load(&dir).unwrap().catalog;
        catalog.environments.push("qa".into());
        let errors = PolicySettings::load(&dir.join("policy.toml"), &catalog)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("policy.toml: at /prices: no prices for environment qa"),
            "{errors}"
        );
        assert!(
            errors.contains("at /budget: no budget for environment qa"),
            "{errors}"
        );
    }
}
