//! `GET /overview` (the fleet at a glance over a window) and `GET /jobs/counts` (how many jobs
//! a list filter matches, per state).
//!
//! An overview costs the store a handful of indexed reads; it is computed at most once per
//! [`FRESH_FOR`] per window and shared by every caller in that time, so a wall of open
//! dashboards costs the store no more than one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use tokio::sync::Mutex;

use super::{AppState, Inner};
use crate::contract::{
    FieldError, JobCounts, JobState, Overview, PAYLOAD_VERSION, StateCount, Timestamp,
};
use crate::error::{ApiError, ErrorSource};
use crate::overview::{self, Window};
use crate::store::JobQuery;

/// How long a computed overview is served before it is computed again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The shortest and longest window an overview covers.
const WINDOWS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/overview", get(overview))
        .route("/jobs/counts", get(counts))
}

/// The overview's window on a query string.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverviewQuery {
    /// How far back, e.g. `1h` (the default), `15m`, `24h`; 1 minute to 7 days.
    #[param(example = "1h", pattern = "^([1-9][0-9]?[mh]|[1-7]d)$")]
    pub window: Option<String>,
}

impl OverviewQuery {
    /// The window's length; a failure names `/window`.
    pub fn length(&self) -> Result<Duration, FieldError> {
        let Some(text) = &self.window else {
            return Ok(Duration::from_secs(3600));
        };
        let length = humantime::parse_duration(text)
            .map_err(|e| FieldError::new("/window", format!("{text:?} is not a duration: {e}")))?;
        if !WINDOWS.contains(&length) {
            return Err(FieldError::new("/window", "must be between 1m and 7d"));
        }
        Ok(length)
    }
}

/// The last overview computed, per window length.
#[derive(Default)]
pub struct OverviewCache {
    last: Mutex<Vec<(Duration, Instant, Arc<Overview>)>>,
}

/// The fleet at a glance: counts per agent and state, queues, running against limits, the outbox,
/// and time buckets of finished jobs and callback attempts.
#[utoipa::path(get, path = "/overview", tag = "jobs", params(OverviewQuery),
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn overview(
    State(app): State<AppState>,
    query: Result<Query<OverviewQuery>, QueryRejection>,
) -> Result<Json<Overview>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(ErrorSource::Query, vec![FieldError::new("", e.body_text())])
    })?;
    let length = query
        .length()
        .map_err(|e| ApiError::invalid(ErrorSource::Query, vec![e]))?;
    Ok(Json(
        overview_for(&app.inner, length).await?.as_ref().clone(),
    ))
}

/// The overview over the last `length`, from the cache while it is fresh.
pub(crate) async fn overview_for(app: &Inner, length: Duration) -> Result<Arc<Overview>, ApiError> {
    // Held across the computation: concurrent callers wait for one read instead of each making it.
    let mut last = app.overview.last.lock().await;
    if let Some((_, at, o)) = last.iter().find(|(l, _, _)| *l == length)
        && at.elapsed() < FRESH_FOR
    {
        return Ok(o.clone());
    }
    let window = Window {
        now: Timestamp::now(),
        length,
    };
    let rows = app.store.overview(window.since()).await?;
    let limits: Vec<_> = app
        .config
        .agents
        .snapshot()
        .iter()
        .map(|(name, agent)| (name.clone(), agent.max_concurrent))
        .collect();
    let built = Arc::new(overview::build(rows, window, &limits));
    last.retain(|(l, _, _)| *l != length);
    last.push((length, Instant::now(), built.clone()));
    Ok(built)
}

/// How many jobs a list filter matches, per state (`cursor` and `limit` aside).
#[utoipa::path(get, path = "/jobs/counts", tag = "jobs", params(JobQuery),
    responses(
        (status = 200, description = "The counts", body = JobCounts),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn counts(
    State(app): State<AppState>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobCounts>, ApiError> {
    let found = app
        .inner
        .store
        .count_jobs(super::jobs::job_filter(query)?)
        .await?;
    let counts: Vec<StateCount> = JobState::ALL
        .iter()
        .filter_map(|&state| {
            let count = found.iter().find(|(s, _)| *s == state)?.1;
            Some(StateCount { state, count })
        })
        .collect();
    Ok(Json(JobCounts {
        version: PAYLOAD_VERSION,
        total: counts.iter().map(|c| c.count).sum(),
        counts,
    }))
}
