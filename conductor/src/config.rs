//! The Conductor's configuration file: approval rules per environment, and its timings.

use std::path::Path;

use infracrew_playbooks::{LoadErrors, load_toml};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::approvals::ApprovalRules;

/// What the Conductor runs with. A mistake stops it at start with the file, key and reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConductorConfig {
    pub approvals: ApprovalRules,
    /// How long a lock lives without its holder renewing it.
    #[serde(default = "defaults::lock_lease_seconds")]
    #[schemars(range(min = 1))]
    pub lock_lease_seconds: u64,
    /// How long an ApplyRequest may wait before Forge refuses it.
    #[serde(default = "defaults::apply_request_ttl_seconds")]
    #[schemars(range(min = 1))]
    pub apply_request_ttl_seconds: u64,
    /// How often expired approval windows and stale locks are looked for.
    #[serde(default = "defaults::sweep_seconds")]
    #[schemars(range(min = 1))]
    pub sweep_seconds: u64,
}

mod defaults {
    pub fn lock_lease_seconds() -> u64 {
        30
    }
    pub fn apply_request_ttl_seconds() -> u64 {
        300
    }
    pub fn sweep_seconds() -> u64 {
        5
    }
}

/// Settings given on the command line or in the environment, over the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub lock_lease_seconds: Option<u64>,
    pub apply_request_ttl_seconds: Option<u64>,
    pub sweep_seconds: Option<u64>,
    /// Environments that approve validated plans without a person.
    pub auto_approve: Option<Vec<String>>,
}

impl ConductorConfig {
    pub fn load(file: &Path) -> Result<Self, LoadErrors> {
        load_toml(file)
    }

    /// Applies `overrides`; an auto-approve environment the rules do not know is an error.
    pub fn with_overrides(mut self, overrides: Overrides) -> Result<Self, String> {
        for (setting, value) in [
            (&mut self.lock_lease_seconds, overrides.lock_lease_seconds),
            (
                &mut self.apply_request_ttl_seconds,
                overrides.apply_request_ttl_seconds,
            ),
            (&mut self.sweep_seconds, overrides.sweep_seconds),
        ] {
            if let Some(value) = value {
                *setting = value;
            }
        }
        if let Some(environments) = overrides.auto_approve {
            for environment in &environments {
                if !self.approvals.environments.contains_key(environment) {
                    let known: Vec<&str> = self
                        .approvals
                        .environments
                        .keys()
                        .map(String::as_str)
                        .collect();
                    return Err(format!(
                        "auto-approve names environment {environment}, which has no approval rules (they are: {})",
                        known.join(", ")
                    ));
                }
            }
            for (environment, rules) in &mut self.approvals.environments {
                rules.auto_approve = environments.contains(environment);
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn demo() -> ConductorConfig {
        ConductorConfig::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/demo.toml"),
        )
        .unwrap()
    }

    #[test]
    fn overrides_replace_the_file_settings() {
        let config = demo()
            .with_overrides(Overrides {
                sweep_seconds: Some(2),
                auto_approve: Some(vec!["dev".into()]),
                ..Overrides::default()
            })
            .unwrap();
        assert_eq!((config.sweep_seconds, config.lock_lease_seconds), (2, 30));
        assert!(config.approvals.environments["dev"].auto_approve);
        assert!(!config.approvals.environments["prod"].auto_approve);
        let error = demo()
            .with_overrides(Overrides {
                auto_approve: Some(vec!["qa".into()]),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(
            error,
            "auto-approve names environment qa, which has no approval rules (they are: dev, prod, staging)"
        );
    }
}
