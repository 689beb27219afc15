//! The webhook GitHub calls, `POST /github/webhook`: every request is verified with
//! `X-Hub-Signature-256` before its body is read. A `/approve <plan-id>` (or `/reject`)
//! comment, or an approving review, from a GitHub login linked to an approver identity is a
//! decision under the same rules as Slack and the CLI; the answer is a reply on the pull
//! request.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use hmac::{Hmac, Mac};
use infracrew_protocol::{DecisionChannel, DecisionKind, PlanId, PlanState};
use serde::Deserialize;
use sha2::Sha256;

use super::GithubApi;
use crate::{
    config::GithubConfig,
    orchestrator::Conductor,
    replay::RequestSource,
    slack::requests::{SlackAction, parse_command},
};

/// What the webhook's handler shares.
#[derive(Debug)]
pub struct GithubEndpoint {
    pub conductor: Arc<Conductor>,
    pub api: GithubApi,
    pub config: GithubConfig,
    pub secret: Vec<u8>,
}

/// The webhook route, to be served on the Conductor's HTTP address.
pub fn routes(endpoint: Arc<GithubEndpoint>) -> Router {
    Router::new()
        .route("/github/webhook", post(webhook))
        .with_state(endpoint)
}

/// Why a request is not GitHub's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRefusal {
    #[error(
        "no X-Hub-Signature-256 header: set the webhook's secret in GitHub to the Conductor's INFRACREW_GITHUB_WEBHOOK_SECRET"
    )]
    Unsigned,
    #[error("X-Hub-Signature-256 is not `sha256=<64 hex digits>`")]
    Malformed,
    #[error(
        "X-Hub-Signature-256 does not match the body signed with the webhook secret: the secrets differ, or the body was changed"
    )]
    Mismatch,
    #[error("delivery {0} was handled already: a replay is not taken twice")]
    Replayed(String),
}

/// Checks the body's HMAC-SHA256 with `secret` against the header, in constant time.
pub fn verify(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), WebhookRefusal> {
    let header = headers
        .get("x-hub-signature-256")
        .ok_or(WebhookRefusal::Unsigned)?;
    let signature = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("sha256="))
        .and_then(decode_hex)
        .ok_or(WebhookRefusal::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| WebhookRefusal::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| WebhookRefusal::Mismatch)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

