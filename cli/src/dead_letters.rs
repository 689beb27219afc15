//! `crew dlq`: the messages the crew gave up on, and why.

use infracrew_bus::{Bus, streams};
use infracrew_protocol::{DeadLetter, decode};

use crate::CliError;

pub async fn show(bus: &Bus, limit: usize, as_json: bool) -> Result<(), CliError> {
    let letters = read(bus, limit).await?;
    if as_json {
        let text = serde_json::to_string_pretty(&letters).map_err(|error| CliError::Read {
            what: "dead letters",
            reason: error.to_string(),
        })?;
        println!("{text}");
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    for letter in &letters {
        let kind = serde_json::to_value(letter.kind)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{}  {} #{}  {kind}  consumer {} after {} deliveries",
            letter.dead_at.format("%Y-%m-%d %H:%M:%S"),
            letter.subject,
            letter.stream_sequence,
            letter.consumer,
            letter.delivered
        );
        for line in letter.reason.lines() {
            println!("    {line}");
        }
        if let Ok(payload) = letter.payload() {
            let text = String::from_utf8_lossy(&payload);
            let shown: String = text.chars().take(200).collect();
            println!(
                "    payload: {shown}{}",
                if text.chars().count() > 200 {
                    "…"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// The newest `limit` dead letters, oldest first.
async fn read(bus: &Bus, limit: usize) -> Result<Vec<DeadLetter>, CliError> {
    let read_error = |error: &dyn std::fmt::Display| CliError::Read {
        what: "dead letters",
        reason: error.to_string(),
    };
    let mut stream = bus
        .jetstream()
        .get_stream(streams::DEAD_LETTERS)
        .await
        .map_err(|e| read_error(&e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| read_error(&e))?
        .state
        .clone();
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    let newest_first = state.last_sequence.saturating_sub(limit.max(1) as u64 - 1);
    let first = state.first_sequence.max(newest_first);
    for sequence in first..=state.last_sequence {
        // A gap (a purged or deleted message) is skipped.
        if let Ok(message) = stream.direct_get(sequence).await {
            match decode::<DeadLetter>(&message.payload) {
                Ok(letter) => letters.push(letter),
                Err(error) => tracing::warn!(sequence, %error, "unreadable dead letter"),
            }
        }
    }
    Ok(letters)
}
