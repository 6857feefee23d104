//! Dead letters, visible and recoverable: `GET /deliveries`, `GET /deliveries/{id}`,
//! `POST /deliveries/{id}/redrive` and the bulk `POST /deliveries/redrive`.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::AppState;
use crate::contract::{
    DeliveryId, DeliveryList, DeliveryState, DeliveryStatus, FieldError, RedriveResult,
};
use crate::error::{ApiError, ErrorSource};
use crate::store::{DeliveryFilter, DeliveryQuery};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/deliveries", get(list))
        .route("/deliveries/redrive", post(redrive_matching))
        .route("/deliveries/{delivery_id}", get(one))
        .route("/deliveries/{delivery_id}/redrive", post(redrive_one))
}

fn filter(query: Result<Query<DeliveryQuery>, QueryRejection>) -> Result<DeliveryFilter, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::invalid(ErrorSource::Query, vec![FieldError::new("", e.body_text())])
    })?;
    query
        .into_filter()
        .map_err(|e| ApiError::invalid(ErrorSource::Query, e))
}

/// Lists deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(DeliveryQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn list(
    State(app): State<AppState>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<DeliveryList>, ApiError> {
    let deliveries = app.inner.store.list_deliveries(filter(query)?).await?;
    Ok(Json(DeliveryList { deliveries }))
}

/// One delivery with its attempts.
#[utoipa::path(get, path = "/deliveries/{delivery_id}", tag = "deliveries", params(("delivery_id" = crate::contract::DeliveryId, Path, description = "The delivery id (dlv_...)")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryStatus>, ApiError> {
    find(&app, id).await.map(Json)
}

async fn find(app: &AppState, id: String) -> Result<DeliveryStatus, ApiError> {
    let id: DeliveryId = id.parse().unwrap_or_else(|never| match never {});
    app.inner
        .store
        .delivery(id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no delivery {id}")))
}

/// Redrives one dead delivery; it keeps its delivery id.
/// Puts one dead delivery back in the outbox, with the same id.
#[utoipa::path(post, path = "/deliveries/{delivery_id}/redrive", tag = "deliveries", params(("delivery_id" = crate::contract::DeliveryId, Path, description = "The delivery id (dlv_...)")),
    responses(
        (status = 202, description = "Back in the outbox", body = RedriveResult),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 409, description = "Conflicts with the current state (`state`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn redrive_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
    let delivery = find(&app, id).await?;
    if delivery.state != DeliveryState::Dead {
        return Err(ApiError::conflict(
            format!(
                "delivery {} is {}, only dead deliveries are redriven",
                delivery.delivery_id,
                delivery.state.as_str()
            ),
            delivery.state.as_str(),
        ));
    }
    let filter = DeliveryFilter {
        id: Some(delivery.delivery_id),
        limit: 1,
        ..DeliveryFilter::default()
    };
    redrive(&app, filter).await
}

/// Redrives every dead delivery matching the query (`state`, if given, must be `dead`).
#[utoipa::path(post, path = "/deliveries/redrive", tag = "deliveries",
    // DeliveryQuery's filters, but `state` may only be `dead`: the document offers no value
    // the handler refuses.
    params(
        ("state" = Option<String>, Query, description = "Only `dead` (the default): only dead deliveries are redriven", pattern = "^dead$"),
        ("job_name" = Option<crate::contract::JobName>, Query, description = "Only deliveries of jobs with this handler"),
        ("destination" = Option<String>, Query, format = Uri, description = "Only deliveries to this origin, e.g. https://rails.internal:443"),
        ("since" = Option<crate::contract::Timestamp>, Query, description = "Only deliveries written at or after this RFC 3339 time"),
        ("until" = Option<crate::contract::Timestamp>, Query, description = "Only deliveries written before this RFC 3339 time"),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100, at most 1000)"),
    ),
    responses(
        (status = 202, description = "Every matching dead delivery is back in the outbox", body = RedriveResult),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn redrive_matching(
    State(app): State<AppState>,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
    let filter = filter(query)?;
    if filter.state.is_some_and(|s| s != DeliveryState::Dead) {
        return Err(ApiError::invalid(
            ErrorSource::Query,
            vec![FieldError::new(
                "/state",
                "only dead deliveries are redriven",
            )],
        ));
    }
    redrive(&app, filter).await
}

async fn redrive(
    app: &AppState,
    filter: DeliveryFilter,
) -> Result<(StatusCode, Json<RedriveResult>), ApiError> {
    let redriven = app.inner.store.redrive(filter).await?;
    if !redriven.is_empty() {
        tracing::info!(count = redriven.len(), "dead deliveries redriven");
        app.inner.deliveries.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(RedriveResult { redriven })))
}
