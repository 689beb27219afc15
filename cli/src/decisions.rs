//! `crew approve`, `crew reject`, `crew override`: a decision sent to the Conductor, which
//! judges it under the same rules as every other channel.

use std::{process::ExitCode, time::Duration};

use infracrew_bus::Bus;
use infracrew_protocol::{
    DecisionChannel, DecisionKind, DecisionOutcome, DecisionReply, DecisionRequest, SchemaVersion,
    decode, encode, subjects,
};

use crate::{CliError, plans::resolve_plan};

/// How long the Conductor has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn decide(
    bus: &Bus,
    plan: &str,
    kind: DecisionKind,
    who: &str,
    reason: Option<String>,
) -> Result<ExitCode, CliError> {
    let plan_id = resolve_plan(bus, plan).await?;
    let request = DecisionRequest {
        schema_version: SchemaVersion::CURRENT,
        request_id: uuid::Uuid::new_v4(),
        plan_id,
        kind,
        who: who.to_owned(),
        channel: DecisionChannel::Cli,
        reason,
    };
    let payload = encode(&request).map_err(|e| CliError::Read {
        what: "the decision",
        reason: e.to_string(),
    })?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        bus.client()
            .request(subjects::APPROVAL_REQUEST, payload.into()),
    )
    .await
    .map_err(|_| CliError::NoConductor(format!("no answer within {ANSWER_TIMEOUT:?}")))?
    .map_err(|error| CliError::NoConductor(error.to_string()))?;
    let reply: DecisionReply = decode(&answer.payload).map_err(|e| CliError::Read {
        what: "the Conductor's answer",
        reason: e.to_string(),
    })?;
    let state = reply
        .state
        .map(|state| format!(" (plan is {state})"))
        .unwrap_or_default();
    match reply.outcome {
        DecisionOutcome::Accepted => {
            println!("{}{state}", reply.message);
            Ok(ExitCode::SUCCESS)
        }
        DecisionOutcome::Refused => {
            eprintln!("refused: {}{state}", reply.message);
            Ok(ExitCode::FAILURE)
        }
    }
}
