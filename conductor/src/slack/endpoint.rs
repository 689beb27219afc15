//! The HTTP endpoint Slack calls: `POST /slack/commands` for slash commands and
//! `POST /slack/interactions` for button presses. Each request is verified before its body is
//! parsed, and answered within Slack's three seconds.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use slack_morphism::prelude::{SlackCommandEvent, SlackInteractionEvent};

use super::{
    SlackDesk,
    requests::{RequestVerifier, Unverified, parse_command},
};
use crate::replay::RequestSource;

/// How long a command's answer may take before Slack is answered "working on it" and the
/// answer follows through the response URL (Slack gives up after three seconds).
const ANSWER_WITHIN: Duration = Duration::from_millis(2_500);

/// What the endpoint's handlers share.
#[derive(Debug)]
pub struct SlackEndpoint {
    pub desk: Arc<SlackDesk>,
    pub verifier: RequestVerifier,
}

/// The Slack routes, to be served on the Conductor's HTTP address.
pub fn routes(endpoint: Arc<SlackEndpoint>) -> Router {
    Router::new()
        .route("/slack/commands", post(command))
        .route("/slack/interactions", post(interaction))
        .with_state(endpoint)
}

/// An ephemeral reply: only the person who asked sees it.
fn ephemeral(text: impl Into<String>) -> Response {
    Json(serde_json::json!({"response_type": "ephemeral", "text": text.into()})).into_response()
}

/// The refusal of a request that is not Slack's, or is a copy of one already taken.
async fn unverified(
    endpoint: &SlackEndpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Response> {
    let refused = match endpoint.verifier.verify(headers, body) {
        Err(refused) => refused,
        Ok(signature) => {
            let seen = &endpoint.desk.conductor.seen;
            match seen.first_time(RequestSource::Slack, signature).await {
                Ok(true) => return None,
                Ok(false) => Unverified::Replayed,
                Err(error) => return Some(error.into_response()),
            }
        }
    };
    tracing::warn!(reason = %refused, "refused a request that claims to come from Slack");
    Some((StatusCode::UNAUTHORIZED, refused.to_string()).into_response())
}

async fn command(
    State(endpoint): State<Arc<SlackEndpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = unverified(&endpoint, &headers, &body).await {
        return refusal;
    }
    let event: SlackCommandEvent = match serde_urlencoded::from_bytes(&body) {
        Ok(event) => event,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a slash command payload: {error}"),
            )
                .into_response();
        }
    };
    let action = match parse_command(&event.command.0, event.text.as_deref().unwrap_or("")) {
        Ok(action) => action,
        Err(usage) => return ephemeral(usage),
    };
    let user = event.user_id.0.clone();
    tracing::info!(user, command = %event.command.0, text = ?event.text, "slash command");
    let desk = endpoint.desk.clone();
    let mut answer = tokio::spawn({
        let (user, action) = (user.clone(), action.clone());
        async move { desk.answer(&user, action).await }
    });
    match tokio::time::timeout(ANSWER_WITHIN, &mut answer).await {
        Ok(Ok(text)) => ephemeral(text),
        Ok(Err(error)) => ephemeral(format!(
            ":warning: the decision could not be taken ({error}); try again"
        )),
        Err(_) => {
            let desk = endpoint.desk.clone();
            let response_url = event.response_url.0.to_string();
            tokio::spawn(async move {
                let text = answer.await.unwrap_or_else(|error| {
                    format!(":warning: the decision could not be taken ({error}); try again")
                });
                if let Err(error) = desk.api.respond(&response_url, &text).await {
                    tracing::warn!(%error, "a late answer did not reach Slack: {text}");
                }
            });
            ephemeral("Working on it; the answer follows here.")
        }
    }
}

/// Slack posts interactions as a form with one field, `payload`, holding JSON.
#[derive(Deserialize)]
struct InteractionForm {
    payload: String,
}

async fn interaction(
    State(endpoint): State<Arc<SlackEndpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = unverified(&endpoint, &headers, &body).await {
        return refusal;
    }
    let event = serde_urlencoded::from_bytes::<InteractionForm>(&body)
        .map_err(|error| error.to_string())
        .and_then(|form| {
            serde_json::from_str::<SlackInteractionEvent>(&form.payload)
                .map_err(|error| error.to_string())
        });
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an interaction payload: {error}"),
            )
                .into_response();
        }
    };
    endpoint.desk.answer_buttons(event);
    // The acknowledgement is empty; the answer goes to the person through the response URL.
    StatusCode::OK.into_response()
}
