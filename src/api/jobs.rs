//! `GET /jobs/{job_id}` (also `GET /status/{job_id}`, the design note's name for it),
//! `GET /jobs?state=&agent=&…&cursor=&limit=` and `POST /jobs/{job_id}/cancel`.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::{AppState, Inner};
use crate::contract::{
    CancelAccepted, FieldError, JobId, JobList, JobState, JobStatus, NodeList, PAYLOAD_VERSION,
    RetryAccepted, RetryRequest, Timestamp,
};
use crate::error::{ApiError, ErrorSource};
use crate::jobdir::JobDir;
use crate::jobdir::output_uri;
use crate::runner::{CancelError, CancelOutcome};
use crate::store::{JobCursor, JobFilter, JobQuery, JobRecord, JobView};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/nodes", get(nodes))
        .route("/jobs/{job_id}", get(status))
        .route("/status/{job_id}", get(status_alias))
        .route("/jobs/{job_id}/cancel", post(cancel))
        .route("/jobs/{job_id}/retry", post(retry))
}

/// Parses the `{job_id}` path segment.
pub(crate) fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|e: crate::contract::IdError| {
        ApiError::invalid(
            ErrorSource::Path,
            vec![FieldError::new("/job_id", e.to_string())],
        )
    })
}

/// A job's status: state, transitions, last progress, outputs, completion delivery.
#[utoipa::path(get, path = "/jobs/{job_id}", tag = "jobs", params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn status(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let app = &app.inner;
    let view = job_view(app, job_id).await?;
    let uri = output_uri(
        &app.config.storage.output_uri_prefix,
        &app.shared_root,
        job_id,
    );
    Ok(Json(view.status(uri)))
}

/// The design note's name for `GET /jobs/{job_id}`.
#[utoipa::path(get, path = "/status/{job_id}", tag = "jobs", params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "The job", body = JobStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn status_alias(
    state: State<AppState>,
    path: Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    status(state, path).await
}

/// The job's record with its history; 404 naming it when there is none.
pub(crate) async fn job_view(app: &Inner, job_id: JobId) -> Result<JobView, ApiError> {
    app.store
        .job_view(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {job_id}")))
}

/// A job list's query string as a filter; each failure named by its field.
pub(super) fn job_filter(
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<JobFilter, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(ErrorSource::Query, vec![FieldError::new("", e.body_text())])
    })?;
    query
        .into_filter()
        .map_err(|errors| ApiError::invalid(ErrorSource::Query, errors))
}

