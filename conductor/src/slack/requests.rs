//! What arrives from Slack: verified before anything is parsed (slack-morphism's v0 signature
//! check, constant-time, five-minute window; the endpoint then refuses a replayed request),
//! then read as an action on a plan.

use axum::http::HeaderMap;
use infracrew_protocol::DecisionKind;
use slack_morphism::{
    SlackSigningSecret,
    prelude::SlackInteractionEvent,
    signature_verifier::{SlackEventSignatureVerifier, SlackEventSignatureVerifierError},
};

/// Why a request was not accepted as coming from Slack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("the request has no {0} header; it did not come from Slack")]
    MissingHeader(&'static str),
    #[error("the request's signature does not match the signing secret")]
    BadSignature,
    #[error("the request's timestamp is more than five minutes from now: {0}")]
    Stale(String),
    #[error("this exact request was already received; a replay is refused")]
    Replayed,
    #[error("the signing secret is not usable: {0}")]
    Secret(String),
}

/// Checks requests with the app's signing secret, within Slack's five-minute window.
pub struct RequestVerifier {
    verifier: SlackEventSignatureVerifier,
}

impl std::fmt::Debug for RequestVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestVerifier").finish_non_exhaustive()
    }
}

impl RequestVerifier {
    pub fn new(signing_secret: &str) -> Self {
        RequestVerifier {
            verifier: SlackEventSignatureVerifier::new(&SlackSigningSecret::new(
                signing_secret.to_owned(),
            )),
        }
    }

    /// Accepts `body` with these headers only if Slack signed it within the window; returns
    /// the signature, which tells one request from another for the replay check.
    pub fn verify<'h>(&self, headers: &'h HeaderMap, body: &[u8]) -> Result<&'h str, Unverified> {
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .ok_or(Unverified::MissingHeader(name))
        };
        let signature = header(SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER)?;
        let timestamp = header(SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP)?;
        let body = std::str::from_utf8(body).map_err(|_| Unverified::BadSignature)?;
        self.verifier
            .verify(signature, body, timestamp)
            .map_err(|error| match error {
                SlackEventSignatureVerifierError::WrongSignatureError(_) => {
                    Unverified::BadSignature
                }
                SlackEventSignatureVerifierError::IncorrectOrExpiredTimestampError(_) => {
                    Unverified::Stale(timestamp.to_owned())
                }
                other => Unverified::Secret(other.to_string()),
            })?;
        Ok(signature)
    }
}

/// What a person asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlackAction {
    /// Approve, reject or override the plan that `plan` names (an id or a unique prefix).
    Decide {
        kind: DecisionKind,
        plan: String,
        reason: Option<String>,
    },
    /// Where the plan stands.
    Show { plan: String },
}

/// The usage line for each command, shown when one is mistyped.
pub const USAGE: &str = "Use `/approve <plan-id>`, `/reject <plan-id> [reason]`, `/override <plan-id> <reason>` or `/plan <plan-id>` (a plan id, or the first characters of one, as `crew plans` shows).";

/// Reads a slash command and its text.
pub fn parse_command(command: &str, text: &str) -> Result<SlackAction, String> {
    let text = text.trim();
    let (plan, rest) = match text.split_once(char::is_whitespace) {
        Some((plan, rest)) => (plan.to_owned(), Some(rest.trim().to_owned())),
        None => (text.to_owned(), None),
    };
    let rest = rest.filter(|rest| !rest.is_empty());
    if plan.is_empty() {
        return Err(format!("{command} needs a plan id. {USAGE}"));
    }
    let decide = |kind| SlackAction::Decide {
        kind,
        plan: plan.clone(),
        reason: rest.clone(),
    };
    match command.trim_start_matches('/') {
        "approve" if rest.is_none() => Ok(decide(DecisionKind::Approve)),
        "approve" => Err(format!("/approve takes only a plan id. {USAGE}")),
        "reject" => Ok(decide(DecisionKind::Reject)),
        "override" => Ok(decide(DecisionKind::Override)),
        "plan" => Ok(SlackAction::Show { plan }),
        other => Err(format!(
            "infracrew does not know the command /{other}. {USAGE}"
        )),
    }
}

