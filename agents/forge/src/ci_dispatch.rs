//! The CI-dispatch driver: applies by dispatching a GitHub Actions workflow
//! (`workflow_dispatch` with the plan id, digest, service, environment and version as inputs),
//! finds the run it started, follows it to completion reporting its steps, and records what
//! the run deployed so later diffs are against it. A failed run fails the apply with the
//! run's URL; nothing is rolled back, since only the workflow knows how.
//!
//! The workflow must take those inputs and name its runs `deploy <plan_id>`
//! (`run-name: deploy ${{ inputs.plan_id }}`): the run is found by that name.

use std::time::Duration;

use chrono::{DateTime, Utc};
use infracrew_bus::Bus;
use infracrew_protocol::ServiceState;
use octocrab::Octocrab;
use serde::Deserialize;

use crate::{
    driver::{Apply, ApplyContext, Driver, DriverError, FailureKind},
    dry_run::DryRunDriver,
};

/// Where the driver dispatches, and how it follows a run.
#[derive(Debug, Clone)]
pub struct CiDispatchSettings {
    pub api_url: String,
    pub token: Option<String>,
    /// `owner/name` of the repository holding the workflow.
    pub repository: String,
    /// The workflow's file name (`deploy.yml`) or id.
    pub workflow: String,
    /// The branch or tag the workflow runs on.
    pub git_ref: String,
    /// How often a run is looked at.
    pub poll: Duration,
    /// How long a run may take before the apply gives up on it.
    pub timeout: Duration,
}

/// Deploys through a GitHub Actions workflow.
#[derive(Debug, Clone)]
pub struct CiDispatchDriver {
    client: Octocrab,
    owner: String,
    repo: String,
    settings: CiDispatchSettings,
    /// What the workflow deployed, per service: the diffs' "current".
    records: DryRunDriver,
}

/// The fields of a workflow run the driver reads (octocrab's model lacks `display_title`).
#[derive(Debug, Deserialize)]
struct RunSummary {
    id: u64,
    #[serde(default)]
    display_title: Option<String>,
    status: String,
    conclusion: Option<String>,
    html_url: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct Runs {
    workflow_runs: Vec<RunSummary>,
}

#[derive(Debug, Deserialize)]
struct Jobs {
    jobs: Vec<JobSummary>,
}

#[derive(Debug, Deserialize)]
struct JobSummary {
    name: String,
    #[serde(default)]
    steps: Vec<StepSummary>,
}

#[derive(Debug, Deserialize)]
struct StepSummary {
    name: String,
    status: String,
    conclusion: Option<String>,
}

impl CiDispatchDriver {
    pub const NAME: &'static str = "ci-dispatch";

    pub async fn open(bus: &Bus, settings: CiDispatchSettings) -> Result<Self, String> {
        let (owner, repo) = settings
            .repository
            .split_once('/')
            .filter(|(owner, repo)| !owner.is_empty() && !repo.is_empty())
            .map(|(owner, repo)| (owner.to_owned(), repo.to_owned()))
            .ok_or_else(|| {
                format!(
                    "--ci-repository {:?} is not OWNER/REPO",
                    settings.repository
                )
            })?;
        let mut builder = Octocrab::builder()
            .base_uri(settings.api_url.as_str())
            .map_err(|error| format!("--github-api-url {}: {error}", settings.api_url))?;
        if let Some(token) = &settings.token {
            builder = builder.personal_token(token.clone());
        }
        let client = builder
            .build()
            .map_err(|error| format!("the GitHub client: {error}"))?;
        let records = DryRunDriver::open(bus)
            .await
            .map_err(|error| format!("the records of what the workflow deployed: {error}"))?;
        Ok(CiDispatchDriver {
            client,
            owner,
            repo,
            settings,
            records,
        })
    }

    fn failed(&self, reason: impl Into<String>) -> DriverError {
        DriverError::step_failed(Self::NAME, reason)
    }

    /// GitHub's error while doing `what`; one that may pass when asked again (a server error,
    /// a rate limit, no connection) is Unreachable.
    fn github(&self, what: &str, error: octocrab::Error) -> DriverError {
        let reason = format!(
            "{what} in {}/{}: {}",
            self.owner,
            self.repo,
            github_error_text(&error)
        );
        if may_pass(&error) {
            DriverError::unreachable(Self::NAME, reason)
        } else {
            self.failed(reason)
        }
    }

    /// The newest run of the workflow named for `plan_id`, started at `since` or later.
    async fn find_run(
        &self,
        plan_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<RunSummary>, DriverError> {
        let route = format!(
            "/repos/{}/{}/actions/workflows/{}/runs",
            self.owner, self.repo, self.settings.workflow
        );
        let runs: Runs = self
            .client
            .get(route, Some(&[("event", "workflow_dispatch")]))
            .await
            .map_err(|error| self.github("listing the workflow's runs", error))?;
        let title = format!("deploy {plan_id}");
        Ok(runs
            .workflow_runs
            .into_iter()
            .filter(|run| run.display_title.as_deref() == Some(title.as_str()))
            .filter(|run| run.created_at >= since)
            .max_by_key(|run| run.created_at))
    }

    async fn run(&self, id: u64) -> Result<RunSummary, DriverError> {
        let route = format!("/repos/{}/{}/actions/runs/{id}", self.owner, self.repo);
        self.client
            .get(route, None::<&()>)
            .await
            .map_err(|error| self.github("reading the workflow run", error))
    }

    /// Each step that changed since `seen`, as a progress line.
    async fn step_lines(&self, id: u64, seen: &mut Vec<String>) -> Vec<String> {
        let route = format!("/repos/{}/{}/actions/runs/{id}/jobs", self.owner, self.repo);
        let Ok(jobs) = self.client.get::<Jobs, _, ()>(route, None).await else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        for job in jobs.jobs {
            for step in job.steps {
                let line = match &step.conclusion {
                    Some(conclusion) => format!("{} / {}: {conclusion}", job.name, step.name),
                    None => format!("{} / {}: {}", job.name, step.name, step.status),
                };
                if !seen.contains(&line) {
                    seen.push(line.clone());
                    lines.push(line);
                }
            }
        }
        lines
    }
}

/// Whether asking GitHub again may get an answer: a server error, a rate limit (429, or 403
/// with GitHub's rate-limit message), or no answer at all.
fn may_pass(error: &octocrab::Error) -> bool {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code;
            status.is_server_error()
                || status.as_u16() == 429
                || (status.as_u16() == 403 && source.message.contains("rate limit"))
        }
        octocrab::Error::Hyper { .. }
        | octocrab::Error::Http { .. }
        | octocrab::Error::Service { .. } => true,
        _ => false,
    }
}

