//! The live parts of the dashboard, over Server-Sent Events.
//!
//! - `GET /ui/jobs/{id}/feed` is the API's own job event stream (`GET /jobs/{id}/events`: the
//!   store's history after `Last-Event-ID`, then the hub's wake-ups), behind the dashboard's
//!   session instead of a bearer token; the job page's script moves its progress bar and appends
//!   each progress message from it, and resumes where it left off when the browser reconnects.
//! - `GET /ui/feed` refreshes the overview and the unfiltered first page of the jobs list. Every
//!   open page reads one shared [`Live`] snapshot, taken at most once per [`TICK`] whoever
//!   asks (the overview itself comes from the API's cache, which coalesces the same way), so a
//!   wall of dashboards costs the store what one costs. Each connection sends a part only when
//!   its rendering changed, as HTML the page's script swaps in.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::Dashboard;
use super::pages::{LIVE_WINDOW, job_rows, overview_live};
use super::session::Viewer;
use crate::api::AppState;
use crate::api::jobs::page_of_jobs;
use crate::api::overview::overview_for;
use crate::contract::{JobSummary, Overview};
use crate::error::ApiError;
use crate::store::JobQuery;

/// How often a live page is brought up to date, and how long a snapshot is shared.
pub const TICK: Duration = Duration::from_secs(1);

/// The last snapshot the live feed took, shared by every open page.
#[derive(Default)]
pub(super) struct Live {
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

/// What the live parts show.
struct Snapshot {
    overview: Arc<Overview>,
    jobs: Vec<JobSummary>,
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/feed", get(feed))
        .route("/jobs/{job_id}/feed", get(crate::api::watch::sse))
}

/// The snapshot, taken again when it is older than [`TICK`].
async fn snapshot(app: &AppState, live: &Live) -> Result<Arc<Snapshot>, ApiError> {
    let inner = &app.inner;
    // Held across the reads: concurrent pages wait for one snapshot instead of each taking one.
    let mut last = live.last.lock().await;
    if let Some((at, snapshot)) = last.as_ref()
        && at.elapsed() < TICK
    {
        return Ok(Arc::clone(snapshot));
    }
    let overview = overview_for(inner, LIVE_WINDOW).await?;
    let filter = JobQuery::default()
        .into_filter()
        .map_err(|e| ApiError::invalid(crate::error::ErrorSource::Query, e))?;
    let (jobs, _) = page_of_jobs(inner, filter).await?;
    let fresh = Arc::new(Snapshot {
        overview,
        jobs: jobs.iter().map(|j| j.summary()).collect(),
    });
    *last = Some((Instant::now(), Arc::clone(&fresh)));
    Ok(fresh)
}

/// What one connection last sent of each part.
#[derive(Default)]
struct Sent {
    overview: String,
    jobs: String,
}

/// `GET /ui/feed`: `overview` and `jobs` events, each the part's HTML, whenever it changes.
async fn feed(
    State(app): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Extension(dashboard): Extension<Arc<Dashboard>>,
) -> Response {
    let shutdown = app.inner.shutdown.clone();
    let ticks = tokio::time::interval(TICK);
    let events = futures_util::stream::unfold(
        (app, viewer, dashboard, ticks, Sent::default()),
        |(app, viewer, dashboard, mut ticks, mut sent)| async move {
            ticks.tick().await;
            let mut events = Vec::new();
            match snapshot(&app, &dashboard.live).await {
                Ok(snapshot) => {
                    let overview = overview_live(&snapshot.overview).into_string();
                    if overview != sent.overview {
                        events.push(Event::default().event("overview").data(&overview));
                        sent.overview = overview;
                    }
                    let jobs = job_rows(&snapshot.jobs, &viewer).into_string();
                    if jobs != sent.jobs {
                        events.push(Event::default().event("jobs").data(&jobs));
                        sent.jobs = jobs;
                    }
                }
                // Logged where it happened; the page keeps what it shows and the next tick retries.
                Err(_) => events.push(Event::default().event("stale").data("")),
            }
            Some((
                futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)),
                (app, viewer, dashboard, ticks, sent),
            ))
        },
    )
    .flatten()
    .take_until(shutdown.cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
