//! The dashboard's pages: Overview (`/ui`), Jobs (`/ui/jobs`), Job (`/ui/jobs/{id}`) and
//! Deliveries (`/ui/deliveries`). Each reads through the functions the JSON API's handlers
//! use, so a page shows exactly what the API would answer.

use std::io::{Read, Seek, SeekFrom};

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Extension, Router};
use maud::{DOCTYPE, Markup, html};
use serde::Serialize;
use serde_json::Value;

use super::assets::{CSS, JS};
use super::redact::redact;
use super::session::{CSRF_FIELD, Viewer};
use crate::api::AppState;
use crate::api::jobs::{job_view, page_of_jobs, parse_job_id};
use crate::api::overview::{OverviewQuery, overview_for};
use crate::contract::{
    DeliveryState, DeliveryStatus, FieldError, JobId, JobState, JobSummary, Overview,
    OverviewBucket, Timestamp,
};
use crate::error::{ApiError, ErrorSource};
use crate::jobdir::{JobDir, JobDirError, output_uri};
use crate::store::{DeliveryQuery, JobCursor, JobQuery};

/// The overview window the live feed follows (the page's default).
pub(super) const LIVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// How much of the end of `log.txt` and `error.log` the job page shows.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// The largest `metrics.json` the job page renders.
const METRICS_MAX_BYTES: u64 = 64 * 1024;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{job_id}", get(job))
        // A job's files, as the API serves them, behind the dashboard's session (the cookie is
        // sent only under /ui) and its CSP (an HTML artifact cannot run script).
        .route(
            "/jobs/{job_id}/artifacts/{*path}",
            get(crate::api::artifacts::artifact),
        )
        .route(
            "/jobs/{job_id}/output/{name}",
            get(crate::api::artifacts::output_file),
        )
        .route("/deliveries", get(deliveries))
}

/// The pages, for the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Overview,
    Jobs,
    Deliveries,
}

/// The frame of every page: head, navigation, who is logged in, the notice an action left,
/// the content.
pub(super) fn layout(
    title: &str,
    nav: Option<Nav>,
    viewer: Option<&Viewer>,
    notice: Option<&str>,
    content: Markup,
) -> Markup {
    let link = |href: &str, label: &str, page: Nav| {
        html! {
            a href=(href) aria-current=[(Some(page) == nav).then_some("page")] { (label) }
        }
    };
    let who = viewer.and_then(|v| v.subject.as_ref());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · agent-sidecar" }
                // No icon to fetch: the browser would ask for /favicon.ico, outside /ui.
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(CSS.path);
                script src=(JS.path) defer {}
            }
            body {
                header {
                    span.brand { "agent-sidecar" }
                    nav aria-label="Pages" {
                        (link("/ui", "Overview", Nav::Overview))
                        (link("/ui/jobs", "Jobs", Nav::Jobs))
                        (link("/ui/deliveries", "Deliveries", Nav::Deliveries))
                    }
                    @if let Some((subject, role)) = who {
                        span.who { (subject) " (" (role.as_str()) ")" }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = notice {
                        p.notice role="status" { (notice) }
                    }
                    (content)
                }
            }
        }
    }
}

/// A query string's or form's fields, in order.
pub(super) type Pairs = Vec<(String, String)>;

/// A query string's pairs, without empty values (an empty form field means "any") and
/// without `notice` (the message an action redirected with), and that notice.
fn form_query(raw: Option<&str>) -> Result<(Pairs, Option<String>), ApiError> {
    let pairs: Pairs =
        serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| invalid_query(e.to_string()))?;
    let mut notice = None;
    let mut kept = Vec::new();
    for (key, value) in pairs {
        if key == "notice" {
            notice = Some(value);
        } else if !value.is_empty() {
            kept.push((key, value));
        }
    }
    Ok((kept, notice))
}

/// Deserialises `pairs` into one of the API's query types.
pub(super) fn parse_pairs<T: serde::de::DeserializeOwned>(
    pairs: &[(String, String)],
) -> Result<T, ApiError> {
    let text = serde_urlencoded::to_string(pairs).map_err(|e| invalid_query(e.to_string()))?;
    serde_urlencoded::from_str(&text).map_err(|e| invalid_query(e.to_string()))
}

fn invalid_query(detail: String) -> ApiError {
    ApiError::invalid(ErrorSource::Query, vec![FieldError::new("", detail)])
}

