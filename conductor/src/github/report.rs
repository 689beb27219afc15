//! The plan on its pull request: the `infracrew/plan` and `infracrew/apply` commit statuses,
//! and one comment with the summary, the diff and the findings, edited as the plan moves.

use infracrew_bus::{HandlerError, Kv};
use infracrew_protocol::{
    Enforcement, GoalSource, PlanRecord, PlanState, PlanTransitioned, ReviewRecord,
};
use octocrab::models::StatusState;

use super::{GithubApi, GithubError};
use crate::{config::GithubConfig, slack::review::summary_line};

/// The status that says whether the plan validated.
pub const PLAN_CONTEXT: &str = "infracrew/plan";
/// The status that says how its apply went.
pub const APPLY_CONTEXT: &str = "infracrew/apply";

/// Reports plans that came from a repository back to it.
#[derive(Debug)]
pub struct GithubReports {
    pub api: GithubApi,
    pub config: GithubConfig,
    pub reviews: Kv<ReviewRecord>,
}

impl GithubReports {
    /// Sets the statuses the moves `moved` carries call for and brings the comment up
    /// to date. A refusal that no retry mends is kept for `crew show` and the plan goes on;
    /// an outage is retried.
    pub async fn on_move(
        &self,
        moved: &PlanTransitioned,
        record: &PlanRecord,
    ) -> Result<(), HandlerError> {
        let Some(source) = &record.plan.source else {
            return Ok(());
        };
        let Some(repository) = source.owner_and_name() else {
            return Ok(());
        };
        let key = moved.plan_id.to_string();
        let before = self
            .reviews
            .get(&key)
            .await
            .map_err(|error| HandlerError::Retry(error.to_string()))?
            .map(|r| r.value)
            .unwrap_or_default();
        let mut review = before.clone();
        match self
            .report(record, source, repository, moved, review.github_comment)
            .await
        {
            Ok(comment) => {
                review.github_comment = comment.or(review.github_comment);
                review.github_error = None;
            }
            Err(error @ GithubError::Transient { .. }) => {
                return Err(HandlerError::Retry(error.to_string()));
            }
            Err(error @ GithubError::Permanent { .. }) => {
                tracing::error!(plan = %moved.plan_id, %error, "the pull request is not up to date");
                review.github_error = Some(error.to_string());
            }
        }
        if review == before {
            return Ok(());
        }
        self.reviews
            .put(&key, &review)
            .await
            .map(drop)
            .map_err(|error| HandlerError::Retry(error.to_string()))
    }

    /// Sets the statuses and upserts the comment (`existing`, once posted); returns the
    /// comment's id when the plan has a pull request.
    async fn report(
        &self,
        record: &PlanRecord,
        source: &GoalSource,
        repository: (&str, &str),
        moved: &PlanTransitioned,
        existing: Option<u64>,
    ) -> Result<Option<u64>, GithubError> {
        for (_, step) in moved.moves() {
            for (context, state, description) in statuses(record, step.to) {
                self.api
                    .set_status(repository, &source.commit, context, state, &description)
                    .await?;
            }
        }
        let Some(number) = source.pull_request else {
            return Ok(None);
        };
        let body = comment(record, self.config.diff_lines);
        self.api
            .upsert_comment(repository, number, existing, &body)
            .await
            .map(Some)
    }
}

/// The statuses a move to `to` sets: the plan's once it is validated (or cannot be), the
/// apply's from the decision on.
pub fn statuses(record: &PlanRecord, to: PlanState) -> Vec<(&'static str, StatusState, String)> {
    let why = record
        .history
        .last()
        .map(|moved| moved.why.clone())
        .unwrap_or_default();
    let plan = |state, text: String| vec![(PLAN_CONTEXT, state, text)];
    let apply = |state, text: String| vec![(APPLY_CONTEXT, state, text)];
    match to {
        PlanState::Submitted => plan(StatusState::Pending, "planning and validating".into()),
        PlanState::Ready => {
            let mut set = plan(StatusState::Success, why);
            set.extend(apply(
                StatusState::Pending,
                "waiting for an approval".into(),
            ));
            set
        }
        PlanState::Blocked => plan(StatusState::Failure, why),
        PlanState::NoChange => plan(StatusState::Success, "nothing to change".into()),
        PlanState::Approved => apply(StatusState::Pending, "approved; applying".into()),
        PlanState::Applied => apply(StatusState::Success, why),
        PlanState::Failed | PlanState::RolledBack | PlanState::Rejected => {
            apply(StatusState::Failure, format!("{to}: {why}"))
        }
        PlanState::Expired | PlanState::Superseded => {
            apply(StatusState::Error, format!("{to}: {why}"))
        }
        PlanState::Planned
        | PlanState::Validating
        | PlanState::AwaitingApproval
        | PlanState::Applying => Vec::new(),
    }
}

/// The plan's comment: its summary and state, the diff (cut to `diff_lines`), the findings,
/// and how to approve it here.
pub fn comment(record: &PlanRecord, diff_lines: usize) -> String {
    let plan_id = record.plan.plan_id;
    let mut body = format!("### infracrew: {}\n\n", summary_line(record));
    if let Some(build) = &record.build {
        let lines: Vec<&str> = build.diff_text.lines().collect();
        body.push_str("```diff\n");
        for line in lines.iter().take(diff_lines) {
            body.push_str(line);
            body.push('\n');
        }
        body.push_str("```\n");
        if lines.len() > diff_lines {
            body.push_str(&format!(
                "_{} more lines: `crew show {plan_id}` shows the whole diff_\n",
                lines.len() - diff_lines
            ));
        }
        if build.findings.is_empty() {
            body.push_str("\n**Findings:** none, every policy passed\n");
        } else {
            body.push_str("\n**Findings**\n");
            for finding in &build.findings {
                let level = match finding.enforcement {
                    Enforcement::HardMandatory => "hard",
                    Enforcement::SoftMandatory => "soft",
                    Enforcement::Advisory => "advisory",
                };
                body.push_str(&format!(
                    "- [{level}] **{}** on `{}`: {}\n",
                    finding.rule, finding.resource, finding.message
                ));
            }
        }
    }
    let approvers: Vec<&str> = record
        .approvals
        .iter()
        .map(|approval| approval.approver.as_str())
        .collect();
    if !approvers.is_empty() {
        body.push_str(&format!("\nApproved by {}.\n", approvers.join(", ")));
    }
    if matches!(record.state, PlanState::Ready | PlanState::AwaitingApproval) {
        body.push_str(&format!(
            "\nApprove with a comment `/approve {plan_id}` or an approving review; reject with `/reject {plan_id} <reason>`. {} cannot approve their own plan.\n",
            record.plan.requested_by
        ));
    } else if let Some(last) = record.history.last() {
        body.push_str(&format!("\n**{}**: {}\n", record.state, last.why));
    }
    body
}
