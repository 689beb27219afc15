//! Connecting to NATS, with credentials from flags or the environment.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{ConnectErrorKind, jetstream};

/// How to reach NATS. Every binary flattens these into its command line; each flag also
/// reads its environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL (several may be given, comma-separated, for a cluster).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password for user/password authentication.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// Token authentication.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, conflicts_with_all = ["nats_user", "nats_creds"])]
    pub nats_token: Option<String>,
    /// A NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_user")]
    pub nats_creds: Option<PathBuf>,
    /// How long to wait for the server to answer when connecting.
    #[arg(long, env = "NATS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,
}

impl ConnectArgs {
    /// Anonymous access to `url`, as tests use it.
    pub fn for_url(url: impl Into<String>) -> Self {
        ConnectArgs {
            nats_url: url.into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?} has unit {unit:?}; use ms, s, m or h")),
    };
    let duration =
        Duration::try_from_secs_f64(seconds).map_err(|error| format!("{text:?}: {error}"))?;
    if duration.is_zero() {
        return Err(format!(
            "{text:?} is zero; give a duration above 0, like 500ms or 5s"
        ));
    }
    Ok(duration)
}

/// Why the crew could not use NATS.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach NATS at {url}: {reason}. Is nats-server running there? (`make demo` starts one; or set --nats-url / NATS_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "NATS at {url} refused the credentials: {reason}. Check --nats-user/--nats-password, --nats-token or --nats-creds"
    )]
    Auth { url: String, reason: String },
    #[error("cannot read the NATS credentials file {path}: {reason}")]
    CredsFile { path: PathBuf, reason: String },
    #[error(
        "NATS at {url} answers, but JetStream does not: {reason}. Start nats-server with JetStream enabled (`nats-server -js`) and check the account's JetStream limits"
    )]
    JetStreamUnavailable { url: String, reason: String },
}

/// A connection to NATS with JetStream, shared by everything in one process.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    url: String,
    /// The permission violations the server reported, newest last (a few are kept).
    refusals: Arc<Mutex<Vec<String>>>,
}

/// Permission violations kept for explaining a failed publish.
const REFUSALS_KEPT: usize = 16;

impl Bus {
    /// Connects as `name` (shown in the server's connection list) and checks that JetStream
    /// answers, so a misconfigured server is reported now rather than at the first publish.
    pub async fn connect(args: &ConnectArgs, name: &str) -> Result<Self, ConnectError> {
        let url = args.nats_url.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(args.nats_connect_timeout)
            .request_timeout(Some(args.nats_connect_timeout.max(Duration::from_secs(5))))
            .max_reconnects(None);
        // The server answers a publish outside the user's permissions with an error on the
        // connection, not on the publish: keep it, so the publish can say why it failed.
        let refusals: Arc<Mutex<Vec<String>>> = Arc::default();
        let user = args.nats_user.clone().unwrap_or_else(|| "(no user)".into());
        options = options.event_callback({
            let refusals = refusals.clone();
            move |event| {
                let refusals = refusals.clone();
                let user = user.clone();
                async move {
                    if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) =
                        event
                        && text.to_lowercase().contains("permissions violation")
                    {
                        tracing::error!(
                            user,
                            "the NATS server refused: {text}; this user's permissions (deploy/nats/users.conf) do not allow it"
                        );
                        if let Ok(mut kept) = refusals.lock() {
                            if kept.len() == REFUSALS_KEPT {
                                kept.remove(0);
                            }
                            kept.push(text);
                        }
                    }
                }
            }
        });
        if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &args.nats_token {
            options = options.token(token.clone());
        }
        if let Some(path) = &args.nats_creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|error| ConnectError::CredsFile {
                        path: path.clone(),
                        reason: error.to_string(),
                    })?;
        }
        // A cluster is given as a comma-separated list: the client fails over between them.
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ConnectError::Unreachable {
                url: url.clone(),
                reason: format!("not a NATS URL ({error})"),
            })?;
        let client = options.connect(servers).await.map_err(|error| {
            let reason = error.to_string();
            match error.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    ConnectError::Auth {
                        url: url.clone(),
                        reason,
                    }
                }
                _ => ConnectError::Unreachable {
                    url: url.clone(),
                    reason,
                },
            }
        })?;
        let jetstream = jetstream::new(client.clone());
        jetstream
            .query_account()
            .await
            .map_err(|error| ConnectError::JetStreamUnavailable {
                url: url.clone(),
                reason: error.to_string(),
            })?;
        Ok(Bus {
            client,
            jetstream,
            url,
            refusals,
        })
    }

    /// The core NATS client (request-reply, plain subscriptions).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The server's refusal of a publish on `subject`, if it reported one.
    pub(crate) fn refusal_for(&self, subject: &str) -> Option<String> {
        let quoted = format!("\"{subject}\"");
        self.refusals
            .lock()
            .ok()?
            .iter()
            .rev()
            .find(|text| text.contains(&quoted))
            .cloned()
    }

    /// The URL this bus connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Flushes what was published and closes the connection after in-flight messages.
    pub async fn drain(&self) {
        if let Err(error) = self.client.drain().await {
            tracing::debug!(%error, "draining the NATS connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("0s").unwrap_err().contains("zero"),
            "a zero interval would panic a ticker"
        );
    }
}
