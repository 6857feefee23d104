//! `GET /agents` (each agent's state, limits, queue depth and running jobs) and the pauses
//! (issue 21): `POST /agents/{name}/pause|resume` for one agent, `POST /agents/pause|resume`
//! for every agent. A pause is kept in the store, so it survives a restart and every node of
//! a fleet honours it: claims skip a paused agent, triggers are still accepted and queued,
//! running jobs finish. A resume wakes the schedulers (in a fleet, by the store's signal).

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::routing::{get, post};

use super::AppState;
use super::auth::Principal;
use crate::config::AgentConfig;
use crate::contract::{
    AgentLimits, AgentList, AgentName, AgentState, AgentStatus, FieldError, PAYLOAD_VERSION,
    Timestamp,
};
use crate::error::{ApiError, ErrorSource};
use crate::store::{AgentLoad, Paused};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list))
        .route("/agents/pause", post(pause_all))
        .route("/agents/resume", post(resume_all))
        .route("/agents/{name}/pause", post(pause))
        .route("/agents/{name}/resume", post(resume))
}

/// Every configured agent: its state, limits, queue depth and running jobs.
#[utoipa::path(get, path = "/agents", tag = "agents",
    responses(
        (status = 200, description = "The agents", body = AgentList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn list(State(app): State<AppState>) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(agent_list(&app).await?))
}