/// Reads a review button: its action id says what, its value names the plan.
pub fn parse_button(action_id: &str, value: Option<&str>) -> Result<SlackAction, String> {
    let plan = value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| format!("the {action_id} button carries no plan id"))?
        .to_owned();
    let kind = match action_id {
        super::review::APPROVE_ACTION => DecisionKind::Approve,
        super::review::REJECT_ACTION => DecisionKind::Reject,
        other => return Err(format!("infracrew has no button {other}")),
    };
    Ok(SlackAction::Decide {
        kind,
        plan,
        reason: None,
    })
}

/// The review buttons pressed in an interaction: where to answer, who, and what they asked.
pub fn button_presses(
    event: SlackInteractionEvent,
) -> Vec<(String, String, Result<SlackAction, String>)> {
    let SlackInteractionEvent::BlockActions(event) = event else {
        return Vec::new();
    };
    let (Some(response_url), Some(user)) = (event.response_url, event.user) else {
        return Vec::new();
    };
    event
        .actions
        .unwrap_or_default()
        .into_iter()
        .map(|action| {
            (
                response_url.0.to_string(),
                user.id.0.clone(),
                parse_button(&action.action_id.0, action.value.as_deref()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use infracrew_testkit::slack::{sign, unix_now};

    use super::*;

    fn headers(signature: &str, timestamp: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-slack-signature",
            HeaderValue::from_str(signature).unwrap(),
        );
        headers.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_str(&timestamp.to_string()).unwrap(),
        );
        headers
    }

    #[test]
    fn only_fresh_correctly_signed_requests_pass() {
        let verifier = RequestVerifier::new("8f742231b10e8888abcd99yyyzzz85a5");
        let body = "command=%2Fapprove&text=0f6c1a52&user_id=U0ALICE";
        let now = unix_now();
        let signed = sign("8f742231b10e8888abcd99yyyzzz85a5", now, body);
        let headers_signed = headers(&signed, now);
        assert_eq!(
            verifier.verify(&headers_signed, body.as_bytes()),
            Ok(signed.as_str())
        );

        let forged = sign("another secret", now, body);
        assert_eq!(
            verifier.verify(&headers(&forged, now), body.as_bytes()),
            Err(Unverified::BadSignature)
        );
        let tampered = body.replace("U0ALICE", "U0MALLORY");
        let signed = sign("8f742231b10e8888abcd99yyyzzz85a5", now, body);
        assert_eq!(
            verifier.verify(&headers(&signed, now), tampered.as_bytes()),
            Err(Unverified::BadSignature)
        );
        let old = now - 301;
        let stale = sign("8f742231b10e8888abcd99yyyzzz85a5", old, body);
        assert_eq!(
            verifier.verify(&headers(&stale, old), body.as_bytes()),
            Err(Unverified::Stale(old.to_string()))
        );
        assert_eq!(
            verifier.verify(&HeaderMap::new(), body.as_bytes()),
            Err(Unverified::MissingHeader("x-slack-signature"))
        );
    }

    #[test]
    fn commands_and_buttons_are_read_or_explained() {
        assert_eq!(
            parse_command("/approve", " 0f6c1a52 "),
            Ok(SlackAction::Decide {
                kind: DecisionKind::Approve,
                plan: "0f6c1a52".into(),
                reason: None
            })
        );
        assert_eq!(
            parse_command("/reject", "0f6c1a52 not during the sale"),
            Ok(SlackAction::Decide {
                kind: DecisionKind::Reject,
                plan: "0f6c1a52".into(),
                reason: Some("not during the sale".into())
            })
        );
        assert_eq!(
            parse_command("/plan", "0f6c1a52"),
            Ok(SlackAction::Show {
                plan: "0f6c1a52".into()
            })
        );
        assert!(
            parse_command("/approve", "")
                .unwrap_err()
                .starts_with("/approve needs a plan id.")
        );
        assert!(
            parse_command("/deploy", "x")
                .unwrap_err()
                .starts_with("infracrew does not know the command /deploy.")
        );
        assert_eq!(
            parse_button("approve", Some("0f6c1a52")),
            Ok(SlackAction::Decide {
                kind: DecisionKind::Approve,
                plan: "0f6c1a52".into(),
                reason: None
            })
        );
        assert!(parse_button("approve", None).is_err());
    }
}
