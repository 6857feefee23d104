//! Watching a job: `GET /jobs/{job_id}/events` (Server-Sent Events) and
//! `GET /jobs/{job_id}/watch` (WebSocket).
//!
//! Both replay the job's stored history after a cursor (`Last-Event-ID`, or `?after=`), then
//! follow it live, and end after the terminal event. Every watcher reads the history from the
//! store itself, woken by the store's hub, so watchers share nothing and an agent never waits
//! for one. A watcher holds at most one page of events plus its socket's send buffer; one that
//! stops reading is disconnected by the listener's write timeout and resumes from its last
//! `seq`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::jobs::{cancel_error, parse_job_id};
use crate::contract::{EventData, FieldError, JobEvent, JobId};
use crate::error::{ApiError, ErrorSource};
use crate::runner::CancelOutcome;
use crate::store::{JobRecord, Store, StoreError};

/// Events read from the store at once.
const PAGE: usize = 256;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{job_id}/events", get(sse))
        .route("/jobs/{job_id}/watch", get(websocket))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Cursor {
    /// Resume after this `seq` (the WebSocket's `Last-Event-ID`).
    after: Option<u64>,
}

/// Where a watcher starts: after `Last-Event-ID`, or `?after=`, or from the beginning.
fn cursor(
    headers: &HeaderMap,
    query: Result<Query<Cursor>, QueryRejection>,
) -> Result<u64, ApiError> {
    // An empty Last-Event-ID is no cursor: what the SSE spec's EventSource holds before it has
    // seen an id.
    let last_event_id = headers
        .get("last-event-id")
        .filter(|v| !v.as_bytes().trim_ascii().is_empty());
    if let Some(value) = last_event_id {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    ErrorSource::Header,
                    vec![FieldError::new(
                        "/Last-Event-ID",
                        "must be the seq of an event",
                    )],
                )
            });
    }
    let Query(cursor) = query.map_err(|e| {
        ApiError::invalid(
            ErrorSource::Query,
            vec![FieldError::new("/after", e.body_text())],
        )
    })?;
    Ok(cursor.after.unwrap_or(0))
}

async fn open(app: &AppState, id: &str) -> Result<JobRecord, ApiError> {
    let job_id = parse_job_id(id)?;
    app.inner
        .store
        .job(job_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {job_id}")))
}

/// Whether a watcher resuming after `after` has nothing left to get: the job has ended and
/// its last event is at or before the cursor.
async fn nothing_more(app: &AppState, job: &JobRecord, after: u64) -> Result<bool, ApiError> {
    if !job.state.is_terminal() {
        return Ok(false);
    }
    let rest = app.inner.store.events_after(job.job_id, after, 1).await?;
    Ok(rest.is_empty())
}

/// Server-Sent Events: the job's history after the cursor, then live events, closing after
/// the terminal event (`id:` is the seq, `data:` a job-event document).
#[utoipa::path(get, path = "/jobs/{job_id}/events", tag = "watch", params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID"), ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Resume after this seq (empty: from the start)", pattern = "^[0-9]{0,19}$"), Cursor),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 204, description = "The job has ended and nothing follows the cursor"),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(crate) async fn sse(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Cursor>, QueryRejection>,
) -> Result<Response, ApiError> {
    let after = cursor(&headers, query)?;
    let job = open(&app, &id).await?;
    // 204 tells an EventSource that reconnects after the end to stop reconnecting.
    if nothing_more(&app, &job, after).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let job_id = job.job_id;
    let events = history(
        Arc::clone(&app.inner.store),
        job_id,
        after,
        app.inner.shutdown.clone(),
    )
    .map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(event) => sse_event(&event),
            Err(e) => {
                tracing::error!(error = %e, "cannot read job events");
                Event::default()
                    .event("error")
                    .data("cannot read the job's events; reconnect with Last-Event-ID")
            }
        })
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn sse_event(event: &JobEvent) -> Event {
    let kind = match event.data {
        EventData::State { .. } => "state",
        EventData::Progress { .. } => "progress",
    };
    let data = serde_json::to_string(event).unwrap_or_default();
    Event::default()
        .id(event.seq.to_string())
        .event(kind)
        .data(data)
}

/// WebSocket: the same events as JSON messages; `{"signal":"STOP"}` cancels the job.
#[utoipa::path(get, path = "/jobs/{job_id}/watch", tag = "watch",
    params(("job_id" = crate::contract::JobId, Path, description = "The job's UUID"), Cursor,
        ("Upgrade" = String, Header, description = "`websocket`", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("Connection" = String, Header, description = "`Upgrade`", pattern = "^[Uu][Pp][Gg][Rr][Aa][Dd][Ee]$"),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes, base64 (RFC 6455)", pattern = "^[A-Za-z0-9+/]{22}==$"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`", pattern = "^13$")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade, or malformed", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 401, description = "Not authenticated (reason in `reason`)", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 404, description = "No such resource", content_type = "application/problem+json", body = crate::error::Problem),
        (status = 422, description = "A field is invalid (each named in `errors`)", content_type = "application/problem+json", body = crate::error::Problem)
    ),
    security((), ("bearer" = [])))]