/// Lists jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobQuery),
    responses(
        (status = 200, description = "The jobs", body = JobList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let (jobs, next) = page_of_jobs(&app.inner, job_filter(query)?).await?;
    Ok(Json(JobList {
        version: PAYLOAD_VERSION,
        jobs: jobs.iter().map(|j| j.summary()).collect(),
        next_cursor: next.map(|c| c.to_string()),
    }))
}

/// One page of the jobs `filter` matches, and the cursor of the next page if there is one.
pub(crate) async fn page_of_jobs(
    app: &Inner,
    filter: JobFilter,
) -> Result<(Vec<JobRecord>, Option<JobCursor>), ApiError> {
    let limit = filter.limit;
    // One more than asked tells whether a next page exists without a second query.
    let mut jobs = app
        .store
        .list_jobs(JobFilter {
            limit: limit + 1,
            ..filter
        })
        .await?;
    let more = jobs.len() > limit;
    jobs.truncate(limit);
    let next = more.then(|| jobs.last().map(JobCursor::after)).flatten();
    Ok((jobs, next))
}

/// Cancels a job: a queued or scheduled one at once (200), a running one's agent is stopped
/// (202).
#[utoipa::path(post, path = "/jobs/{job_id}/cancel", tag = "jobs", params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID")),
    responses(
        (status = 200, description = "It was queued or scheduled and is now canceled", body = CancelAccepted),
        (status = 202, description = "Its agent is being stopped; it ends canceled", body = CancelAccepted),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 409, description = "Conflicts with the current state (`state`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn cancel(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let accepted = cancel_job(&app.inner, job_id).await?;
    let status = match accepted.state {
        JobState::Canceled => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    Ok((status, Json(accepted)))
}

/// Cancels one job (the API, bulk actions and the dashboard alike).
pub(crate) async fn cancel_job(app: &Inner, job_id: JobId) -> Result<CancelAccepted, ApiError> {
    let state = match app.runner.cancel(job_id).await {
        Ok(CancelOutcome::Canceled) => JobState::Canceled,
        Ok(CancelOutcome::Stopping) => JobState::InProgress,
        Err(e) => return Err(cancel_error(e)),
    };
    Ok(CancelAccepted {
        version: PAYLOAD_VERSION,
        job_id,
        state,
        status_url: format!("{}/jobs/{job_id}", app.public_url),
    })
}

/// Re-runs a job that ended `failed`, `timed_out` or `canceled` (or, with `force`,
/// `completed`/`partial`) as its next attempt: the same job id and folder, the ended attempt's
/// `output/` moved aside to `output.attempt-<n>/` first, then the job queued again as if just
/// accepted; its completion gets a new delivery id.
#[utoipa::path(post, path = "/jobs/{job_id}/retry", tag = "jobs", params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID")),
    request_body(content = Option<RetryRequest>, description = "Optional; `{\"force\": true}` re-runs a completed job too"),
    responses(
        (status = 202, description = "Queued again as its next attempt", body = RetryAccepted),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 409, description = "Conflicts with the current state (`state`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn retry(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RetryAccepted>), ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let request = retry_request(&body)?;
    let accepted = rerun_job(&app.inner, job_id, request.force).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Re-runs one job as its next attempt (the API, bulk actions and the dashboard alike).
pub(crate) async fn rerun_job(
    app: &Inner,
    job_id: JobId,
    force: bool,
) -> Result<RetryAccepted, ApiError> {
    let job = app
        .store
        .job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {job_id}")))?;
    if !job.state.can_rerun(force) {
        return Err(rerun_refused(job_id, job.state));
    }
    // Aside before the job is queued: no attempt of it can be writing `output/` now.
    let (shared_root, modes, attempt) = (
        app.shared_root.clone(),
        app.config.storage.modes,
        job.attempt,
    );
    let moved = tokio::task::spawn_blocking(move || {
        JobDir::open(&shared_root, job_id, modes)?.set_aside_output(attempt)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| {
        ApiError::conflict(
            format!("job {job_id}: cannot move output/ aside ({e}); not re-run"),
            job.state,
        )
    })?;
    let at = Timestamp::now();
    let key = job
        .priority
        .schedule_key(at, app.config.jobs.priority_aging);
    match app
        .store
        .rerun(job_id, job.state, job.attempt, at, key)
        .await
    {
        Ok(()) => {}
        Err(crate::store::StoreError::Stale { .. }) => {
            let now = app.store.job(job_id).await?.map_or(job.state, |j| j.state);
            return Err(rerun_refused(job_id, now));
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(job.id = %job_id, attempt = job.attempt + 1, "job {job_id} queued again as attempt {}", job.attempt + 1);
    app.runner.wake();
    Ok(RetryAccepted {
        version: PAYLOAD_VERSION,
        job_id,
        state: JobState::Queued,
        attempt: job.attempt + 1,
        previous_output: moved.then(|| format!("output.attempt-{}", job.attempt)),
        status_url: format!("{}/jobs/{job_id}", app.public_url),
    })
}

fn retry_request(body: &[u8]) -> Result<RetryRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RetryRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            ErrorSource::Request,
            vec![FieldError::new("", e.to_string())],
        )
    })
}

fn rerun_refused(job_id: JobId, state: JobState) -> ApiError {
    let detail = match state {
        JobState::Completed | JobState::Partial => {
            format!("job {job_id} is {state}; re-run it with {{\"force\": true}}")
        }
        JobState::Received | JobState::Queued | JobState::Scheduled | JobState::InProgress => {
            format!(
                "job {job_id} is {state}; only a job that ended failed, timed_out or canceled is re-run"
            )
        }
        _ => format!("job {job_id} is {state} now; not re-run"),
    };
    ApiError::conflict(detail, state)
}

/// The answer to a refused cancel (API and WebSocket alike).
pub(super) fn cancel_error(e: CancelError) -> ApiError {
    match e {
        CancelError::NotFound(id) => ApiError::not_found(format!("no job {id}")),
        CancelError::Ended { job_id, state } => ApiError::conflict(
            format!("job {job_id} has already ended ({state}); nothing to cancel"),
            state,
        ),
        CancelError::Store(e) => e.into(),
    }
}

/// The live nodes of the fleet: their agents, running jobs and last heartbeat.
#[utoipa::path(get, path = "/nodes", tag = "jobs",
    responses(
        (status = 200, description = "The live nodes", body = NodeList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn nodes(State(app): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let since = Timestamp::now().minus(app.inner.config.store.lease);
    let nodes = app.inner.store.nodes(since).await?;
    Ok(Json(NodeList {
        version: PAYLOAD_VERSION,
        nodes,
    }))
}
