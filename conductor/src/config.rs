//! The Conductor's configuration file: approval rules per environment, and its timings.

use std::{collections::BTreeMap, path::Path};

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
    /// How many plans may queue on one lock. The queue lives in the lock's record, which
    /// every plan joining it or taking the lock rewrites; plans past the limit wait outside
    /// it, and the sweeper queues them as it shortens.
    #[serde(default = "defaults::lock_queue_limit")]
    #[schemars(range(min = 1))]
    pub lock_queue_limit: usize,
    /// How long after its approval Forge may start a plan's apply: every ApplyRequest for
    /// the approval expires then, and the sweeper fails a plan still APPROVED after it.
    #[serde(default = "defaults::apply_request_ttl_seconds")]
    #[schemars(range(min = 1))]
    pub apply_request_ttl_seconds: u64,
    /// How often expired approval windows and stale locks are looked for.
    #[serde(default = "defaults::sweep_seconds")]
    #[schemars(range(min = 1))]
    pub sweep_seconds: u64,
    /// How long an agent may go without a heartbeat before it is marked down (and alerted
    /// on); approvals wait for a live Forge.
    #[serde(default = "defaults::agent_silence_seconds")]
    #[schemars(range(min = 1))]
    pub agent_silence_seconds: u64,
    /// A demo installation takes CLI decisions on the word of `--as` (each recorded as
    /// unauthenticated); otherwise a decision from the CLI must be signed with the approver's
    /// key, listed under `approver_keys`.
    #[serde(default)]
    pub demo: bool,
    /// Each approver identity's public nkey (U…): CLI decisions signed with it are theirs.
    #[serde(default)]
    pub approver_keys: BTreeMap<String, String>,
    /// Plan reviews in Slack; without this section the Conductor posts nowhere and takes
    /// decisions from the CLI only. Its secrets come from the environment, never the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackConfig>,
    /// Plans on pull requests: commit statuses, one comment per plan, and approvals from
    /// comments and reviews through the webhook. Its secrets come from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubConfig>,
}

/// How the Conductor talks to GitHub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The REST API's base address (GitHub Enterprise Server: `https://HOST/api/v3`; tests
    /// point it at a simulator).
    #[serde(default = "defaults::github_api_url")]
    pub api_url: String,
    /// GitHub logins and the approver identity each one is (the same identity as in Slack
    /// and the CLI, so one person's approval counts once).
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Diff lines shown in the pull-request comment; a longer diff is cut, with the command
    /// that shows it whole.
    #[serde(default = "defaults::slack_diff_lines")]
    #[schemars(range(min = 1))]
    pub diff_lines: usize,
}

/// How the Conductor talks to Slack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The review channel: a name such as `#infra-reviews`, or a channel id.
    #[serde(default = "defaults::slack_channel")]
    pub channel: String,
    /// The Web API's base address (tests point it at a simulator).
    #[serde(default = "defaults::slack_api_url")]
    pub api_url: String,
    /// How Slack delivers slash commands and button presses: `http` (Slack POSTs to the
    /// Conductor's endpoint, which must be reachable from Slack) or `socket` (Socket Mode: the
    /// Conductor dials out, for installations without a public address).
    #[serde(default)]
    pub mode: SlackMode,
    /// Slack user ids (`U…`) and the approver identity each one is; a person keeps one
    /// identity across Slack, GitHub and the CLI, so their approval counts once.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Diff lines shown in a review message; a longer diff is cut, with the command that
    /// shows it whole.
    #[serde(default = "defaults::slack_diff_lines")]
    #[schemars(range(min = 1))]
    pub diff_lines: usize,
}

/// How Slack reaches the Conductor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SlackMode {
    #[default]
    Http,
    Socket,
}

mod defaults {
    pub fn lock_lease_seconds() -> u64 {
        30
    }
    pub fn lock_queue_limit() -> usize {
        256
    }
    pub fn apply_request_ttl_seconds() -> u64 {
        300
    }
    pub fn sweep_seconds() -> u64 {
        5
    }
    pub fn agent_silence_seconds() -> u64 {
        120
    }
    pub fn slack_channel() -> String {
        "#infra-reviews".to_owned()
    }
    pub fn slack_api_url() -> String {
        "https://slack.com/api".to_owned()
    }
    pub fn slack_diff_lines() -> usize {
        30
    }
    pub fn github_api_url() -> String {
        "https://api.github.com".to_owned()
    }
}

/// Settings given on the command line or in the environment, over the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub lock_lease_seconds: Option<u64>,
    pub apply_request_ttl_seconds: Option<u64>,
    pub sweep_seconds: Option<u64>,
    pub agent_silence_seconds: Option<u64>,
    /// Environments that approve validated plans without a person.
    pub auto_approve: Option<Vec<String>>,
}

impl ConductorConfig {
    /// Reads and checks the file: its schema, then what a schema cannot say (every group an
    /// allow list names exists).
    pub fn load(file: &Path) -> Result<Self, String> {
        let config: Self = load_toml(file).map_err(|errors: LoadErrors| errors.to_string())?;
        config
            .approvals
            .check()
            .map_err(|reason| format!("{}: {reason}", file.display()))?;
        Ok(config)
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
            (
                &mut self.agent_silence_seconds,
                overrides.agent_silence_seconds,
            ),
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
    fn the_slack_example_loads_with_its_defaults() {
        let config = ConductorConfig::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/slack.example.toml"),
        )
        .unwrap();
        let slack = config.slack.unwrap();
        assert_eq!(slack.api_url, "https://slack.com/api");
        assert_eq!(slack.mode, SlackMode::Http);
        assert_eq!(slack.users["U01ALICE000"], "alice");
    }

    #[test]
    fn the_github_example_loads_with_its_defaults() {
        let config = ConductorConfig::load(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/github.example.toml"),
        )
        .unwrap();
        let github = config.github.unwrap();
        assert_eq!(github.api_url, "https://api.github.com");
        assert_eq!(github.diff_lines, 30);
        assert_eq!(github.users["alice-gh"], "alice");
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
