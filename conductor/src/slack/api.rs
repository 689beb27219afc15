//! The Slack Web API as the Conductor uses it (slack-morphism): post and update a review,
//! reply in its thread, answer a person through a response URL. Each failure is sorted into
//! one worth retrying (Slack down or rate limiting) or one a person must fix, with the fix.

use std::{sync::Arc, time::Duration};

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use infracrew_protocol::SlackMessageRef;
use slack_morphism::{
    SlackApiToken, SlackApiTokenValue, SlackChannelId, SlackClient, SlackMessageContent,
    SlackResponseUrl, SlackTs,
    errors::SlackClientError,
    prelude::{
        SlackApiChatPostMessageRequest, SlackApiChatUpdateRequest,
        SlackApiPostWebhookMessageRequest, SlackClientHyperConnector,
    },
};

type Connector = SlackClientHyperConnector<HttpsConnector<HttpConnector>>;

/// Why the Slack client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SlackSetupError {
    #[error("the system's TLS root certificates cannot be read: {0}")]
    Roots(std::io::Error),
}

/// How a Slack call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackCallError {
    /// Slack is down, slow or rate limiting: try again, after `retry_after` when Slack said.
    #[error("{reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A setting is wrong (token, channel, scopes): retrying cannot help.
    #[error("Slack answered {code}: {fix}")]
    Permanent { code: String, fix: String },
}

/// A Web API client with the bot token.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackClient<Connector>>,
    token: SlackApiToken,
    api_url: String,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("SlackApi")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client for the Web API at `api_url` (`https://slack.com/api`, or a simulator's plain
    /// http address in tests).
    pub fn new(api_url: &str, bot_token: &str) -> Result<Self, SlackSetupError> {
        // slack-morphism's TLS uses ring; another crate in the process may bring aws-lc-rs,
        // and rustls then refuses to guess. The first caller installs ring; later calls find
        // it in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(SlackSetupError::Roots)?
            .https_or_http()
            .enable_http1()
            .build();
        let connector = SlackClientHyperConnector::with_connector(https)
            .with_slack_api_url(api_url.trim_end_matches('/'));
        Ok(SlackApi {
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.to_owned())),
            api_url: api_url.to_owned(),
        })
    }

    /// The underlying client, for Socket Mode's listener.
    pub(super) fn client(&self) -> Arc<SlackClient<Connector>> {
        self.client.clone()
    }

    /// Posts `content` in `channel` (in the thread of `thread` when given) and returns the
    /// message's channel id and timestamp.
    pub async fn post(
        &self,
        channel: &str,
        content: SlackMessageContent,
        thread: Option<&SlackMessageRef>,
    ) -> Result<SlackMessageRef, SlackCallError> {
        let channel = thread.map_or(channel, |parent| parent.channel.as_str());
        let request = SlackApiChatPostMessageRequest::new(SlackChannelId(channel.into()), content)
            .opt_thread_ts(thread.map(|parent| SlackTs(parent.ts.clone())));
        let session = self.client.open_session(&self.token);
        let posted = session
            .chat_post_message(&request)
            .await
            .map_err(|error| classify(error, channel))?;
        Ok(SlackMessageRef {
            channel: posted.channel.0,
            ts: posted.ts.0,
        })
    }

    /// Replaces the content of a posted message.
    pub async fn update(
        &self,
        message: &SlackMessageRef,
        content: SlackMessageContent,
    ) -> Result<(), SlackCallError> {
        let request = SlackApiChatUpdateRequest::new(
            SlackChannelId(message.channel.clone()),
            content,
            SlackTs(message.ts.clone()),
        );
        let session = self.client.open_session(&self.token);
        session
            .chat_update(&request)
            .await
            .map(|_| ())
            .map_err(|error| classify(error, &message.channel))
    }

    /// Answers the person behind a command or button through its response URL: seen only by
    /// them, and leaving the shared message as it is.
    pub async fn respond(&self, response_url: &str, text: &str) -> Result<(), SlackCallError> {
        let url = response_url
            .parse()
            .map_err(|error| SlackCallError::Permanent {
                code: "bad_response_url".into(),
                fix: format!("the response URL {response_url:?} is not a URL ({error})"),
            })?;
        let request = SlackApiPostWebhookMessageRequest::new(
            SlackMessageContent::new().with_text(text.into()),
        )
        .with_replace_original(false);
        self.client
            .respond_to_event(&SlackResponseUrl(url), &request)
            .await
            .map(|_| ())
            .map_err(|error| classify(error, "the response URL"))
    }
}