async fn webhook(
    State(endpoint): State<Arc<GithubEndpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    // GitHub signs no timestamp: a copy is told by its delivery id, kept a day.
    let delivery = header("x-github-delivery");
    let refused = match verify(&endpoint.secret, &headers, &body) {
        Err(refusal) => Some(refusal),
        Ok(()) if delivery.is_empty() => None,
        Ok(()) => {
            let seen = &endpoint.conductor.seen;
            match seen.first_time(RequestSource::Github, &delivery).await {
                Ok(first) => (!first).then_some(WebhookRefusal::Replayed(delivery)),
                Err(error) => return error.into_response(),
            }
        }
    };
    if let Some(refusal) = refused {
        tracing::warn!(reason = %refusal, "refused a request that claims to come from GitHub");
        return (StatusCode::UNAUTHORIZED, refusal.to_string()).into_response();
    }
    let event = header("x-github-event");
    let answer = match event.as_str() {
        "ping" => Ok("pong".to_owned()),
        "issue_comment" => endpoint.on_comment(&body).await,
        "pull_request_review" => endpoint.on_review(&body).await,
        other => {
            return (
                StatusCode::ACCEPTED,
                format!("infracrew does not use {other} events"),
            )
                .into_response();
        }
    };
    match answer {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct CommentEvent {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repository,
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    /// Present when the issue is a pull request.
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Comment {
    body: String,
    user: User,
}

#[derive(Deserialize)]
struct ReviewEvent {
    action: String,
    review: Review,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct Review {
    state: String,
    user: User,
}

#[derive(Deserialize)]
struct PullRequest {
    number: u64,
}

impl GithubEndpoint {
    /// A comment: a command on its first line is answered; anything else is left alone.
    async fn on_comment(&self, body: &[u8]) -> Result<String, String> {
        let event: CommentEvent = serde_json::from_slice(body)
            .map_err(|error| format!("the issue_comment event does not read: {error}"))?;
        if event.action != "created" || event.issue.pull_request.is_none() {
            return Ok("not a new pull-request comment: nothing to do".into());
        }
        let first_line = event.comment.body.lines().next().unwrap_or_default().trim();
        let Some((command, text)) = first_line
            .strip_prefix('/')
            .map(|rest| rest.split_once(char::is_whitespace).unwrap_or((rest, "")))
        else {
            return Ok("not a command: nothing to do".into());
        };
        if !matches!(command, "approve" | "reject" | "plan") {
            return Ok(format!("/{command} is not an infracrew command"));
        }
        let pull = (event.repository.full_name.as_str(), event.issue.number);
        let answer = match parse_command(command, text) {
            Err(reason) => format!(":no_entry: {reason}"),
            Ok(SlackAction::Show { plan }) => match self.conductor.resolve_plan(&plan).await {
                Ok(plan_id) => match self.conductor.plan(plan_id).await {
                    Ok(Some(record)) => super::report::comment(&record, self.config.diff_lines),
                    Ok(None) => format!(":no_entry: there is no plan {plan_id}"),
                    Err(reason) => format!(":warning: {reason}"),
                },
                Err(reason) => format!(":no_entry: {reason}"),
            },
            Ok(SlackAction::Decide { kind, plan, reason }) => {
                match self.conductor.resolve_plan(&plan).await {
                    Ok(plan_id) => {
                        self.decide(&event.comment.user.login, pull, plan_id, kind, reason)
                            .await
                    }
                    Err(reason) => format!(":no_entry: {reason}"),
                }
            }
        };
        self.reply(pull, &answer).await;
        Ok(answer)
    }

    /// An approving review approves every plan of the pull request that waits for one.
    async fn on_review(&self, body: &[u8]) -> Result<String, String> {
        let event: ReviewEvent = serde_json::from_slice(body)
            .map_err(|error| format!("the pull_request_review event does not read: {error}"))?;
        if event.action != "submitted" || !event.review.state.eq_ignore_ascii_case("approved") {
            return Ok("not an approving review: nothing to do".into());
        }
        let pull = (
            event.repository.full_name.as_str(),
            event.pull_request.number,
        );
        let waiting = self.waiting_plans(pull).await?;
        if waiting.is_empty() {
            return Ok(format!(
                "no plan of {}#{} waits for a decision",
                pull.0, pull.1
            ));
        }
        let mut answers = Vec::new();
        for plan_id in waiting {
            let answer = self
                .decide(
                    &event.review.user.login,
                    pull,
                    plan_id,
                    DecisionKind::Approve,
                    None,
                )
                .await;
            self.reply(pull, &answer).await;
            answers.push(answer);
        }
        Ok(answers.join("\n"))
    }

    /// The plans proposed in `pull` that are READY or AWAITING_APPROVAL.
    async fn waiting_plans(
        &self,
        (repository, number): (&str, u64),
    ) -> Result<Vec<PlanId>, String> {
        let plans = &self.conductor.plans;
        let keys = plans
            .keys()
            .await
            .map_err(|error| format!("the plans cannot be read now ({error}); review again"))?;
        let mut waiting = Vec::new();
        for key in keys {
            let Ok(Some(record)) = plans.get(&key).await else {
                continue;
            };
            let record = record.value;
            let from_here = record.plan.source.as_ref().is_some_and(|source| {
                source.repository == repository && source.pull_request == Some(number)
            });
            if from_here && matches!(record.state, PlanState::Ready | PlanState::AwaitingApproval) {
                waiting.push(record.plan.plan_id);
            }
        }
        Ok(waiting)
    }

    /// Puts `login`'s decision through the Conductor, for a plan proposed in `pull` only.
    async fn decide(
        &self,
        login: &str,
        (repository, number): (&str, u64),
        plan_id: PlanId,
        kind: DecisionKind,
        reason: Option<String>,
    ) -> String {
        let short = &plan_id.to_string()[..8];
        let Some(who) = self.config.users.get(login) else {
            return format!(
                ":no_entry: Refused for plan {short}: GitHub user {login} is not linked to an approver identity; an administrator adds `{login} = \"<name>\"` under [github.users] in the Conductor's configuration"
            );
        };
        match self.conductor.plan(plan_id).await {
            Ok(Some(record)) => {
                let from_here = record.plan.source.as_ref().is_some_and(|source| {
                    source.repository == repository && source.pull_request == Some(number)
                });
                if !from_here {
                    return format!(
                        ":no_entry: Refused for plan {short}: it was not proposed in {repository}#{number}; decide it where it was proposed, in Slack or with the CLI"
                    );
                }
            }
            Ok(None) => return format!(":no_entry: there is no plan {plan_id}"),
            Err(reason) => return format!(":warning: {reason}"),
        }
        self.conductor
            .decide_for(who, DecisionChannel::Github, plan_id, kind, reason)
            .await
    }

    async fn reply(&self, (repository, number): (&str, u64), text: &str) {
        let Some(repository) = repository.split_once('/') else {
            return;
        };
        if let Err(error) = self.api.reply(repository, number, text).await {
            tracing::warn!(%error, "the answer did not reach the pull request: {text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn signed(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", HeaderValue::from_str(value).unwrap());
        headers
    }

    /// GitHub's documented example: "Validating webhook deliveries".
    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    const SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_example_delivery_verifies() {
        assert_eq!(verify(SECRET, &signed(SIGNATURE), BODY), Ok(()));
    }

    #[test]
    fn a_changed_body_another_secret_or_a_bad_header_is_refused() {
        assert_eq!(
            verify(SECRET, &signed(SIGNATURE), b"Hello, World?"),
            Err(WebhookRefusal::Mismatch)
        );
        assert_eq!(
            verify(b"another secret", &signed(SIGNATURE), BODY),
            Err(WebhookRefusal::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &HeaderMap::new(), BODY),
            Err(WebhookRefusal::Unsigned)
        );
        for malformed in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107ea",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            assert_eq!(
                verify(SECRET, &signed(malformed), BODY),
                Err(WebhookRefusal::Malformed),
                "{malformed}"
            );
        }
    }
}
