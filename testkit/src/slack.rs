//! A Slack simulator for tests, speaking Slack's wire format: the Web API methods the crew
//! uses (`chat.postMessage`, `chat.update`, `apps.connections.open`) with bearer-token checks
//! and real-shaped answers, response URLs, Socket Mode's WebSocket with its envelopes and
//! acknowledgements, and failures on demand (HTTP 5xx, `429` with `Retry-After`, `ok:false`).
//! Beside it, the signing and payloads of the requests Slack sends an app, so tests send
//! slash commands and button presses exactly as Slack does.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The review channel's id, and the names that resolve to it.
pub const REVIEW_CHANNEL_ID: &str = "C0REVIEWS";
const REVIEW_CHANNEL_NAMES: [&str; 3] = ["#infra-reviews", "infra-reviews", REVIEW_CHANNEL_ID];

/// A failure the simulator gives instead of the next Web API answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// This HTTP status (a 5xx: Slack is down).
    Status(u16),
    /// HTTP 429 with `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// HTTP 200 with `{"ok": false, "error": code}`.
    Api(&'static str),
}

/// One Web API call as it arrived, and how it was answered.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub body: Value,
    pub at: Instant,
    /// Whether it succeeded (`ok: true`).
    pub ok: bool,
}

/// A message as it stands in the simulated workspace.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub text: String,
    pub blocks: Value,
    /// How many times chat.update changed it.
    pub updates: usize,
}

#[derive(Debug, Default)]
struct Workspace {
    token: String,
    app_token: String,
    socket_url: String,
    /// The open Socket Mode connections: where to send an envelope.
    sockets: Vec<mpsc::UnboundedSender<String>>,
    /// Socket Mode acknowledgements by envelope id.
    acks: HashMap<String, Value>,
    failures: VecDeque<Failure>,
    calls: Vec<Call>,
    messages: Vec<Message>,
    responses: Vec<(String, Value)>,
    next_ts: u64,
}