/// Sorts a client error into retry-later or fix-the-setting.
fn classify(error: SlackClientError, channel: &str) -> SlackCallError {
    let transient = |reason: String, retry_after| SlackCallError::Transient {
        reason,
        retry_after,
    };
    match error {
        SlackClientError::RateLimitError(limited) => transient(
            format!(
                "Slack is rate limiting (HTTP 429{})",
                limited
                    .retry_after
                    .map(|after| format!(", Retry-After {}s", after.as_secs()))
                    .unwrap_or_default()
            ),
            limited.retry_after,
        ),
        SlackClientError::HttpError(http) if http.status_code.is_server_error() => {
            transient(format!("Slack answered HTTP {}", http.status_code), None)
        }
        SlackClientError::HttpError(http) => SlackCallError::Permanent {
            code: format!("HTTP {}", http.status_code),
            fix: "check [slack] api_url in the Conductor's configuration (it should end in /api)"
                .into(),
        },
        SlackClientError::ApiError(api) => match api.code.as_str() {
            "ratelimited"
            | "internal_error"
            | "fatal_error"
            | "service_unavailable"
            | "request_timeout" => transient(format!("Slack answered ok:false {}", api.code), None),
            code => SlackCallError::Permanent {
                code: code.to_owned(),
                fix: fix_for(code, channel),
            },
        },
        // The connection failed or the answer was cut off: Slack may be unreachable for now.
        other => transient(format!("Slack could not be reached: {other}"), None),
    }
}

/// What a person does about a Slack error code.
fn fix_for(code: &str, channel: &str) -> String {
    match code {
        "channel_not_found" => format!(
            "the channel {channel} does not exist or the app cannot see it; set [slack] channel to the review channel, and invite the app to it if it is private"
        ),
        "not_in_channel" | "is_archived" => format!(
            "the app cannot post in {channel}; invite it (/invite @infracrew) or unarchive the channel"
        ),
        "invalid_auth" | "not_authed" | "token_revoked" | "token_expired" | "account_inactive" => {
            "the bot token is not valid; set SLACK_BOT_TOKEN to the app's xoxb- token (reinstall the app if it was revoked)".into()
        }
        "missing_scope" => {
            "the app lacks a scope it needs; add chat:write (and commands) and reinstall the app".into()
        }
        "message_not_found" | "cant_update_message" => {
            "the review message was deleted or is not the app's; the next plan posts a new one".into()
        }
        other => format!("see https://api.slack.com/methods for {other}"),
    }
}

#[cfg(test)]
mod tests {
    use slack_morphism::errors::{SlackClientApiError, SlackClientHttpError, SlackRateLimitError};

    use super::*;

    #[test]
    fn failures_are_sorted_into_retry_or_fix() {
        let limited = classify(
            SlackClientError::RateLimitError(
                SlackRateLimitError::new().with_retry_after(Duration::from_secs(3)),
            ),
            "#infra-reviews",
        );
        assert_eq!(
            limited,
            SlackCallError::Transient {
                reason: "Slack is rate limiting (HTTP 429, Retry-After 3s)".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let down = classify(
            SlackClientError::HttpError(SlackClientHttpError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
            )),
            "#infra-reviews",
        );
        assert!(matches!(
            down,
            SlackCallError::Transient {
                retry_after: None,
                ..
            }
        ));
        let busy = classify(
            SlackClientError::ApiError(SlackClientApiError::new("ratelimited".into())),
            "#infra-reviews",
        );
        assert!(matches!(busy, SlackCallError::Transient { .. }));
        let missing = classify(
            SlackClientError::ApiError(SlackClientApiError::new("channel_not_found".into())),
            "#infra-reviewz",
        );
        assert_eq!(
            missing.to_string(),
            "Slack answered channel_not_found: the channel #infra-reviewz does not exist or the app cannot see it; set [slack] channel to the review channel, and invite the app to it if it is private"
        );
    }
}
