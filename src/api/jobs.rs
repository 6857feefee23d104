//! `GET /jobs/{job_id}` (also `GET /status/{job_id}`, the design note's name for it),
//! `GET /jobs?state=&agent=&limit=` and `POST /jobs/{job_id}/cancel`.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::AppState;
use crate::contract::{
    CancelAccepted, FieldError, JobId, JobList, JobState, JobStatus, PAYLOAD_VERSION,
};
use crate::error::{ApiError, ErrorSource};
use crate::runner::{CancelError, CancelOutcome, output_uri};
use crate::store::JobQuery;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs", get(list))
        .route("/jobs/{job_id}", get(status))
        .route("/status/{job_id}", get(status))
        .route("/jobs/{job_id}/cancel", post(cancel))
}

/// Parses the `{job_id}` path segment.
pub(super) fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse().map_err(|e: crate::contract::IdError| {
        ApiError::invalid(
            ErrorSource::Path,
            vec![FieldError::new("/job_id", e.to_string())],
        )
    })
}

async fn status(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let app = &app.inner;
    let view = app
        .store
        .job_view(job_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::not_found(format!("no job {job_id}")))?;
    let uri = output_uri(
        &app.config.storage.output_uri_prefix,
        &app.shared_root,
        job_id,
    );
    Ok(Json(view.status(uri)))
}

async fn list(
    State(app): State<AppState>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(ErrorSource::Query, vec![FieldError::new("", e.body_text())])
    })?;
    let filter = query
        .into_filter()
        .map_err(|errors| ApiError::invalid(ErrorSource::Query, errors))?;
    let jobs = app
        .inner
        .store
        .list_jobs(filter)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(JobList {
        version: PAYLOAD_VERSION,
        jobs: jobs.iter().map(|j| j.summary()).collect(),
    }))
}

async fn cancel(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<(StatusCode, Json<CancelAccepted>), ApiError> {
    let job_id = parse_job_id(&job_id)?;
    let app = &app.inner;
    let (status, state) = match app.runner.cancel(job_id).await {
        Ok(CancelOutcome::Canceled) => (StatusCode::OK, JobState::Canceled),
        Ok(CancelOutcome::Stopping) => (StatusCode::ACCEPTED, JobState::InProgress),
        Err(e) => return Err(cancel_error(e)),
    };
    Ok((
        status,
        Json(CancelAccepted {
            version: PAYLOAD_VERSION,
            job_id,
            state,
            status_url: format!("{}/jobs/{job_id}", app.public_url),
        }),
    ))
}

/// The answer to a refused cancel (API and WebSocket alike).
pub(super) fn cancel_error(e: CancelError) -> ApiError {
    match e {
        CancelError::NotFound(id) => ApiError::not_found(format!("no job {id}")),
        CancelError::Ended { job_id, state } => ApiError::conflict(
            format!("job {job_id} has already ended ({state}); nothing to cancel"),
            state,
        ),
        CancelError::Store(e) => ApiError::internal(&e),
    }
}
