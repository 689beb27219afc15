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

impl ConductorConfig {
    pub fn load(file: &Path) -> Result<Self, LoadErrors> {
        load_toml(file)
    }
}
