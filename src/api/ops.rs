//! For the platform team: `GET /health` (alive), `GET /ready` (can take work) and
//! `GET /metrics` (Prometheus text).

use std::path::{Path, PathBuf};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::AppState;
use crate::error::ApiError;
use crate::telemetry;

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
    let app = &app.inner;
    let store = app
        .store
        .check_writable()
        .await
        .map_err(|e| format!("store does not take writes: {e}"));
    let root = app.shared_root.clone();
    let commands: Vec<Command> = app
        .config
        .agents
        .snapshot()
        .iter()
        .map(|(name, agent)| Command {
            agent: name.to_string(),
            program: agent.command[0].clone(),
            path: agent.env.get("PATH").cloned(),
        })
        .collect();
    let checks =
        tokio::task::spawn_blocking(move || (check_shared_root(&root), check_commands(&commands)));
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
    let checks = vec![
        Check::new("store", store),
        Check::new("shared_root", root),
        Check::new("agent_commands", commands),
        Check::new("not_draining", draining),
    ];
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

/// `shared_root` can be listed and written (a file is created and removed).
fn check_shared_root(root: &Path) -> Result<(), String> {
    std::fs::read_dir(root).map_err(|e| format!("{}: cannot read: {e}", root.display()))?;
    tempfile::Builder::new()
        .prefix(".ready-")
        .tempfile_in(root)
        .map(drop)
        .map_err(|e| format!("{}: cannot write: {e}", root.display()))
}

/// An agent's program, as its spawn will look for it.
struct Command {
    agent: String,
    program: String,
    /// The agent's own `PATH`, if its `env` sets one.
    path: Option<String>,
}

/// Every agent's program exists and is executable: an absolute path as written, a bare name on
/// the `PATH` the agent gets. A relative path is relative to each job's folder, so it is not
/// checked here.
fn check_commands(commands: &[Command]) -> Result<(), String> {
    let missing: Vec<String> = commands
        .iter()
        .filter(|c| !c.program.contains('/') || c.program.starts_with('/'))
        .filter(|c| resolve(&c.program, c.path.as_deref()).is_none())
        .map(|c| format!("{}: {} not found or not executable", c.agent, c.program))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

fn resolve(program: &str, agent_path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let paths = agent_path
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 500, description = "The store could not be read", content_type = "application/problem+json", body = crate::error::Problem)
    ))]
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    let app = &app.inner;
    let gauges = match app.store.gauges().await {
        Ok(g) => g,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let text = telemetry::render(app.config.agents.snapshot().keys(), gauges);
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
