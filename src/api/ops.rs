//! For the platform team: `GET /health` (alive), `GET /ready` (can take work) and
//! `GET /metrics` (Prometheus text).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::AppState;
use crate::error::ApiError;
use crate::{preflight, telemetry};

/// Longest the filesystem checks of `/ready` may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `Retry-After` of a 503 from `/ready`.
const NOT_READY_RETRY_AFTER_SECS: u32 = 5;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

/// `GET /health`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    status: &'static str,
    version: &'static str,
}

/// 200 while the process lives.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Check {
    fn new(name: &'static str, result: Result<(), String>) -> Self {
        Self {
            name,
            ok: result.is_ok(),
            detail: result.err(),
        }
    }
}

/// `GET /ready` when ready.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Ready {
    status: &'static str,
    checks: Vec<Check>,
}

/// 200 when the sidecar can take work, else 503 with the failing checks.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Not ready (failing `checks`)", content_type = "application/problem+json", body = crate::error::Problem)
    ))]
pub(super) async fn ready(State(app): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let checks = checks(&app).await;
    if checks.iter().all(|c| c.ok) {
        return Ok(Json(Ready {
            status: "ready",
            checks,
        }));
    }
    let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let detail = format!("not ready: {}", failing.join(", "));
    Err(ApiError::unavailable(detail, NOT_READY_RETRY_AFTER_SECS)
        .with_extension("checks", serde_json::to_value(&checks).unwrap_or_default()))
}

/// What `/ready` checks: the store takes writes, the shared root and the agents' programs are
/// usable, and the node is not draining.
async fn checks(app: &AppState) -> Vec<Check> {
    let app = &app.inner;
    let store = app
        .store
        .check_writable()
        .await
        .map_err(|e| format!("store does not take writes: {e}"));
    let root = app.shared_root.clone();
    let programs = preflight::programs(&app.config.agents.snapshot());
    let checks = tokio::task::spawn_blocking(move || {
        (
            preflight::shared_root(&root),
            preflight::agent_commands(&programs),
        )
    });
    // A hung mount must not hang the probe: it fails it.
    let (root, commands) = match tokio::time::timeout(CHECK_TIMEOUT, checks).await {
        Ok(Ok(results)) => results,
        _ => (
            Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        ),
    };
    let draining = if app.runner.is_draining() {
        Err("shutting down".to_owned())
    } else {
        Ok(())
    };
    vec![
        Check::new("store", store),
        Check::new("shared_root", root),
        Check::new("agent_commands", commands),
        Check::new("not_draining", draining),
    ]
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 500, description = "The store could not be read", content_type = "application/problem+json", body = crate::error::Problem)
    ))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let app = &state.inner;
    let gauges = match app.store.gauges().await {
        Ok(g) => g,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // `agent_sidecar_ready` is `/ready`'s answer, so an alert needs no second probe.
    let ready = checks(&state).await.iter().all(|c| c.ok);
    let text = telemetry::render(app.config.agents.snapshot().keys(), gauges, ready);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
