//! `crew approve`, `crew reject`, `crew override`: a decision sent to the Conductor, which
//! judges it under the same rules as every other channel.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use infracrew_bus::Bus;
use infracrew_protocol::{
    DecisionChannel, DecisionKind, DecisionOutcome, DecisionReply, DecisionRequest, SchemaVersion,
    decode, encode, signing::Signer, subjects,
};

use crate::{CliError, plans::resolve_plan};

/// Who decides, and the key that proves it.
#[derive(Debug, Clone, clap::Args)]
pub struct ApproverArgs {
    /// Who decides (an approver identity from the Conductor's configuration).
    #[arg(long = "as", value_name = "USER")]
    pub who: String,
    /// The approver's nkey seed file (`crew keys --approver USER`): the decision is signed
    /// with it, as the Conductor requires outside a demo installation.
    #[arg(long, env = "INFRACREW_APPROVER_KEY", value_name = "SEED_FILE")]
    pub key: Option<PathBuf>,
}

impl ApproverArgs {
    fn signer(&self) -> Result<Option<Signer>, CliError> {
        let Some(path) = &self.key else {
            return Ok(None);
        };
        let key_error = |reason: String| CliError::ApproverKey {
            path: path.clone(),
            reason,
        };
        let seed = std::fs::read_to_string(path).map_err(|error| key_error(error.to_string()))?;
        let seed = seed
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| key_error("it holds no seed".into()))?;
        Signer::from_seed(seed)
            .map(Some)
            .map_err(|error| key_error(error.to_string()))
    }
}

/// How long the Conductor has to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn decide(
    bus: &Bus,
    plan: &str,
    kind: DecisionKind,
    approver: &ApproverArgs,
    reason: Option<String>,
) -> Result<ExitCode, CliError> {
    let signer = approver.signer()?;
    let plan_id = resolve_plan(bus, plan).await?;
    let mut request = DecisionRequest {
        schema_version: SchemaVersion::CURRENT,
        request_id: uuid::Uuid::new_v4(),
        plan_id,
        kind,
        who: approver.who.clone(),
        channel: DecisionChannel::Cli,
        reason,
        issued_at: None,
        signature: None,
    };
    if let Some(signer) = &signer {
        request = request.signed_by(signer);
    }
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