pub(super) async fn websocket(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<Cursor>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let after = cursor(&headers, query)?;
    let upgrade = upgrade.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let job_id = open(&app, &id).await?.job_id;
    Ok(upgrade.on_upgrade(move |socket| serve_watcher(app, job_id, after, socket)))
}

/// A message from a WebSocket watcher.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    signal: Signal,
}

#[derive(Debug, Deserialize)]
enum Signal {
    #[serde(rename = "STOP")]
    Stop,
}

/// What the sidecar says to a WebSocket watcher besides events.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply {
    /// The outcome of a `STOP`.
    Signal {
        signal: &'static str,
        outcome: String,
    },
    /// A message the sidecar could not take.
    Error { detail: String },
}

async fn serve_watcher(app: AppState, job_id: JobId, after: u64, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let events = history(
        Arc::clone(&app.inner.store),
        job_id,
        after,
        app.inner.shutdown.clone(),
    );
    tokio::pin!(events);
    loop {
        tokio::select! {
            item = events.next() => {
                let message = match item {
                    Some(Ok(event)) => Message::Text(serde_json::to_string(&event).unwrap_or_default().into()),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "cannot read job events");
                        close(1011, "cannot read the job's events; reconnect with ?after=")
                    }
                    // 1012: the sidecar restarts; the job goes on, resume with ?after=.
                    None if app.inner.shutdown.is_cancelled() => close(1012, "sidecar stopping; reconnect with ?after="),
                    None => close(1000, "job ended"),
                };
                let last = matches!(message, Message::Close(_));
                if tx.send(message).await.is_err() || last {
                    return;
                }
            }
            incoming = rx.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                let reply = handle(&app, job_id, text.as_str()).await;
                let reply = Message::Text(serde_json::to_string(&reply).unwrap_or_default().into());
                if tx.send(reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

async fn handle(app: &AppState, job_id: JobId, text: &str) -> Reply {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return Reply::Error {
                detail: format!("expected {{\"signal\":\"STOP\"}}: {e}"),
            };
        }
    };
    match message.signal {
        Signal::Stop => {
            let outcome = match app.inner.runner.cancel(job_id).await {
                Ok(CancelOutcome::Canceled) => "canceled".to_owned(),
                Ok(CancelOutcome::Stopping) => "stopping".to_owned(),
                Err(e) => cancel_error(e).detail().to_owned(),
            };
            Reply::Signal {
                signal: "STOP",
                outcome,
            }
        }
    }
}

/// Where a watcher is in a job's history.
struct Follow {
    store: Arc<dyn Store>,
    job_id: JobId,
    changed: watch::Receiver<()>,
    cursor: u64,
    page: VecDeque<JobEvent>,
    checked_end: bool,
    /// The job was seen terminal: once a read after that finds nothing, the history is whole.
    job_over: bool,
    ended: bool,
    shutdown: CancellationToken,
}

/// The job's events after `after`, then live ones as they are stored; ends after the terminal
/// event, or on shutdown.
fn history(
    store: Arc<dyn Store>,
    job_id: JobId,
    after: u64,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<JobEvent, StoreError>> + Send {
    // Subscribed before the first read, so nothing stored after that read is missed.
    let changed = store.subscribe(job_id);
    let follow = Follow {
        store,
        job_id,
        changed,
        cursor: after,
        page: VecDeque::new(),
        checked_end: false,
        job_over: false,
        ended: false,
        shutdown,
    };
    futures_util::stream::unfold(follow, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    })
}

impl Follow {
    async fn next(&mut self) -> Option<Result<JobEvent, StoreError>> {
        loop {
            if let Some(event) = self.page.pop_front() {
                self.cursor = event.seq;
                self.ended = event.is_terminal();
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            match self
                .store
                .events_after(self.job_id, self.cursor, PAGE)
                .await
            {
                Ok(events) if !events.is_empty() => self.page.extend(events),
                Ok(_) => {
                    if self.job_over {
                        return None;
                    }
                    if !self.checked_end {
                        // Caught up: if the job has ended (resumed after its terminal event,
                        // or pruned), one more read, made after this check, gets whatever
                        // ended it; then nothing more will come.
                        self.checked_end = true;
                        match self.store.job(self.job_id).await {
                            Ok(Some(job)) if !job.state.is_terminal() => {}
                            Ok(_) => self.job_over = true,
                            Err(e) => return Some(Err(e)),
                        }
                        continue;
                    }
                    tokio::select! {
                        changed = self.changed.changed() => changed.ok()?,
                        () = self.shutdown.cancelled() => return None,
                    }
                }
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
