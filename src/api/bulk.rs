//! `POST /jobs/bulk/cancel` and `POST /jobs/bulk/retry`: one action over a selection of jobs
//! (the dashboard's bulk buttons), each job taken exactly as its one-job endpoint takes it.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::jobs::{cancel_job, rerun_job};
use super::{AppState, Inner};
use crate::contract::{
    BulkItem, BulkRequest, BulkResult, FieldError, JobId, JobState, PAYLOAD_VERSION,
};
use crate::error::{ApiError, ErrorSource};

/// The most jobs one bulk request names.
pub const MAX_BULK: usize = 1000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/bulk/cancel", post(cancel))
        .route("/jobs/bulk/retry", post(retry))
}

/// Cancels each job named.
#[utoipa::path(post, path = "/jobs/bulk/cancel", tag = "jobs", request_body = BulkRequest,
    responses(
        (status = 200, description = "Each job's outcome, in request order", body = BulkResult),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn cancel(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<BulkResult>, ApiError> {
    let request = parse(&body)?;
    Ok(Json(cancel_each(&app.inner, &request.job_ids).await))
}

/// Re-runs each job named as its next attempt.
#[utoipa::path(post, path = "/jobs/bulk/retry", tag = "jobs", request_body = BulkRequest,
    responses(
        (status = 200, description = "Each job's outcome, in request order", body = BulkResult),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn retry(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<BulkResult>, ApiError> {
    let request = parse(&body)?;
    Ok(Json(
        rerun_each(&app.inner, &request.job_ids, request.force).await,
    ))
}

/// Cancels each of `job_ids`.
pub(crate) async fn cancel_each(app: &Inner, job_ids: &[JobId]) -> BulkResult {
    let mut items = Vec::with_capacity(job_ids.len());
    for &job_id in job_ids {
        let outcome = cancel_job(app, job_id).await.map(|a| {
            let status = match a.state {
                JobState::Canceled => StatusCode::OK,
                _ => StatusCode::ACCEPTED,
            };
            (status, a.state)
        });
        items.push(item(job_id, outcome));
    }
    result(items)
}

/// Re-runs each of `job_ids`.
pub(crate) async fn rerun_each(app: &Inner, job_ids: &[JobId], force: bool) -> BulkResult {
    let mut items = Vec::with_capacity(job_ids.len());
    for &job_id in job_ids {
        let outcome = rerun_job(app, job_id, force)
            .await
            .map(|a| (StatusCode::ACCEPTED, a.state));
        items.push(item(job_id, outcome));
    }
    result(items)
}

fn item(job_id: JobId, outcome: Result<(StatusCode, JobState), ApiError>) -> BulkItem {
    match outcome {
        Ok((status, state)) => BulkItem {
            job_id,
            status: status.as_u16(),
            state: Some(state),
            detail: None,
        },
        Err(e) => BulkItem {
            job_id,
            status: e.status().as_u16(),
            state: None,
            detail: Some(e.detail().to_owned()),
        },
    }
}

fn result(results: Vec<BulkItem>) -> BulkResult {
    let done = results.iter().filter(|i| i.state.is_some()).count();
    BulkResult {
        version: PAYLOAD_VERSION,
        done: u32::try_from(done).unwrap_or(u32::MAX),
        refused: u32::try_from(results.len() - done).unwrap_or(u32::MAX),
        results,
    }
}

fn parse(body: &[u8]) -> Result<BulkRequest, ApiError> {
    let request: BulkRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            ErrorSource::Request,
            vec![FieldError::new("", e.to_string())],
        )
    })?;
    if !(1..=MAX_BULK).contains(&request.job_ids.len()) {
        return Err(ApiError::invalid(
            ErrorSource::Request,
            vec![FieldError::new(
                "/job_ids",
                format!("must name 1 to {MAX_BULK} jobs"),
            )],
        ));
    }
    Ok(request)
}
