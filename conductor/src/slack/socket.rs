//! Socket Mode, for installations Slack cannot reach over HTTP: the Conductor opens the
//! connection with the app-level token, and slash commands and button presses arrive over
//! it. They are answered by the same [`SlackDesk`] as the HTTP endpoint.

use std::sync::Arc;

use infracrew_bus::Shutdown;
use slack_morphism::{UserCallbackResult, prelude::*};

use super::{SlackDesk, api::SlackCallError, requests::parse_command};

/// Listens on Socket Mode with `app_token` until `shutdown`.
pub async fn serve(
    desk: Arc<SlackDesk>,
    app_token: &str,
    shutdown: Shutdown,
) -> Result<(), SlackCallError> {
    let environment = Arc::new(
        SlackClientEventsListenerEnvironment::new(desk.api.client()).with_user_state(desk.clone()),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_command_events(on_command)
        .with_interaction_events(on_interaction);
    let listener = SlackClientSocketModeListener::new(
        &SlackClientSocketModeConfig::new(),
        environment,
        callbacks,
    );
    listener
        .listen_for(&SlackApiToken::new(SlackApiTokenValue(app_token.to_owned())))
        .await
        .map_err(|error| SlackCallError::Permanent {
            code: "socket_mode".into(),
            fix: format!(
                "Socket Mode could not connect ({error}); check SLACK_APP_TOKEN (an xapp- token with connections:write) and that Socket Mode is on for the app"
            ),
        })?;
    listener.start().await;
    tracing::info!("listening to Slack over Socket Mode");
    shutdown.cancelled().await;
    listener.shutdown().await;
    Ok(())
}

fn desk_of(state: &SlackClientEventsUserStateStorage) -> Option<Arc<SlackDesk>> {
    state.get_user_state::<Arc<SlackDesk>>().cloned()
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let desk = desk_of(&*state.read().await).ok_or("the Slack desk is missing")?;
    let text = match parse_command(&event.command.0, event.text.as_deref().unwrap_or("")) {
        Ok(action) => desk.answer(&event.user_id.0, action).await,
        Err(usage) => usage,
    };
    Ok(
        SlackCommandEventResponse::new(SlackMessageContent::new().with_text(text))
            .with_response_type(SlackMessageResponseType::Ephemeral),
    )
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    state: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let desk = desk_of(&*state.read().await).ok_or("the Slack desk is missing")?;
    desk.answer_buttons(event);
    Ok(())
}