/// A running simulator, stopped when dropped.
#[derive(Debug)]
pub struct SlackSimulator {
    address: SocketAddr,
    workspace: Arc<Mutex<Workspace>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SlackSimulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SlackSimulator {
    /// Starts on a free loopback port; Web API calls must carry `Bearer {bot_token}`, and
    /// `apps.connections.open` `Bearer {app_token}`.
    pub async fn start(bot_token: &str, app_token: &str) -> std::io::Result<Self> {
        let sockets = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let workspace = Arc::new(Mutex::new(Workspace {
            token: bot_token.to_owned(),
            app_token: app_token.to_owned(),
            socket_url: format!("ws://{}/link", sockets.local_addr()?),
            next_ts: 1,
            ..Workspace::default()
        }));
        tokio::spawn(accept_sockets(sockets, workspace.clone()));
        let routes = Router::new()
            .route("/api/{method}", post(web_api))
            .route("/respond/{name}", post(respond))
            .with_state(workspace.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, routes).await;
        });
        Ok(SlackSimulator {
            address,
            workspace,
            server,
        })
    }

    /// The Web API base address, for `[slack] api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.address)
    }

    /// A response URL whose posts are kept under `name`.
    pub fn response_url(&self, name: &str) -> String {
        format!("http://{}/respond/{name}", self.address)
    }

    /// The next Web API calls fail with `failures`, in order.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.lock().failures.extend(failures);
    }

    /// Every Web API call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every message in the workspace, in the order they were posted.
    pub fn messages(&self) -> Vec<Message> {
        self.lock().messages.clone()
    }

    /// The messages posted in the thread of `ts`.
    pub fn thread(&self, ts: &str) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|message| message.thread_ts.as_deref() == Some(ts))
            .collect()
    }

    /// What was posted to the response URL `name`.
    pub fn responses(&self, name: &str) -> Vec<Value> {
        self.lock()
            .responses
            .iter()
            .filter(|(to, _)| to == name)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Sends a slash command over Socket Mode, as Slack does when the app uses it, and
    /// returns the app's acknowledgement payload (the reply).
    pub async fn socket_command(
        &self,
        command: &str,
        text: &str,
        user_id: &str,
        response_url: &str,
    ) -> Value {
        let form = slash_command(command, text, user_id, response_url);
        let fields: HashMap<String, String> =
            serde_urlencoded::from_str(&form).expect("the form just made");
        self.socket_envelope("slash_commands", json!(fields), true)
            .await
    }

    /// Presses a button over Socket Mode; the app answers through the response URL.
    pub async fn socket_button_press(
        &self,
        action_id: &str,
        value: &str,
        user_id: &str,
        message_ts: &str,
        response_url: &str,
    ) -> Value {
        let payload = block_actions(action_id, value, user_id, message_ts, response_url);
        self.socket_envelope("interactive", payload, false).await
    }

    async fn socket_envelope(&self, kind: &str, payload: Value, wants_reply: bool) -> Value {
        let envelope_id = uuid_like();
        let envelope = json!({
            "envelope_id": envelope_id, "type": kind, "payload": payload,
            "accepts_response_payload": wants_reply, "retry_attempt": 0, "retry_reason": "",
        })
        .to_string();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let sent = {
                let mut workspace = self.lock();
                workspace.sockets.retain(|socket| !socket.is_closed());
                workspace
                    .sockets
                    .first()
                    .is_some_and(|socket| socket.send(envelope.clone()).is_ok())
            };
            if sent {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no Socket Mode connection was opened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            if let Some(ack) = self.lock().acks.remove(&envelope_id) {
                return ack;
            }
            assert!(
                Instant::now() < deadline,
                "envelope {envelope_id} was not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Workspace> {
        self.workspace
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn slack_json(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

async fn web_api(
    State(workspace): State<Arc<Mutex<Workspace>>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut workspace = workspace
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let record = |workspace: &mut Workspace, ok| {
        workspace.calls.push(Call {
            method: method.clone(),
            body: request.clone(),
            at: Instant::now(),
            ok,
        });
    };
    if let Some(failure) = workspace.failures.pop_front() {
        record(&mut workspace, false);
        return match failure {
            Failure::Status(code) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                [(header::CONTENT_TYPE, "text/html")],
                "upstream unavailable",
            )
                .into_response(),
            Failure::RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response(),
            Failure::Api(code) => slack_json(StatusCode::OK, json!({"ok": false, "error": code})),
        };
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if method == "apps.connections.open" {
        let ok = bearer == Some(workspace.app_token.as_str());
        record(&mut workspace, ok);
        return if ok {
            slack_json(
                StatusCode::OK,
                json!({"ok": true, "url": workspace.socket_url}),
            )
        } else {
            slack_json(
                StatusCode::OK,
                json!({"ok": false, "error": "invalid_auth"}),
            )
        };
    }
    if bearer != Some(workspace.token.as_str()) {
        record(&mut workspace, false);
        let error = if bearer.is_none() {
            "not_authed"
        } else {
            "invalid_auth"
        };
        return slack_json(StatusCode::OK, json!({"ok": false, "error": error}));
    }
    let channel = request["channel"].as_str().unwrap_or_default();
    if !REVIEW_CHANNEL_NAMES.contains(&channel) {
        record(&mut workspace, false);
        return slack_json(
            StatusCode::OK,
            json!({"ok": false, "error": "channel_not_found"}),
        );
    }
    let text = request["text"].as_str().unwrap_or_default().to_owned();
    let blocks = request.get("blocks").cloned().unwrap_or(json!([]));
    match method.as_str() {
        "chat.postMessage" => {
            let ts = format!("1732350000.{:06}", workspace.next_ts);
            workspace.next_ts += 1;
            let thread_ts = request["thread_ts"].as_str().map(str::to_owned);
            workspace.messages.push(Message {
                channel: REVIEW_CHANNEL_ID.into(),
                ts: ts.clone(),
                thread_ts: thread_ts.clone(),
                text: text.clone(),
                blocks: blocks.clone(),
                updates: 0,
            });
            record(&mut workspace, true);
            let mut message = json!({
                "type": "message", "subtype": "bot_message", "text": text, "ts": ts,
                "bot_id": "B0INFRACREW", "app_id": "A0INFRACREW", "blocks": blocks,
            });
            if let Some(thread_ts) = thread_ts {
                message["thread_ts"] = json!(thread_ts);
            }
            slack_json(
                StatusCode::OK,
                json!({"ok": true, "channel": REVIEW_CHANNEL_ID, "ts": ts, "message": message}),
            )
        }
        "chat.update" => {
            let ts = request["ts"].as_str().unwrap_or_default().to_owned();
            let Some(message) = workspace
                .messages
                .iter_mut()
                .find(|message| message.ts == ts && channel == REVIEW_CHANNEL_ID)
            else {
                record(&mut workspace, false);
                return slack_json(
                    StatusCode::OK,
                    json!({"ok": false, "error": "message_not_found"}),
                );
            };
            message.text = text.clone();
            message.blocks = blocks.clone();
            message.updates += 1;
            record(&mut workspace, true);
            slack_json(
                StatusCode::OK,
                json!({"ok": true, "channel": REVIEW_CHANNEL_ID, "ts": ts, "text": text,
                       "message": {"text": text, "blocks": blocks}}),
            )
        }
        _ => {
            record(&mut workspace, false);
            slack_json(
                StatusCode::OK,
                json!({"ok": false, "error": "unknown_method"}),
            )
        }
    }
}

async fn respond(
    State(workspace): State<Arc<Mutex<Workspace>>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    workspace
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .responses
        .push((name, body));
    // Slack answers a response URL with a bare "ok".
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "ok").into_response()
}

/// Serves Socket Mode connections: `hello` first, then the envelopes tests send, and the
/// acknowledgements the app sends back.
async fn accept_sockets(listener: tokio::net::TcpListener, workspace: Arc<Mutex<Workspace>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let workspace = workspace.clone();
        tokio::spawn(async move {
            let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut outgoing, mut incoming) = socket.split();
            let (sender, mut envelopes) = mpsc::unbounded_channel::<String>();
            let hello = json!({
                "type": "hello", "num_connections": 1,
                "connection_info": {"app_id": "A0INFRACREW"},
                "debug_info": {"host": "applink-simulated", "build_number": 1, "approximate_connection_time": 18060},
            });
            if outgoing
                .send(WsMessage::text(hello.to_string()))
                .await
                .is_err()
            {
                return;
            }
            workspace
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .sockets
                .push(sender);
            loop {
                tokio::select! {
                    envelope = envelopes.recv() => match envelope {
                        Some(envelope) => if outgoing.send(WsMessage::text(envelope)).await.is_err() { return },
                        None => return,
                    },
                    frame = incoming.next() => match frame {
                        Some(Ok(WsMessage::Text(text))) => {
                            let ack: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                            if let Some(id) = ack["envelope_id"].as_str() {
                                workspace
                                    .lock()
                                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                                    .acks
                                    .insert(id.to_owned(), ack["payload"].clone());
                            }
                        }
                        Some(Ok(WsMessage::Ping(body))) => {
                            let _ = outgoing.send(WsMessage::Pong(body)).await;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
    }
}

/// A unique envelope id.
fn uuid_like() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:08x}-envelope-{}",
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Seconds since the epoch, as Slack stamps its requests.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Signs `body` as Slack does: `v0=` and the hex HMAC-SHA256, keyed with the signing secret,
/// of `v0:{timestamp}:{body}`.
pub fn sign(signing_secret: &str, timestamp: u64, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(signing_secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("v0={hex}")
}

/// A trigger id as Slack gives each request: no two requests are the same bytes.
fn trigger_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "13345224609.738474920.{:x}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The form Slack POSTs for a slash command.
pub fn slash_command(command: &str, text: &str, user_id: &str, response_url: &str) -> String {
    let trigger_id = trigger_id();
    serde_urlencoded::to_string([
        ("token", "gIkuvaNzQIHg97ATvDxqgjtO"),
        ("team_id", "T0INFRA"),
        ("team_domain", "example"),
        ("channel_id", REVIEW_CHANNEL_ID),
        ("channel_name", "infra-reviews"),
        ("user_id", user_id),
        ("user_name", &user_id.to_lowercase()),
        ("command", command),
        ("text", text),
        ("api_app_id", "A0INFRACREW"),
        ("is_enterprise_install", "false"),
        ("response_url", response_url),
        ("trigger_id", &trigger_id),
    ])
    .expect("a form")
}

/// The form Slack POSTs when a person presses a button of a message: `payload=` and the
/// `block_actions` JSON.
pub fn button_press(
    action_id: &str,
    value: &str,
    user_id: &str,
    message_ts: &str,
    response_url: &str,
) -> String {
    let payload = block_actions(action_id, value, user_id, message_ts, response_url);
    serde_urlencoded::to_string([("payload", payload.to_string())]).expect("a form")
}

/// The `block_actions` payload of a button press.
fn block_actions(
    action_id: &str,
    value: &str,
    user_id: &str,
    message_ts: &str,
    response_url: &str,
) -> Value {
    json!({
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.to_lowercase(), "name": user_id.to_lowercase(), "team_id": "T0INFRA"},
        "api_app_id": "A0INFRACREW",
        "token": "gIkuvaNzQIHg97ATvDxqgjtO",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": REVIEW_CHANNEL_ID, "is_ephemeral": false},
        "trigger_id": trigger_id(),
        "team": {"id": "T0INFRA", "domain": "example"},
        "channel": {"id": REVIEW_CHANNEL_ID, "name": "infra-reviews"},
        "response_url": response_url,
        "actions": [{
            "action_id": action_id, "block_id": "review", "type": "button",
            "text": {"type": "plain_text", "text": action_id},
            "value": value, "action_ts": "1732350001.000001"
        }]
    })
}

/// POSTs a form to `url` signed with `signing_secret` at `timestamp`, as Slack does, and
/// returns the status and body of the answer.
pub async fn send_signed(
    url: &str,
    body: &str,
    signing_secret: &str,
    timestamp: u64,
) -> (u16, String) {
    send_with_signature(url, body, &sign(signing_secret, timestamp, body), timestamp).await
}

/// POSTs a form with the given signature headers (for forged or replayed requests).
pub async fn send_with_signature(
    url: &str,
    body: &str,
    signature: &str,
    timestamp: u64,
) -> (u16, String) {
    let request = axum::http::Request::post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-slack-signature", signature)
        .header("x-slack-request-timestamp", timestamp.to_string())
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a request");
    crate::http::send(request)
        .await
        .unwrap_or_else(|error| panic!("POST {error}"))
}