/// The value of `key` among `pairs`, or "".
fn value_of<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// How serde writes `value` (a unit enum's wire name).
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The hidden CSRF field every POST form carries.
fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf); }
}

fn state_badge(state: JobState) -> Markup {
    html! { span class={ "badge state-" (state.as_str()) } { (state.as_str()) } }
}

fn delivery_badge(state: DeliveryState) -> Markup {
    html! { span class={ "badge delivery-" (state.as_str()) } { (state.as_str()) } }
}

fn time(at: Option<Timestamp>) -> Markup {
    html! {
        @match at {
            Some(at) => time datetime=(at) { (at) },
            None => "—",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Overview

async fn overview(
    State(app): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ApiError> {
    let (pairs, notice) = form_query(raw.as_deref())?;
    let query: OverviewQuery = parse_pairs(&pairs)?;
    let length = query
        .length()
        .map_err(|e| ApiError::invalid(ErrorSource::Query, vec![e]))?;
    let app = &app.inner;
    let overview = overview_for(app, length).await?;
    let nodes = app
        .store
        .nodes(Timestamp::now().minus(app.config.store.lease))
        .await?;
    let window = query.window.as_deref().unwrap_or("1h");
    // The live feed follows the default window, the one every open page shares.
    let live = length == LIVE_WINDOW;
    let content = html! {
        form.filters method="get" action="/ui" {
            label { "Window "
                select name="window" {
                    @for w in ["15m", "1h", "6h", "24h", "7d"] {
                        option value=(w) selected[w == window] { (w) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        div data-live=[live.then_some("overview")] { (overview_live(&overview)) }
        h2 { "Nodes" }
        div.scroll { table {
            thead { tr {
                th scope="col" { "Node" }
                th scope="col" { "Agents" }
                th scope="col" { "Running / max" }
                th scope="col" { "Started" }
                th scope="col" { "Last heartbeat" }
            } }
            tbody {
                @for node in &nodes {
                    tr {
                        th scope="row" { (node.node_id) }
                        td { @for (i, a) in node.agents.iter().enumerate() { @if i > 0 { ", " } (a.as_str()) } }
                        td { (node.running) " / " (node.max_concurrent) }
                        td { (time(Some(node.started_at))) }
                        td { (time(Some(node.last_heartbeat))) }
                    }
                }
            }
        } }
    };
    Ok(layout(
        "Overview",
        Some(Nav::Overview),
        Some(&viewer),
        notice.as_deref(),
        content,
    ))
}

/// The parts of the overview that the live feed refreshes: totals, agents, charts.
pub(super) fn overview_live(overview: &Overview) -> Markup {
    html! {
    section.cards aria-label="Totals" {
        div.card { span.label { "Queued" } span.value { (overview.agents.iter().map(|a| a.queued).sum::<u64>()) } }
        div.card { span.label { "Running" } span.value { (overview.agents.iter().map(|a| a.running).sum::<u64>()) } }
        div.card { span.label { "Pending deliveries" } span.value { (overview.pending_deliveries) } }
        div.card { span.label { "Dead letters" } span.value {
            a href="/ui/deliveries?state=dead" { (overview.dead_letters) }
        } }
    }
    h2 { "Agents" }
    div.scroll { table {
        thead { tr {
            th scope="col" { "Agent" }
            th scope="col" { "Jobs by state" }
            th scope="col" { "Queued" }
            th scope="col" { "Oldest queued" }
            th scope="col" { "Running / max" }
        } }
        tbody {
            @for agent in &overview.agents {
                tr {
                    th scope="row" {
                        a href={ "/ui/jobs?agent=" (agent.agent.as_str()) } { (agent.agent.as_str()) }
                    }
                    td { ul.inline {
                        @for c in &agent.counts {
                            li { (state_badge(c.state)) " " (c.count) }
                        }
                    } }
                    td { (agent.queued) }
                    td { (time(agent.oldest_queued_at)) }
                    td {
                        (agent.running) " / "
                        @match agent.max_concurrent { Some(max) => (max), None => "∞" }
                    }
                }
            }
        }
    } }
    h2 { "Finished jobs" }
    (jobs_chart(overview))
    h2 { "Callbacks" }
    (callbacks_chart(overview))
    }
}

/// The chart's drawing area, in SVG user units.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 120.0;

/// One series of a chart: its CSS class, its name, and its value in a bucket.
type Series<'a> = (&'a str, &'a str, fn(&OverviewBucket) -> u64);

/// Stacked bars per bucket, one series per `(class, value)`; the tallest bar fills the height.
fn stacked_bars(label: &str, buckets: &[OverviewBucket], series: &[Series<'_>]) -> Markup {
    let max = buckets
        .iter()
        .map(|b| series.iter().map(|(_, _, f)| f(b)).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let width = CHART_W / buckets.len().max(1) as f64;
    let scale = CHART_H / max as f64;
    let total: u64 = buckets
        .iter()
        .map(|b| series.iter().map(|(_, _, f)| f(b)).sum::<u64>())
        .sum();
    html! {
        figure.chart {
            svg viewBox={ "0 0 " (CHART_W) " " (CHART_H) } preserveAspectRatio="none"
                role="img" aria-label={ (label) ": " (total) " in the window, at most " (max) " per bucket" } {
                @for (i, bucket) in buckets.iter().enumerate() {
                    @let mut base = CHART_H;
                    @for (class, name, value) in series {
                        @let v = value(bucket);
                        @if v > 0 {
                            @let h = v as f64 * scale;
                            @let y = { base -= h; base };
                            rect class=(class) x=(format!("{:.2}", i as f64 * width)) y=(format!("{y:.2}"))
                                width=(format!("{:.2}", (width - 1.0).max(0.5))) height=(format!("{h:.2}")) {
                                title { (bucket.at) ": " (v) " " (name) }
                            }
                        }
                    }
                }
            }
            figcaption {
                @for (class, name, _) in series {
                    span class={ "key " (class) } { (name) }
                }
                " · " (total) " in the window, at most " (max) " per bucket"
            }
        }
    }
}

fn jobs_chart(overview: &Overview) -> Markup {
    stacked_bars(
        "Finished jobs",
        &overview.buckets,
        &[
            ("completed", "completed", |b| b.completed),
            ("failed", "failed", |b| b.failed),
            ("canceled", "canceled", |b| b.canceled),
        ],
    )
}

fn callbacks_chart(overview: &Overview) -> Markup {
    stacked_bars(
        "Callback attempts",
        &overview.buckets,
        &[
            ("completed", "succeeded", |b| {
                b.callbacks.saturating_sub(b.callback_failures)
            }),
            ("failed", "failed", |b| b.callback_failures),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Jobs

/// The filters of `GET /jobs`, as the form names them.
const JOB_FILTERS: [(&str, &str); 8] = [
    ("agent", "Agent"),
    ("job_name", "Job name"),
    ("user_id", "User id"),
    ("node", "Node"),
    ("id_prefix", "Id prefix"),
    ("since", "Since (RFC 3339)"),
    ("until", "Until (RFC 3339)"),
    ("limit", "Per page"),
];

async fn jobs(
    State(app): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ApiError> {
    let (pairs, notice) = form_query(raw.as_deref())?;
    let query: JobQuery = parse_pairs(&pairs)?;
    let filter = query
        .into_filter()
        .map_err(|errors| ApiError::invalid(ErrorSource::Query, errors))?;
    let (jobs, next) = page_of_jobs(&app.inner, filter).await?;
    let jobs: Vec<JobSummary> = jobs.iter().map(|j| j.summary()).collect();
    // Only the unfiltered first page is the one the live feed shares.
    let live = pairs.is_empty();
    let filters: Vec<_> = pairs
        .iter()
        .filter(|(k, _)| k != "cursor")
        .cloned()
        .collect();
    let next_href = next.map(|cursor: JobCursor| {
        let mut query = filters.clone();
        query.push(("cursor".into(), cursor.to_string()));
        format!(
            "/ui/jobs?{}",
            serde_urlencoded::to_string(&query).unwrap_or_default()
        )
    });
    let back = format!(
        "/ui/jobs?{}",
        serde_urlencoded::to_string(&filters).unwrap_or_default()
    );
    let state = value_of(&pairs, "state");
    let priority = value_of(&pairs, "priority");
    let table = html! {
        div.scroll { table.jobs {
            thead { tr {
                th scope="col" {
                    @if viewer.can_act {
                        label.select-all hidden {
                            input type="checkbox" data-select-all="job_id";
                            span.visually-hidden { "Select all" }
                        }
                    }
                }
                th scope="col" { "Job" }
                th scope="col" { "State" }
                th scope="col" { "Agent" }
                th scope="col" { "Job name" }
                th scope="col" { "User" }
                th scope="col" { "Attempt" }
                th scope="col" { "Created" }
                th scope="col" { "Finished" }
            } }
            tbody data-live=[live.then_some("jobs")] { (job_rows(&jobs, &viewer)) }
        } }
    };
    let content = html! {
        form.filters method="get" action="/ui/jobs" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL {
                        option value=(s.as_str()) selected[s.as_str() == state] { (s.as_str()) }
                    }
                }
            }
            label { "Priority "
                select name="priority" {
                    option value="" { "any" }
                    @for p in ["high", "normal", "low"] {
                        option value=(p) selected[p == priority] { (p) }
                    }
                }
            }
            @for (name, label) in JOB_FILTERS {
                label { (label) " "
                    input type="text" name=(name) value=(value_of(&pairs, name));
                }
            }
            button type="submit" { "Filter" }
            a href="/ui/jobs" { "Clear" }
        }
        @if viewer.can_act {
            form method="post" action="/ui/jobs/bulk" {
                (csrf(&viewer))
                input type="hidden" name="back" value=(back);
                div.actions {
                    button type="submit" name="action" value="cancel" { "Cancel selected" }
                    button type="submit" name="action" value="rerun" { "Re-run selected" }
                    label { input type="checkbox" name="force" value="true"; " re-run completed jobs too" }
                }
                (table)
            }
        } @else {
            (table)
        }
        @if let Some(href) = next_href {
            p { a rel="next" href=(href) { "Next page →" } }
        }
    };
    Ok(layout(
        "Jobs",
        Some(Nav::Jobs),
        Some(&viewer),
        notice.as_deref(),
        content,
    ))
}

/// The rows of the jobs table (the live feed sends them again as jobs change).
pub(super) fn job_rows(jobs: &[JobSummary], viewer: &Viewer) -> Markup {
    html! {
        @for job in jobs {
            @let id = job.job_id.to_string();
            tr {
                td {
                    @if viewer.can_act {
                        label {
                            input type="checkbox" name="job_id" value=(id);
                            span.visually-hidden { "Select " (id) }
                        }
                    }
                }
                td { a.mono href={ "/ui/jobs/" (id) } { (id[..8]) "…" } }
                td { (state_badge(job.state)) }
                td { (job.agent_name.as_str()) }
                td { (job.job_name.as_str()) }
                td { (job.user_id) }
                td { (job.attempt) }
                td { (time(Some(job.created_at))) }
                td { (time(job.finished_at)) }
            }
        }
        @if jobs.is_empty() {
            tr { td colspan="9" { "No jobs match." } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Job

/// The last [`LOG_TAIL_BYTES`] of `output/<name>`, if the file is there; from the first whole
/// line when cut.
fn tail(dir: &JobDir, name: &str) -> Result<Option<String>, JobDirError> {
    let (mut file, size) = match dir.open_to_serve(&format!("output/{name}")) {
        Ok(opened) => opened,
        Err(JobDirError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let start = size.saturating_sub(LOG_TAIL_BYTES);
    let io = |e| JobDirError::Io {
        path: name.to_owned(),
        source: e,
    };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(Some(match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_owned(),
        _ => text,
    }))
}

/// What the job page reads from the job folder.
struct Files {
    log: Option<String>,
    error_log: Option<String>,
    metrics: Option<Value>,
}

fn read_files(dir: &JobDir) -> Result<Files, JobDirError> {
    let metrics = dir
        .read("output/metrics.json", METRICS_MAX_BYTES)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    Ok(Files {
        log: tail(dir, "log.txt")?,
        error_log: tail(dir, "error.log")?,
        metrics,
    })
}

/// `/ui/jobs/<id>/<path>`, each name of `path` percent-encoded: the artifacts endpoint.
fn artifact_href(job_id: JobId, path: &str) -> String {
    let mut href = format!("/ui/jobs/{job_id}");
    for name in path.split('/') {
        href.push('/');
        href.extend(url::form_urlencoded::byte_serialize(name.as_bytes()));
    }
    href
}

/// A JSON value as a definition list of its top-level fields (or as text).
fn fields(value: &Value) -> Markup {
    html! {
        @match value {
            Value::Object(map) => dl.fields {
                @for (k, v) in map {
                    dt { (k) }
                    dd { @match v { Value::String(s) => (s), other => code { (other) } } }
                }
            },
            other => pre { (other) },
        }
    }
}

async fn job(
    State(app): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(job_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ApiError> {
    let (_, notice) = form_query(raw.as_deref())?;
    let job_id = parse_job_id(&job_id)?;
    let app = &app.inner;
    let view = job_view(app, job_id).await?;
    let (shared_root, modes) = (app.shared_root.clone(), app.config.storage.modes);
    let files = tokio::task::spawn_blocking(move || {
        let dir = JobDir::open(&shared_root, job_id, modes)?;
        read_files(&dir)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    // A folder removed or unreadable leaves the store's side of the page intact.
    let files = files.unwrap_or_else(|e| {
        tracing::debug!(job.id = %job_id, "job page without files: {e}");
        Files {
            log: None,
            error_log: None,
            metrics: None,
        }
    });
    let params = view
        .job
        .request
        .params
        .clone()
        .map(|p| redact(&Value::Object(p)));
    let status = view.status(output_uri(
        &app.config.storage.output_uri_prefix,
        &app.shared_root,
        job_id,
    ));
    let id = job_id.to_string();
    let here = format!("/ui/jobs/{id}");
    let artifacts: Vec<Value> = status
        .output_index
        .as_ref()
        .and_then(|i| i.get("artifacts"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let summary = status.output_index.as_ref().map(|index| {
        let mut shown = index.clone();
        if let Some(map) = shown.as_object_mut() {
            map.remove("artifacts");
        }
        shown
    });
    let content = html! {
        p.meta {
            (state_badge(status.state))
            " " span.mono { (id) }
        }
        dl.fields {
            dt { "Agent" } dd { a href={ "/ui/jobs?agent=" (status.agent_name.as_str()) } { (status.agent_name.as_str()) } }
            dt { "Job name" } dd { (status.job_name.as_str()) }
            dt { "User" } dd { (status.user_id) }
            dt { "Priority" } dd { (wire_name(&status.priority)) }
            dt { "Attempt" } dd { (status.attempt) }
            @if let Some(key) = &status.concurrency_key { dt { "Concurrency key" } dd { (key) } }
            @if let Some(at) = status.run_at { dt { "Run at" } dd { (time(Some(at))) } }
            dt { "Trace id" } dd.mono { (status.trace_id) }
            dt { "Output" } dd.mono { (status.output_uri) }
            @if let Some(code) = status.exit_code { dt { "Exit code" } dd { (code) } }
        }
        @if viewer.can_act { div.actions {
            @if !status.state.is_terminal() {
                form method="post" action={ "/ui/jobs/" (id) "/cancel" } {
                    (csrf(&viewer))
                    input type="hidden" name="back" value=(here);
                    button type="submit" { "Cancel" }
                }
            }
            @if status.state.can_rerun(true) {
                form method="post" action={ "/ui/jobs/" (id) "/rerun" } {
                    (csrf(&viewer))
                    input type="hidden" name="back" value=(here);
                    @if !status.state.can_rerun(false) {
                        input type="hidden" name="force" value="true";
                    }
                    button type="submit" { "Re-run" }
                }
            }
        } }
        @if let Some(error) = &status.error {
            section.error {
                h2 { "Error" }
                p { strong { (wire_name(&error.reason)) } ": " (error.message) }
            }
        }
        section data-job-feed=[(!status.state.is_terminal()).then(|| format!("/ui/jobs/{id}/feed"))] {
            h2 { "Progress" }
            @let percent = status.last_progress.as_ref().and_then(|p| p.percent);
            @let done = status.state.is_terminal();
            label.progress {
                span.visually-hidden { "Progress" }
                @match (percent, done) {
                    (_, true) => progress max="100" value="100" {},
                    (Some(p), false) => progress max="100" value=(format!("{:.0}", p.clamp(0.0, 100.0))) {},
                    (None, false) => progress max="100" {},
                }
            }
            @if let Some(p) = &status.last_progress {
                p {
                    @if let Some(stage) = &p.stage { strong { (stage) } " " }
                    @if let Some(m) = &p.message { (m) }
                    @if let Some(pc) = p.percent { " (" (format!("{pc:.0}")) "%)" }
                    " · " (time(Some(p.timestamp)))
                }
            }
            @if !status.state.is_terminal() {
                h3 { "Live" }
                p { "State: " span data-live-state { (status.state.as_str()) } }
                ol.live-log data-live-log aria-live="polite" {}
            }
        }
        section {
            h2 { "Timeline" }
            ol.timeline {
                @for t in &status.transitions {
                    li { (state_badge(t.state)) " " (time(Some(t.at))) " · attempt " (t.attempt) }
                }
            }
            @if !status.attempts.is_empty() {
                h3 { "Earlier attempts" }
                div.scroll { table {
                    thead { tr { th scope="col" { "Attempt" } th scope="col" { "State" } th scope="col" { "Started" } th scope="col" { "Ended" } th scope="col" { "Exit" } th scope="col" { "Error" } } }
                    tbody { @for a in &status.attempts { tr {
                        td { (a.attempt) } td { (state_badge(a.state)) } td { (time(a.started_at)) } td { (time(Some(a.ended_at))) }
                        td { @if let Some(c) = a.exit_code { (c) } }
                        td { @if let Some(e) = &a.error { (e.message) } }
                    } } }
                } }
            }
        }
        section {
            h2 { "Logs" }
            @for (name, text) in [("log.txt", &files.log), ("error.log", &files.error_log)] {
                h3 { a href={ "/ui/jobs/" (id) "/output/" (name) } { (name) } }
                @match text {
                    Some(t) if !t.is_empty() => pre.log { (t) },
                    Some(_) => p.muted { "(empty)" },
                    None => p.muted { "(not written)" },
                }
            }
        }
        @if let Some(summary) = &summary {
            section { h2 { "Summary" } (fields(summary)) }
        }
        @if let Some(metrics) = &files.metrics {
            section { h2 { "Metrics" } (fields(metrics)) }
        }
        @if !artifacts.is_empty() {
            section {
                h2 { "Artifacts" }
                div.scroll { table {
                    thead { tr { th scope="col" { "Path" } th scope="col" { "Type" } th scope="col" { "Bytes" } th scope="col" { "SHA-256" } } }
                    tbody { @for a in &artifacts {
                        @let path = a["path"].as_str().unwrap_or("");
                        tr {
                            td { a href=(artifact_href(job_id, path)) download { (path) } }
                            td { (a["mime"].as_str().unwrap_or("")) }
                            td { (a["bytes"]) }
                            td.mono { (a["sha256"].as_str().unwrap_or("")) }
                        }
                    } }
                } }
            }
        }
        section {
            h2 { "Request" }
            p { "Progress to " span.mono { (url_without_secrets(&view.job.request.callback_urls.progress)) } }
            p { "Completion to " span.mono { (url_without_secrets(&view.job.request.callback_urls.completion)) } }
            h3 { "Params" }
            @match &params {
                Some(p) => pre { (serde_json::to_string_pretty(p).unwrap_or_default()) },
                None => p.muted { "(none)" },
            }
        }
        section {
            h2 { "Completion delivery" }
            @match &status.delivery {
                Some(d) => (delivery_detail(d, &here, &viewer)),
                None => p.muted { "Not yet: the job has not ended." },
            }
        }
    };
    Ok(layout(
        &format!("Job {}", &id[..8]),
        Some(Nav::Jobs),
        Some(&viewer),
        notice.as_deref(),
        content,
    ))
}

/// A callback URL without user info or query (either may carry a credential).
fn url_without_secrets(url: &url::Url) -> String {
    let mut url = url.clone();
    // Both fail only for URLs that cannot have user info (not http(s)): nothing to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The buttons a delivery offers an operator: redrive a dead one, send a pending one now.
fn delivery_buttons(d: &DeliveryStatus, back: &str, viewer: &Viewer) -> Markup {
    if !viewer.can_act {
        return html! {};
    }
    html! {
        @match d.state {
            DeliveryState::Dead => form.inline method="post" action={ "/ui/deliveries/" (d.delivery_id) "/redrive" } {
                (csrf(viewer))
                input type="hidden" name="back" value=(back);
                button type="submit" { "Redrive" }
            },
            DeliveryState::Pending => form.inline method="post" action={ "/ui/deliveries/" (d.delivery_id) "/deliver" } {
                (csrf(viewer))
                input type="hidden" name="back" value=(back);
                button type="submit" { "Deliver now" }
            },
            DeliveryState::Delivered => {},
        }
    }
}

fn delivery_detail(d: &DeliveryStatus, back: &str, viewer: &Viewer) -> Markup {
    html! {
        dl.fields {
            dt { "Delivery" } dd.mono { (d.delivery_id) }
            dt { "State" } dd { (delivery_badge(d.state)) }
            dt { "Destination" } dd.mono { (d.destination) }
            dt { "Attempts" } dd { (d.attempts) }
            @if let Some(at) = d.next_attempt_at { dt { "Next attempt" } dd { (time(Some(at))) } }
            @if let Some(at) = d.delivered_at { dt { "Delivered" } dd { (time(Some(at))) } }
        }
        div.actions { (delivery_buttons(d, back, viewer)) }
        @if !d.history.is_empty() {
            div.scroll { table {
                thead { tr { th scope="col" { "At" } th scope="col" { "Status" } th scope="col" { "Latency" } th scope="col" { "Error" } } }
                tbody { @for a in &d.history { tr {
                    td { (time(Some(a.at))) }
                    td { @match a.status_code { Some(c) => (c), None => "—" } }
                    td { (a.latency_ms) " ms" }
                    td { @if let Some(e) = &a.error { (e) } }
                } } }
            } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries

/// The filters of `GET /deliveries` the form offers as text, besides `state`.
const DELIVERY_FILTERS: [(&str, &str); 6] = [
    ("job_name", "Job name"),
    ("destination", "Destination origin"),
    ("status_code", "Last status code"),
    ("since", "Since (RFC 3339)"),
    ("until", "Until (RFC 3339)"),
    ("limit", "At most"),
];

async fn deliveries(
    State(app): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Result<Markup, ApiError> {
    let (pairs, notice) = form_query(raw.as_deref())?;
    let query: DeliveryQuery = parse_pairs(&pairs)?;
    let filter = query
        .into_filter()
        .map_err(|e| ApiError::invalid(ErrorSource::Query, e))?;
    let deliveries = app.inner.store.list_deliveries(filter).await?;
    let state = value_of(&pairs, "state");
    let back = format!(
        "/ui/deliveries?{}",
        serde_urlencoded::to_string(&pairs).unwrap_or_default()
    );
    let content = html! {
        form.filters method="get" action="/ui/deliveries" {
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for s in [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Dead] {
                        option value=(s.as_str()) selected[s.as_str() == state] { (s.as_str()) }
                    }
                }
            }
            @for (name, label) in DELIVERY_FILTERS {
                label { (label) " "
                    input type="text" name=(name) value=(value_of(&pairs, name));
                }
            }
            button type="submit" { "Filter" }
            a href="/ui/deliveries" { "Clear" }
        }
        @if viewer.can_act && (state.is_empty() || state == "dead") {
            form.actions method="post" action="/ui/deliveries/redrive" {
                (csrf(&viewer))
                input type="hidden" name="back" value=(back);
                @for (name, _) in DELIVERY_FILTERS {
                    @let v = value_of(&pairs, name);
                    @if !v.is_empty() { input type="hidden" name=(name) value=(v); }
                }
                button type="submit" { "Redrive all matching dead deliveries" }
            }
        }
        div.scroll { table {
            thead { tr {
                th scope="col" { "Delivery" }
                th scope="col" { "Job" }
                th scope="col" { "Job name" }
                th scope="col" { "Destination" }
                th scope="col" { "State" }
                th scope="col" { "Attempts" }
                th scope="col" { "Last status" }
                th scope="col" { "Last error" }
                th scope="col" { "Next attempt" }
                th scope="col" { "Action" }
            } }
            tbody {
                @for d in &deliveries {
                    tr {
                        td.mono { (d.delivery_id) }
                        td { a.mono href={ "/ui/jobs/" (d.job_id) } { (d.job_id.to_string()[..8]) "…" } }
                        td { (d.job_name.as_str()) }
                        td.mono { (d.destination) }
                        td { (delivery_badge(d.state)) }
                        td { (d.attempts) }
                        td { @match d.last_status_code { Some(c) => (c), None => "—" } }
                        td { @if let Some(e) = &d.last_error { (e) } }
                        td { (time(d.next_attempt_at)) }
                        td { (delivery_buttons(d, &back, &viewer)) }
                    }
                }
                @if deliveries.is_empty() {
                    tr { td colspan="10" { "No deliveries match." } }
                }
            }
        } }
    };
    Ok(layout(
        "Deliveries",
        Some(Nav::Deliveries),
        Some(&viewer),
        notice.as_deref(),
        content,
    ))
}
