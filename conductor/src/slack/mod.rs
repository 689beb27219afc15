//! Plan reviews in Slack: the review message and its thread ([`notifier`]), and decisions
//! from slash commands and buttons ([`endpoint`] over HTTP, or [`socket`] in Socket Mode),
//! judged by the same approval rules as the CLI through [`Conductor::decide`].

pub mod api;
pub mod endpoint;
pub mod notifier;
pub mod requests;
pub mod review;
pub mod socket;

use std::sync::Arc;

use infracrew_protocol::DecisionChannel;
use slack_morphism::prelude::SlackInteractionEvent;

use crate::{
    config::{SlackConfig, SlackMode},
    orchestrator::Conductor,
};
use api::SlackApi;
use requests::{RequestVerifier, SlackAction, button_presses};

/// The secrets Slack gives an app, from the environment (never the configuration file).
#[derive(Clone, Default)]
pub struct SlackSecrets {
    /// The bot token (`xoxb-…`) for posting.
    pub bot_token: Option<String>,
    /// The signing secret that verifies HTTP requests from Slack.
    pub signing_secret: Option<String>,
    /// The app-level token (`xapp-…`) that opens Socket Mode connections.
    pub app_token: Option<String>,
}

impl std::fmt::Debug for SlackSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |secret: &Option<String>| if secret.is_some() { "set" } else { "unset" };
        f.debug_struct("SlackSecrets")
            .field("bot_token", &set(&self.bot_token))
            .field("signing_secret", &set(&self.signing_secret))
            .field("app_token", &set(&self.app_token))
            .finish()
    }
}

/// Slack, ready to start: the Web API client and how requests from Slack arrive.
#[derive(Debug)]
pub struct SlackSetup {
    pub api: SlackApi,
    pub config: SlackConfig,
    pub inbound: SlackInbound,
}

/// How slash commands and button presses reach the Conductor.
#[derive(Debug)]
pub enum SlackInbound {
    /// Slack POSTs them to the Conductor's HTTP endpoint, signed with the signing secret.
    Http(RequestVerifier),
    /// The Conductor opens a Socket Mode connection with the app-level token.
    Socket { app_token: String },
}

impl SlackSetup {
    /// Checks that the secrets the configured mode needs are set, and builds the client.
    pub fn new(config: SlackConfig, secrets: SlackSecrets) -> Result<Self, String> {
        let missing = |variable: &str, what: &str| {
            format!(
                "the configuration has a [slack] section, but {variable} is not set: it needs {what}"
            )
        };
        let bot_token = secrets
            .bot_token
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                missing(
                    "SLACK_BOT_TOKEN",
                    "the app's bot token (xoxb-…) to post reviews",
                )
            })?;
        let inbound = match config.mode {
            SlackMode::Http => SlackInbound::Http(RequestVerifier::new(
                &secrets
                    .signing_secret
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        missing(
                            "SLACK_SIGNING_SECRET",
                            "the app's signing secret to verify slash commands and buttons",
                        )
                    })?,
            )),
            SlackMode::Socket => SlackInbound::Socket {
                app_token: secrets.app_token.filter(|s| !s.is_empty()).ok_or_else(|| {
                    missing(
                        "SLACK_APP_TOKEN",
                        "an app-level token (xapp-…) with connections:write for Socket Mode",
                    )
                })?,
            },
        };
        let api = SlackApi::new(&config.api_url, &bot_token).map_err(|error| error.to_string())?;
        Ok(SlackSetup {
            api,
            config,
            inbound,
        })
    }
}

/// Answers people in Slack: maps their Slack user to an approver identity and puts their
/// decision through the Conductor's one decision path.
#[derive(Debug)]
pub struct SlackDesk {
    pub conductor: Arc<Conductor>,
    pub api: SlackApi,
    pub config: SlackConfig,
}

impl SlackDesk {
    /// The reply for Slack user `user` asking for `action`: what happened, or the exact rule
    /// that refused it.
    pub async fn answer(&self, user: &str, action: SlackAction) -> String {
        let plan_text = match &action {
            SlackAction::Decide { plan, .. } | SlackAction::Show { plan } => plan,
        };
        let plan_id = match self.conductor.resolve_plan(plan_text).await {
            Ok(plan_id) => plan_id,
            Err(reason) => return format!(":no_entry: {reason}"),
        };
        match action {
            SlackAction::Show { .. } => match self.conductor.plan(plan_id).await {
                Ok(Some(record)) => format!(
                    "{}\n{}",
                    review::summary_line(&record),
                    review::decision_text(&record, &self.conductor.config.approvals)
                ),
                Ok(None) => format!(":no_entry: there is no plan {plan_id}"),
                Err(reason) => format!(":warning: {reason}"),
            },
            SlackAction::Decide { kind, reason, .. } => {
                let Some(who) = self.config.users.get(user) else {
                    return format!(
                        ":no_entry: Refused: Slack user {user} is not linked to an approver identity; an administrator adds `{user} = \"<name>\"` under [slack.users] in the Conductor's configuration"
                    );
                };
                self.conductor
                    .decide_for(who, DecisionChannel::Slack, plan_id, kind, reason)
                    .await
            }
        }
    }

    /// Answers each review button pressed in `event`, in the background, through the
    /// press's response URL: Slack only needs the request acknowledged.
    pub fn answer_buttons(self: &Arc<Self>, event: SlackInteractionEvent) {
        for (response_url, user, action) in button_presses(event) {
            let desk = self.clone();
            tokio::spawn(async move {
                let text = match action {
                    Ok(action) => desk.answer(&user, action).await,
                    Err(reason) => format!(":no_entry: {reason}"),
                };
                if let Err(error) = desk.api.respond(&response_url, &text).await {
                    tracing::warn!(%error, user, "the answer did not reach Slack: {text}");
                }
            });
        }
    }
}
