//! Sentinel, the policy gate: judges rendered changes against policy-as-code and cost.

pub mod cost;
pub mod judge;
pub mod policy;
pub mod settings;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use chrono::Utc;
use infracrew_agent_runtime::{Agent, WorkError};
use infracrew_bus::{ConsumerSettings, Delivery, HandlerError, Shutdown};
use infracrew_playbooks::{LoadErrors, Playbooks};
use infracrew_protocol::{ValidateRequest, subjects};
use sha2::{Digest, Sha256};

use crate::{judge::Context, policy::PolicySet, settings::PolicySettings};

/// Where Sentinel reads its catalog, settings and policies.
#[derive(Debug, Clone)]
pub struct Config {
    /// The playbooks folder: `catalog.toml`, `policy.toml` and `policies/*.rego`.
    pub playbooks: PathBuf,
    /// How often the policies folder is checked for changes.
    pub reload_interval: Duration,
}

/// Why Sentinel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Files(#[from] LoadErrors),
    #[error("the policies in {dir} do not load: {source}")]
    Policies {
        dir: PathBuf,
        source: policy::PolicyError,
    },
}

/// Everything Sentinel judges with, loaded and checked at start.
#[derive(Debug)]
pub struct Loaded {
    pub context: Context,
    pub policies: PolicySet,
}

impl Config {
    pub fn policies_dir(&self) -> PathBuf {
        self.playbooks.join("policies")
    }

    /// Loads the catalog, the settings and the policies; any problem stops the start.
    pub fn load(&self) -> Result<Loaded, StartError> {
        let catalog = Playbooks::load(&self.playbooks)?.catalog;
        let settings = PolicySettings::load(&self.playbooks.join("policy.toml"), &catalog)?;
        let dir = self.policies_dir();
        let policies = PolicySet::load(&dir).map_err(|source| StartError::Policies {
            dir: dir.clone(),
            source,
        })?;
        Ok(Loaded {
            context: Context { catalog, settings },
            policies,
        })
    }
}

/// The policy set in force, swapped whole when a reload succeeds.
type Current = Arc<RwLock<Arc<PolicySet>>>;

/// Judges every ValidateRequest and publishes the ValidationResult, reloading the policies
/// when their files change (a set that does not compile is refused; the previous one stays).
pub async fn run(
    agent: Agent,
    config: Config,
    loaded: Loaded,
    shutdown: Shutdown,
) -> Result<(), WorkError> {
    tracing::info!(
        policy_set = loaded.policies.version(),
        rules = loaded.policies.rules().len(),
        "policies loaded"
    );
    agent.readiness.pass(
        "policy set",
        format!(
            "{} ({} rules); a failed reload keeps it",
            loaded.policies.version(),
            loaded.policies.rules().len()
        ),
    );
    let current: Current = Arc::new(RwLock::new(Arc::new(loaded.policies)));
    let watcher = tokio::spawn(watch_policies(
        config.clone(),
        current.clone(),
        shutdown.clone(),
    ));

    let context = Arc::new(loaded.context);
    let bus = agent.bus.clone();
    let handler = move |request: ValidateRequest, _delivery: Delivery| {
        let (bus, context, current) = (bus.clone(), context.clone(), current.clone());
        async move {
            let digest = request
                .change
                .digest()
                .map_err(|e| HandlerError::Reject(e.to_string()))?;
            if digest != request.digest {
                return Err(HandlerError::Reject(format!(
                    "the request's digest {} is not the digest of its change ({digest}): refusing to judge a change other than the one named",
                    request.digest
                )));
            }
            let policies = current
                .read()
                .map(|guard| guard.clone())
                .map_err(|_| HandlerError::Retry("the policy set lock is poisoned".into()))?;
            let result =
                judge::judge(&request, &policies, &context, Utc::now()).map_err(|error| {
                    HandlerError::Retry(format!("evaluating the policies failed: {error}"))
                })?;
            tracing::info!(plan = %result.plan_id, verdict = ?result.verdict, findings = result.findings.len(), "judged");
            bus.publish(subjects::VALIDATE_RESULT, &result)
                .await
                .map(drop)
                .map_err(|error| HandlerError::Retry(error.to_string()))
        }
    };
    let outcome = agent
        .consume(ConsumerSettings::default(), handler, shutdown.clone())
        .await;
    // Consuming can end on an error as well as on shutdown: stop the watcher either way, or
    // the process would linger with heartbeats and no judging.
    shutdown.cancel();
    if let Err(error) = watcher.await {
        tracing::error!(%error, "the policy watcher failed");
    }
    outcome
}

/// Polls the policies folder; compiles a changed set and swaps it in, or logs why not.
async fn watch_policies(config: Config, current: Current, shutdown: Shutdown) {
    let dir = config.policies_dir();
    let mut seen = fingerprint(&dir);
    let mut ticker = tokio::time::interval(config.reload_interval);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        match PolicySet::load(&dir) {
            Ok(policies) => {
                tracing::info!(
                    policy_set = policies.version(),
                    rules = policies.rules().len(),
                    "policies reloaded"
                );
                if let Ok(mut guard) = current.write() {
                    *guard = Arc::new(policies);
                }
            }
            Err(error) => {
                let in_force = current
                    .read()
                    .map(|guard| guard.version().to_owned())
                    .unwrap_or_default();
                tracing::error!(%error, policy_set = in_force, "policy reload refused; the previous policy set stays in force");
            }
        }
    }
}

/// A hash of the folder's `.rego` file names and contents, to notice any change.
fn fingerprint(dir: &Path) -> Vec<u8> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    files.retain(|path| path.extension().is_some_and(|ext| ext == "rego"));
    files.sort();
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.to_string_lossy().as_bytes());
        hash.update(std::fs::read(&file).unwrap_or_default());
    }
    hash.finalize().to_vec()
}
