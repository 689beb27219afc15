//! Plans on pull requests: commit statuses and one comment per plan, edited in place as the
//! plan moves ([`report`]), and decisions from `/approve` comments and approving reviews
//! through the webhook ([`webhook`]), judged by the same rules as Slack and the CLI.

pub mod report;
pub mod webhook;

use octocrab::{
    Octocrab,
    models::{CommentId, StatusState},
};

use crate::config::GithubConfig;

/// The secrets GitHub needs, from the environment (never the configuration file).
#[derive(Clone, Default)]
pub struct GithubSecrets {
    /// A token allowed to write commit statuses and pull-request comments.
    pub token: Option<String>,
    /// The webhook's secret, which verifies `X-Hub-Signature-256`.
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for GithubSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: &Option<String>| if secret.is_some() { "set" } else { "unset" };
        f.debug_struct("GithubSecrets")
            .field("token", &set(&self.token))
            .field("webhook_secret", &set(&self.webhook_secret))
            .finish()
    }
}

/// GitHub, ready to start: the API client, the configuration and the webhook's secret.
#[derive(Debug)]
pub struct GithubSetup {
    pub api: GithubApi,
    pub config: GithubConfig,
    pub webhook_secret: Vec<u8>,
}

impl GithubSetup {
    /// Checks that both secrets are set, and builds the client.
    pub fn new(config: GithubConfig, secrets: GithubSecrets) -> Result<Self, String> {
        let missing = |variable: &str, what: &str| {
            format!(
                "the configuration has a [github] section, but {variable} is not set: it needs {what}"
            )
        };
        let token = secrets
            .token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                missing(
                    "INFRACREW_GITHUB_TOKEN",
                    "a token that may write commit statuses and pull-request comments",
                )
            })?;
        let webhook_secret = secrets
            .webhook_secret
            .filter(|secret| !secret.is_empty())
            .ok_or_else(|| {
                missing(
                    "INFRACREW_GITHUB_WEBHOOK_SECRET",
                    "the webhook's secret, to verify the events GitHub sends",
                )
            })?;
        let api = GithubApi::new(&config.api_url, &token)?;
        Ok(GithubSetup {
            api,
            config,
            webhook_secret: webhook_secret.into_bytes(),
        })
    }
}

/// Why a call to GitHub failed.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// Worth another try: GitHub is unavailable, rate-limiting, or unreachable.
    #[error("GitHub did not answer {call}: {reason}")]
    Transient { call: &'static str, reason: String },
    /// Fails the same way again until a setting changes (token, repository, permissions).
    #[error("GitHub refused {call}: {reason}")]
    Permanent { call: &'static str, reason: String },
}

/// The REST calls the Conductor makes.
#[derive(Debug, Clone)]
pub struct GithubApi {
    client: Octocrab,
}

impl GithubApi {
    pub fn new(api_url: &str, token: &str) -> Result<Self, String> {
        let client = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|error| format!("github.api_url {api_url} is not a URL: {error}"))?
            .personal_token(token.to_owned())
            .build()
            .map_err(|error| format!("cannot build the GitHub client: {error}"))?;
        Ok(GithubApi { client })
    }

    /// Sets commit status `context` on `commit` of `owner/repo`.
    pub async fn set_status(
        &self,
        (owner, repo): (&str, &str),
        commit: &str,
        context: &str,
        state: StatusState,
        description: &str,
    ) -> Result<(), GithubError> {
        // GitHub cuts nothing itself: a description over 140 characters is refused.
        let description: String = description.chars().take(140).collect();
        self.client
            .repos(owner, repo)
            .create_status(commit.to_owned(), state)
            .context(context.to_owned())
            .description(description)
            .send()
            .await
            .map(drop)
            .map_err(|error| classify("a commit status", error))
    }

    /// Edits comment `existing` on pull request `number`, or posts a new one; returns the
    /// comment's id.
    pub async fn upsert_comment(
        &self,
        (owner, repo): (&str, &str),
        number: u64,
        existing: Option<u64>,
        body: &str,
    ) -> Result<u64, GithubError> {
        let issues = self.client.issues(owner, repo);
        let comment = match existing {
            Some(id) => issues.update_comment(CommentId(id), body).await,
            None => issues.create_comment(number, body).await,
        };
        comment
            .map(|comment| comment.id.0)
            .map_err(|error| classify("the pull-request comment", error))
    }

    /// Posts a reply on pull request `number` (the answer to a command).
    pub async fn reply(
        &self,
        (owner, repo): (&str, &str),
        number: u64,
        body: &str,
    ) -> Result<(), GithubError> {
        self.client
            .issues(owner, repo)
            .create_comment(number, body)
            .await
            .map(drop)
            .map_err(|error| classify("a reply comment", error))
    }
}

/// Server errors, rate limits and transport failures pass; the rest need a person.
fn classify(call: &'static str, error: octocrab::Error) -> GithubError {
    match &error {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code;
            let rate_limited = status.as_u16() == 429
                || (status.as_u16() == 403 && source.message.to_lowercase().contains("rate limit"));
            let reason = format!("{} {}", status.as_u16(), source.message);
            if status.is_server_error() || rate_limited {
                GithubError::Transient { call, reason }
            } else {
                GithubError::Permanent { call, reason }
            }
        }
        octocrab::Error::Hyper { .. } | octocrab::Error::Service { .. } => GithubError::Transient {
            call,
            reason: error.to_string(),
        },
        _ => GithubError::Permanent {
            call,
            reason: error.to_string(),
        },
    }
}