/// Pauses one agent: its queued jobs stay queued, running ones finish, triggers are accepted.
#[utoipa::path(post, path = "/agents/{name}/pause", tag = "agents",
    params(("name" = AgentName, Path, description = "The agent")),
    responses(
        (status = 200, description = "Paused (or already paused)", body = AgentStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 403, description = "Not allowed for this caller", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "No such agent, or not an agent name (at `/name`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn pause(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<AgentStatus>, ApiError> {
    set_one(&app, principal, &name, true).await
}

/// Resumes one agent: its queued jobs are claimed again (unless every agent is paused).
#[utoipa::path(post, path = "/agents/{name}/resume", tag = "agents",
    params(("name" = AgentName, Path, description = "The agent")),
    responses(
        (status = 200, description = "Resumed (or was not paused)", body = AgentStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 403, description = "Not allowed for this caller", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "No such agent, or not an agent name (at `/name`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn resume(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<AgentStatus>, ApiError> {
    set_one(&app, principal, &name, false).await
}

/// Pauses every agent (the whole sidecar, or fleet: every node shares the store).
#[utoipa::path(post, path = "/agents/pause", tag = "agents",
    responses(
        (status = 200, description = "Every agent paused", body = AgentList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 403, description = "Not allowed for this caller", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn pause_all(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<AgentList>, ApiError> {
    set_all(&app, principal, true).await
}

/// Lifts the sidecar-wide pause; agents paused one by one stay paused.
#[utoipa::path(post, path = "/agents/resume", tag = "agents",
    responses(
        (status = 200, description = "The sidecar-wide pause lifted", body = AgentList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 403, description = "Not allowed for this caller", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn resume_all(
    State(app): State<AppState>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<AgentList>, ApiError> {
    set_all(&app, principal, false).await
}

async fn set_one(
    app: &AppState,
    principal: Option<Extension<Principal>>,
    name: &str,
    paused: bool,
) -> Result<Json<AgentStatus>, ApiError> {
    let agent = known_agent(app, name)?;
    let who = allowed(principal.as_ref().map(|p| &p.0), Some(&agent))?;
    let changed = app
        .inner
        .store
        .set_paused(Some(agent.clone()), paused, Timestamp::now())
        .await?;
    announce(&who, Some(&agent), paused, changed);
    if !paused {
        app.inner.runner.wake();
    }
    let list = agent_list(app).await?;
    list.agents
        .into_iter()
        .find(|a| a.agent_name == agent)
        .map(Json)
        .ok_or_else(|| unknown(&agent))
}

async fn set_all(
    app: &AppState,
    principal: Option<Extension<Principal>>,
    paused: bool,
) -> Result<Json<AgentList>, ApiError> {
    let who = allowed(principal.as_ref().map(|p| &p.0), None)?;
    let changed = app
        .inner
        .store
        .set_paused(None, paused, Timestamp::now())
        .await?;
    announce(&who, None, paused, changed);
    if !paused {
        app.inner.runner.wake();
    }
    Ok(Json(agent_list(app).await?))
}

/// The `{name}` segment as a configured agent: 422 at `/name` when it is no agent name or no
/// such agent is configured (as a trigger naming one is refused at `/agent_name`).
fn known_agent(app: &AppState, name: &str) -> Result<AgentName, ApiError> {
    let agent: AgentName = name.parse().map_err(|e: crate::contract::IdError| {
        ApiError::invalid(
            ErrorSource::Path,
            vec![FieldError::new("/name", e.to_string())],
        )
    })?;
    match app.inner.config.agents.get(&agent) {
        Some(_) => Ok(agent),
        None => Err(unknown(&agent)),
    }
}

fn unknown(agent: &AgentName) -> ApiError {
    ApiError::invalid(
        ErrorSource::Path,
        vec![FieldError::new(
            "/name",
            format!("no agent {agent} is configured"),
        )],
    )
}

/// Who is asking, if they may: a caller scoped to some agents (the token's agent claim) pauses
/// and resumes only those, as it triggers only those; every agent at once takes an unscoped
/// caller.
fn allowed(principal: Option<&Principal>, agent: Option<&AgentName>) -> Result<String, ApiError> {
    let Some(principal) = principal else {
        return Ok("anonymous".into());
    };
    match (&principal.agents, agent) {
        (Some(scope), Some(agent)) if !scope.contains(agent) => Err(ApiError::forbidden(
            ErrorSource::Path,
            FieldError::new(
                "/name",
                format!("this caller may not pause or resume {agent}"),
            ),
        )),
        (Some(_), None) => Err(ApiError::forbidden(
            ErrorSource::Path,
            FieldError::new(
                "",
                "a caller scoped to some agents may not pause or resume every agent",
            ),
        )),
        _ => Ok(principal.subject.clone()),
    }
}

fn announce(who: &str, agent: Option<&AgentName>, paused: bool, changed: bool) {
    let what = agent.map_or_else(|| "every agent".to_owned(), |a| format!("agent {a}"));
    let verb = if paused { "paused" } else { "resumed" };
    let note = if changed { "" } else { " (no change)" };
    tracing::info!(
        agent = agent.map(AgentName::as_str),
        caller = who,
        "{what} {verb} by {who}{note}"
    );
}

/// Every configured agent with the store's pauses and loads.
async fn agent_list(app: &AppState) -> Result<AgentList, ApiError> {
    let store = &app.inner.store;
    let paused = store.paused().await?;
    let loads = store.agent_loads().await?;
    let agents = app
        .inner
        .config
        .agents
        .snapshot()
        .iter()
        .map(|(name, agent)| {
            status(
                name,
                agent,
                &paused,
                loads.get(name).copied().unwrap_or_default(),
            )
        })
        .collect();
    Ok(AgentList {
        version: PAYLOAD_VERSION,
        paused: paused.all,
        agents,
    })
}

fn status(name: &AgentName, agent: &AgentConfig, paused: &Paused, load: AgentLoad) -> AgentStatus {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    AgentStatus {
        agent_name: name.clone(),
        state: match paused.holds(name) {
            true => AgentState::Paused,
            false => AgentState::Active,
        },
        paused: paused.agents.contains(name),
        limits: AgentLimits {
            max_concurrent: u32::try_from(agent.max_concurrent).unwrap_or(u32::MAX),
            max_per_key: agent.max_per_key,
            timeout_ms: ms(agent.timeout),
            stale_after_ms: agent.stale_after.map(ms),
            max_attempts: agent.max_attempts,
        },
        queued: load.queued,
        running: load.running,
    }
}
