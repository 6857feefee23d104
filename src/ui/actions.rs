//! The dashboard's actions: HTML form POSTs that call the functions the JSON API's handlers
//! call (`cancel_job`, `rerun_job`, the bulk loops, redrive, deliver now), then redirect (303)
//! to the form's `back` page with a `notice` saying what happened. A refusal (a job already
//! ended, a delivery not dead) is a notice too: the page is where the operator reads it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Redirect;
use axum::routing::post;

use super::pages::parse_pairs;
use super::session::CSRF_FIELD;
use crate::api::AppState;
use crate::api::bulk::{MAX_BULK, cancel_each, rerun_each};
use crate::api::deliveries::{deliver_now, redrive_delivery, redrive_matching_filter};
use crate::api::jobs::{cancel_job, parse_job_id, rerun_job};
use crate::contract::{BulkResult, FieldError, JobId};
use crate::error::{ApiError, ErrorSource};
use crate::store::DeliveryQuery;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/bulk", post(bulk))
        .route("/jobs/{job_id}/cancel", post(cancel))
        .route("/jobs/{job_id}/rerun", post(rerun))
        .route("/deliveries/redrive", post(redrive_all))
        .route("/deliveries/{delivery_id}/redrive", post(redrive_one))
        .route("/deliveries/{delivery_id}/deliver", post(deliver_one))
}

/// A submitted form's fields, in order (a field may repeat, as the jobs list's checkboxes do).
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        serde_urlencoded::from_bytes(body).map(Self).map_err(|e| {
            ApiError::invalid(
                ErrorSource::Request,
                vec![FieldError::new("", e.to_string())],
            )
        })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v == "true" || v == "on")
    }

    /// Where to go afterwards: the form's `back` if it is a dashboard path, else `fallback`.
    /// Only paths under `/ui` are followed, so a forged form cannot send the browser away.
    fn back(&self, fallback: &str) -> String {
        match self.get("back") {
            Some(back)
                if (back == "/ui" || back.starts_with("/ui/") || back.starts_with("/ui?"))
                    && !back.contains(['\\', '\r', '\n']) =>
            {
                back.to_owned()
            }
            _ => fallback.to_owned(),
        }
    }
}

/// A 303 to `back` with `notice` on its query string.
fn done(back: &str, notice: &str) -> Redirect {
    let sep = if back.contains('?') { '&' } else { '?' };
    let notice: String = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect();
    Redirect::to(&format!("{back}{sep}notice={notice}"))
}

/// The notice of an outcome: what was done, or why it was refused.
fn notice<T>(outcome: Result<T, ApiError>, said: impl FnOnce(T) -> String) -> String {
    match outcome {
        Ok(value) => said(value),
        Err(e) => format!("Refused: {}", e.detail()),
    }
}

async fn cancel(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    body: Bytes,
) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let job_id = parse_job_id(&job_id)?;
    let back = form.back(&format!("/ui/jobs/{job_id}"));
    let outcome = cancel_job(&app.inner, job_id).await;
    Ok(done(
        &back,
        &notice(outcome, |a| {
            format!("Cancel requested: job {job_id} is {}", a.state)
        }),
    ))
}

async fn rerun(
    State(app): State<AppState>,
    Path(job_id): Path<String>,
    body: Bytes,
) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let job_id = parse_job_id(&job_id)?;
    let back = form.back(&format!("/ui/jobs/{job_id}"));
    let outcome = rerun_job(&app.inner, job_id, form.flag("force")).await;
    Ok(done(
        &back,
        &notice(outcome, |a| {
            format!("Job {job_id} queued again as attempt {}", a.attempt)
        }),
    ))
}

async fn bulk(State(app): State<AppState>, body: Bytes) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let back = form.back("/ui/jobs");
    let ids: Vec<JobId> = form
        .0
        .iter()
        .filter(|(k, _)| k == "job_id")
        .map(|(_, v)| parse_job_id(v))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(done(&back, "Select at least one job first."));
    }
    if ids.len() > MAX_BULK {
        return Ok(done(&back, &format!("At most {MAX_BULK} jobs at a time.")));
    }
    let (verb, result): (&str, BulkResult) = match form.get("action") {
        Some("cancel") => ("Cancel", cancel_each(&app.inner, &ids).await),
        Some("rerun") => (
            "Re-run",
            rerun_each(&app.inner, &ids, form.flag("force")).await,
        ),
        _ => {
            return Err(ApiError::invalid(
                ErrorSource::Request,
                vec![FieldError::new("/action", "must be cancel or rerun")],
            ));
        }
    };
    let mut text = format!("{verb}: {} done, {} refused", result.done, result.refused);
    for item in result.results.iter().filter(|i| i.state.is_none()) {
        if let Some(detail) = &item.detail {
            text.push_str("; ");
            text.push_str(detail);
        }
    }
    Ok(done(&back, &text))
}

async fn redrive_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let back = form.back("/ui/deliveries");
    let outcome = redrive_delivery(&app.inner, id.clone()).await;
    Ok(done(
        &back,
        &notice(outcome, |_| format!("Delivery {id} is back in the outbox")),
    ))
}

async fn deliver_one(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let back = form.back("/ui/deliveries");
    let outcome = deliver_now(&app.inner, id.clone()).await;
    Ok(done(
        &back,
        &notice(outcome, |_| format!("Delivery {id} is due now")),
    ))
}

/// Redrives every dead delivery the form's filters (the list's) match.
async fn redrive_all(State(app): State<AppState>, body: Bytes) -> Result<Redirect, ApiError> {
    let form = Form::parse(&body)?;
    let back = form.back("/ui/deliveries");
    let filters: Vec<(String, String)> = form
        .0
        .iter()
        .filter(|(k, v)| k != "back" && k != CSRF_FIELD && !v.is_empty())
        .cloned()
        .collect();
    let query: DeliveryQuery = parse_pairs(&filters)?;
    let filter = query
        .into_filter()
        .map_err(|e| ApiError::invalid(ErrorSource::Request, e))?;
    let outcome = redrive_matching_filter(&app.inner, filter).await;
    Ok(done(
        &back,
        &notice(outcome, |r| {
            format!("{} dead deliveries back in the outbox", r.redriven.len())
        }),
    ))
}
