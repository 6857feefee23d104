//! Dead letters, visible and recoverable: `GET /deliveries`, `GET /deliveries/{id}`,
//! `POST /deliveries/{id}/redrive` and the bulk `POST /deliveries/redrive`; and a pending
//! delivery sent at once instead of at its next scheduled attempt:
//! `POST /deliveries/{id}/deliver`.

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::{AppState, Inner};
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
        .route("/deliveries/{delivery_id}/deliver", post(deliver_one))
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
    find(&app.inner, id).await.map(Json)
}

/// One delivery by its id (the API and the dashboard alike).
pub(crate) async fn find(app: &Inner, id: String) -> Result<DeliveryStatus, ApiError> {
    let id: DeliveryId = id.parse().unwrap_or_else(|never| match never {});
    app.store
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
    let result = redrive_delivery(&app.inner, id).await?;
    Ok((StatusCode::ACCEPTED, Json(result)))
}

/// Puts one dead delivery back in the outbox (the API and the dashboard alike).
pub(crate) async fn redrive_delivery(app: &Inner, id: String) -> Result<RedriveResult, ApiError> {
    let delivery = find(app, id).await?;
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
    redrive(app, filter).await
}

/// Sends a pending delivery at once instead of at its next scheduled attempt.
///
/// Its next attempt becomes due now and the outbox worker of the node that answers is woken;
/// it claims the delivery through the same lease as every attempt, so in a fleet one node
/// makes it. An attempt already in flight keeps its lease: that attempt is the one made now,
/// and its outcome sets the next time as usual (never two attempts at once). While the
/// destination's circuit breaker is open the attempt is held like any other. A dead delivery
/// is refused (409): redrive it, which also restarts its age limit.
#[utoipa::path(post, path = "/deliveries/{delivery_id}/deliver", tag = "deliveries", params(("delivery_id" = crate::contract::DeliveryId, Path, description = "The delivery id (dlv_...)")),
    responses(
        (status = 202, description = "Due now; the outbox attempts it at once", body = DeliveryStatus),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 409, description = "Conflicts with the current state (`state`: delivered, or dead, which is redriven instead)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn deliver_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeliveryStatus>), ApiError> {
    let delivery = deliver_now(&app.inner, id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

/// Makes a pending delivery's next attempt due now (the API and the dashboard alike).
pub(crate) async fn deliver_now(app: &Inner, id: String) -> Result<DeliveryStatus, ApiError> {
    let id: DeliveryId = id.parse().unwrap_or_else(|never| match never {});
    let brought_forward = app
        .store
        .deliver_now(&id, crate::contract::Timestamp::now())
        .await?;
    let delivery = find(app, id.to_string()).await?;
    // Pending yet not brought forward: a redrive made it pending (and due now) meanwhile.
    if !brought_forward && delivery.state != DeliveryState::Pending {
        return Err(not_deliverable(&delivery));
    }
    tracing::info!(delivery.id = %delivery.delivery_id, job_id = %delivery.job_id, "delivery {} due now", delivery.delivery_id);
    app.deliveries.wake();
    Ok(delivery)
}

/// Why a delivery that is not pending is not sent again.
fn not_deliverable(delivery: &DeliveryStatus) -> ApiError {
    let id = &delivery.delivery_id;
    let state = delivery.state.as_str();
    let detail = match delivery.state {
        DeliveryState::Dead => format!(
            "delivery {id} is dead; redrive it (POST /deliveries/{id}/redrive) to send it again"
        ),
        _ => format!("delivery {id} is {state}; only pending deliveries are delivered now"),
    };
    ApiError::conflict(detail, state)
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
    let result = redrive_matching_filter(&app.inner, filter(query)?).await?;
    Ok((StatusCode::ACCEPTED, Json(result)))
}

/// Redrives every dead delivery `filter` matches (the API and the dashboard alike).
pub(crate) async fn redrive_matching_filter(
    app: &Inner,
    filter: DeliveryFilter,
) -> Result<RedriveResult, ApiError> {
    if filter.state.is_some_and(|s| s != DeliveryState::Dead) {
        return Err(ApiError::invalid(
            ErrorSource::Query,
            vec![FieldError::new(
                "/state",
                "only dead deliveries are redriven",
            )],
        ));
    }
    redrive(app, filter).await
}

async fn redrive(app: &Inner, filter: DeliveryFilter) -> Result<RedriveResult, ApiError> {
    let redriven = app.store.redrive(filter).await?;
    if !redriven.is_empty() {
        tracing::info!(count = redriven.len(), "dead deliveries redriven");
        app.deliveries.wake();
    }
    Ok(RedriveResult { redriven })
}
