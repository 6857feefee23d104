//! `GET /jobs/{job_id}` (also `GET /status/{job_id}`, the design note's name for it).

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;

use super::AppState;
use crate::contract::{FieldError, JobId, JobStatus};
use crate::error::{ApiError, ErrorSource};
use crate::runner::output_uri;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{job_id}", get(status))
        .route("/status/{job_id}", get(status))
}

async fn status(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    let job_id: JobId = job_id.parse().map_err(|e: crate::contract::IdError| {
        ApiError::invalid(
            ErrorSource::Path,
            vec![FieldError::new("/job_id", e.to_string())],
        )
    })?;
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
