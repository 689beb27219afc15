//! The agent's HTTP endpoint: `/health/live`, `/health/ready` and `/metrics`, and any routes
//! the role mounts once it is built (the Conductor's Slack endpoint).

use std::sync::{Arc, OnceLock};

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tower::ServiceExt;

use crate::Agent;

/// Routes a role adds after start; unset, other paths answer 404.
#[derive(Debug, Default)]
pub(crate) struct Mounted(OnceLock<Router>);

impl Mounted {
    pub(crate) fn set(&self, routes: Router) -> bool {
        self.0.set(routes).is_ok()
    }
}

pub(crate) fn router(agent: Agent) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(mounted)
        .with_state(Arc::new(agent))
}

async fn live(State(agent): State<Arc<Agent>>) -> Json<serde_json::Value> {
    Json(json!({
        "agent": agent.role,
        "instance_id": agent.identity.instance_id,
        "version": agent.identity.version,
        "started_at": agent.identity.started_at,
    }))
}

async fn ready(State(agent): State<Arc<Agent>>) -> Response {
    let checks = agent.checks();
    let ready = checks.values().all(|check| check.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"agent": agent.role, "ready": ready, "checks": checks})),
    )
        .into_response()
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        agent.metrics.encode(),
    )
        .into_response()
}

async fn mounted(State(agent): State<Arc<Agent>>, request: Request) -> Response {
    match agent.mounted.0.get() {
        Some(routes) => match routes.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