/// What GitHub said: its status and message (octocrab's own text for a GitHub error is the
/// bare word "GitHub").
pub fn github_error_text(error: &octocrab::Error) -> String {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            format!(
                "GitHub answered {} {}",
                source.status_code.as_u16(),
                source.message
            )
        }
        other => other.to_string(),
    }
}

impl Driver for CiDispatchDriver {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn current(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        self.records.current(environment, service).await
    }

    async fn previous(
        &self,
        environment: &str,
        service: &str,
    ) -> Result<Option<ServiceState>, DriverError> {
        self.records.previous(environment, service).await
    }
}

impl Apply for CiDispatchDriver {
    async fn check(&self) -> Result<String, DriverError> {
        self.client
            .workflows(&self.owner, &self.repo)
            .get_workflow(self.settings.workflow.clone())
            .await
            .map_err(|error| self.github(&format!("workflow {}", self.settings.workflow), error))?;
        Ok(format!(
            "dispatches {} in {}/{} on {}",
            self.settings.workflow, self.owner, self.repo, self.settings.git_ref
        ))
    }

    /// Dispatches the workflow and follows its run; a state the workflow already deployed
    /// is not dispatched again, so a redelivered apply does not deploy twice.
    async fn apply(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
        context: &ApplyContext,
    ) -> Result<(), DriverError> {
        if self.records.current(environment, service).await?.as_ref() == state {
            context
                .progress
                .report(format!("{environment}/{service} is deployed already"));
            return Ok(());
        }
        let plan_id = context.plan_id.to_string();
        let version = state.map(|state| state.image.clone()).unwrap_or_default();
        // Runs are matched by their creation time too; GitHub's clock may lag ours a little.
        let since = Utc::now() - chrono::Duration::seconds(30);
        self.client
            .actions()
            .create_workflow_dispatch(
                &self.owner,
                &self.repo,
                &self.settings.workflow,
                &self.settings.git_ref,
            )
            .inputs(serde_json::json!({
                "plan_id": plan_id,
                "digest": context.digest,
                "service": service,
                "environment": environment,
                "version": version,
            }))
            .send()
            .await
            // Whether GitHub started a run is then unknown, and dispatching again could deploy
            // twice: the step fails.
            .map_err(|error| DriverError {
                kind: FailureKind::StepFailed,
                ..self.github("dispatching the workflow", error)
            })?;
        context.progress.report(format!(
            "dispatched {} on {} for {environment}/{service}",
            self.settings.workflow, self.settings.git_ref
        ));
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        // The run goes on whether or not GitHub answers Forge, so while it is followed an
        // answer that may pass is asked again until the deadline.
        let asking_again = |error: DriverError| {
            if error.kind != FailureKind::Unreachable {
                return Err(error);
            }
            context
                .progress
                .report(format!("{}; asking again", error.reason));
            Ok(())
        };
        let mut run = loop {
            match self.find_run(&plan_id, since).await {
                Ok(Some(run)) => break run,
                Ok(None) => {}
                Err(error) => asking_again(error)?,
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self.failed(format!(
                    "no run named \"deploy {plan_id}\" appeared within {:?}: does the workflow set run-name: deploy ${{{{ inputs.plan_id }}}}?",
                    self.settings.timeout
                )));
            }
            tokio::time::sleep(self.settings.poll).await;
        };
        context
            .progress
            .report(format!("following {}", run.html_url));
        let mut seen = Vec::new();
        while run.status != "completed" {
            if tokio::time::Instant::now() > deadline {
                return Err(self.failed(format!(
                    "{} did not complete within {:?}",
                    run.html_url, self.settings.timeout
                )));
            }
            tokio::time::sleep(self.settings.poll).await;
            match self.run(run.id).await {
                Ok(next) => run = next,
                Err(error) => {
                    asking_again(error)?;
                    continue;
                }
            }
            for line in self.step_lines(run.id, &mut seen).await {
                context.progress.report(line);
            }
        }
        match run.conclusion.as_deref() {
            Some("success") => self
                .records
                .apply(environment, service, state, context)
                .await
                .map(|()| {
                    context
                        .progress
                        .report(format!("{} succeeded", run.html_url));
                }),
            other => Err(self.failed(format!(
                "workflow run {} ended {}",
                run.html_url,
                other.unwrap_or("without a conclusion")
            ))),
        }
    }

    async fn verify(
        &self,
        environment: &str,
        service: &str,
        state: Option<&ServiceState>,
    ) -> Result<(), DriverError> {
        self.records.verify(environment, service, state).await
    }

    /// The workflow deploys; only it knows how to undo, so a failed run is the end.
    fn rolls_back(&self) -> bool {
        false
    }
}
