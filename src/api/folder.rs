//! Folder triggers (`[storage] folder_triggers = true`): `<shared_root>/<job_id>/input/trigger.json`
//! (the body of `POST /agents/trigger`, created by rename) starts the job through exactly the
//! same validation, idempotency and durable enqueue as the HTTP trigger; the answer the API
//! would have given is written to `output/trigger-response.json`.
//!
//! Watching uses `notify` (inotify): `shared_root` itself, and each new job folder and its
//! `input/` for a while after it appears (at start: the folders made in that while before it),
//! so watches stay few however many folders exist. Events
//! are missed in practice (NFS, restarts, overflow), so the folders are also rescanned on start
//! and every `rescan_interval`; the store decides what is new (a repeat is an idempotent
//! replay), so no trigger is lost and none runs twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::AppState;
use super::trigger::{accept, parse_request};
use crate::contract::{FieldError, JobId};
use crate::error::{ApiError, ErrorSource};
use crate::jobdir::{JobDir, JobDirError, Modes};

const TRIGGER: &str = "trigger.json";
const RESPONSE: &str = "trigger-response.json";
/// How long a new job folder is watched for its trigger file (the rescan covers the rest).
const WATCH_FOR: Duration = Duration::from_secs(600);
/// Watch events waiting to be handled; beyond this the next rescan catches up.
const QUEUE: usize = 4096;

/// Watches `shared_root` for trigger files until `cancel`.
pub async fn run(app: AppState, cancel: CancellationToken) {
    let root = app.inner.shared_root.clone();
    let every = app.inner.config.storage.rescan_interval;
    let (tx, mut rx) = mpsc::channel::<Event>(QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&overflowed);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) if !event.need_rescan() => {
            if tx.try_send(event).is_err() {
                flag.store(true, Ordering::Relaxed);
            }
        }
        _ => flag.store(true, Ordering::Relaxed),
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch shared_root; folder triggers are found by rescans only");
            return rescan_forever(&app, every, cancel).await;
        }
    };
    if let Err(e) = watcher.watch(&root, RecursiveMode::NonRecursive) {
        warn!(error = %e, "cannot watch shared_root; folder triggers are found by rescans only");
    }
    let mut watched: HashMap<PathBuf, Instant> = HashMap::new();
    // Folders made before the watch on shared_root began (while the sidecar started) sent no
    // event: watch the recent ones now, so a trigger renamed into them later is seen; the
    // rescan that follows finds those renamed already.
    let scan_root = root.clone();
    let recent = tokio::task::spawn_blocking(move || recent_folders(&scan_root))
        .await
        .unwrap_or_default();
    for dir in recent {
        watch(&mut watcher, &mut watched, &dir);
        watch(&mut watcher, &mut watched, &dir.join("input"));
    }
    rescan(&app).await;
    let mut tick = tokio::time::interval(every);
    tick.reset();
    loop {
        tokio::select! {
            Some(event) = rx.recv() => {
                on_event(&app, &mut watcher, &mut watched, event).await;
            }
            _ = tick.tick() => {
                expire(&mut watcher, &mut watched);
                rescan(&app).await;
            }
            () = cancel.cancelled() => return,
        }
        if overflowed.swap(false, Ordering::Relaxed) {
            warn!("watch events were lost; rescanning the job folders");
            rescan(&app).await;
        }
    }
}

async fn rescan_forever(app: &AppState, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => rescan(app).await,
            () = cancel.cancelled() => return,
        }
    }
}

async fn on_event(
    app: &AppState,
    watcher: &mut impl Watcher,
    watched: &mut HashMap<PathBuf, Instant>,
    event: Event,
) {
    let created = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_));
    if !created {
        return;
    }
    let root = &app.inner.shared_root;
    for path in event.paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let parent = path.parent().unwrap_or(root);
        if parent == root && path.is_dir() {
            // A new job folder: watch it (for input/) and its input/ (for trigger.json).
            watch(watcher, watched, &path);
            watch(watcher, watched, &path.join("input"));
            answer_if_new(app, &path).await;
        } else if name == "input" && path.is_dir() {
            watch(watcher, watched, &path);
            answer_if_new(app, parent).await;
        } else if name == TRIGGER
            && parent.file_name().is_some_and(|n| n == "input")
            && let Some(job_dir) = parent.parent()
        {
            answer_if_new(app, job_dir).await;
        }
    }
}

fn watch(watcher: &mut impl Watcher, watched: &mut HashMap<PathBuf, Instant>, dir: &Path) {
    if dir.is_dir()
        && !watched.contains_key(dir)
        && watcher.watch(dir, RecursiveMode::NonRecursive).is_ok()
    {
        watched.insert(dir.to_owned(), Instant::now());
    }
}

/// Real folders in `root` changed within the last [`WATCH_FOR`].
fn recent_folders(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata().is_ok_and(|m| {
                m.is_dir()
                    && m.modified()
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < WATCH_FOR))
            })
        })
        .map(|e| e.path())
        .collect()
}

fn expire(watcher: &mut impl Watcher, watched: &mut HashMap<PathBuf, Instant>) {
    watched.retain(|dir, since| {
        let keep = since.elapsed() < WATCH_FOR;
        if !keep {
            let _ = watcher.unwatch(dir);
        }
        keep
    });
}

/// Answers every trigger file that has no answer newer than itself.
async fn rescan(app: &AppState) {
    let root = app.inner.shared_root.clone();
    let pending = tokio::task::spawn_blocking(move || unanswered(&root))
        .await
        .unwrap_or_default();
    for job_dir in pending {
        answer(app, &job_dir).await;
    }
}

fn unanswered(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| needs_answer(dir))
        .collect()
}

/// Whether `path` is a real directory (not a symlink to one).
fn real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// A job folder (a real directory named by a job id, with a real `input/`) holds a
/// trigger file that no answer was written after. The trigger's ctime counts, since a rename
/// keeps the temp file's mtime but sets its ctime.
fn needs_answer(job_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // Any case: a folder named in upper case is answered (with why it is refused), not ignored.
    let canonical_name = job_dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.parse::<JobId>().is_ok());
    if !canonical_name || !real_dir(job_dir) || !real_dir(&job_dir.join("input")) {
        return false;
    }
    let Ok(trigger) = std::fs::symlink_metadata(job_dir.join("input").join(TRIGGER)) else {
        return false;
    };
    let changed = (trigger.ctime(), trigger.ctime_nsec());
    match std::fs::symlink_metadata(job_dir.join("output").join(RESPONSE)) {
        Ok(answer) => (answer.mtime(), answer.mtime_nsec()) <= changed,
        Err(_) => true,
    }
}

async fn answer_if_new(app: &AppState, job_dir: &Path) {
    let dir = job_dir.to_owned();
    let new = tokio::task::spawn_blocking(move || needs_answer(&dir))
        .await
        .unwrap_or(false);
    if new {
        answer(app, job_dir).await;
    }
}

/// Takes one trigger file through the HTTP trigger's pipeline and writes the answer.
async fn answer(app: &AppState, job_dir: &Path) {
    if app.inner.runner.is_draining() {
        // Left for the next start, which rescans.
        return;
    }
    let result = take(app, job_dir).await;
    if let Err(e) = &result
        && e.status().is_server_error()
    {
        // Our fault, maybe passing: no answer, so the next rescan tries again.
        warn!(
            detail = e.detail(),
            "folder trigger not taken; retried on the next rescan"
        );
        return;
    }
    // The body the API would have answered: the 202 document or the problem+json.
    let text = match &result {
        Ok(accepted) => serde_json::to_vec_pretty(accepted),
        Err(problem) => serde_json::to_vec_pretty(&problem.problem()),
    };
    let Ok(mut text) = text else { return };
    text.push(b'\n');
    let root = app.inner.shared_root.clone();
    let modes = app.inner.config.storage.modes;
    let folder = folder_name(job_dir).to_owned();
    // Through the folder's handle: nothing here may lead outside shared_root.
    let written = tokio::task::spawn_blocking(move || {
        let dir = JobDir::folder(&root, &folder, modes)?;
        dir.create_dir("output")?;
        dir.write_atomic(&format!("output/{RESPONSE}"), &text)
    })
    .await;
    let name = folder_name(job_dir);
    match (written, result) {
        (Ok(Ok(())), Ok(_)) => info!(folder = name, "folder trigger accepted"),
        (Ok(Ok(())), Err(e)) => info!(folder = name, detail = e.detail(), "folder trigger refused"),
        _ => warn!(folder = name, "cannot write output/trigger-response.json"),
    }
}

fn folder_name(job_dir: &Path) -> &str {
    job_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

async fn take(
    app: &AppState,
    job_dir: &Path,
) -> Result<crate::contract::TriggerAccepted, ApiError> {
    let limit = app.inner.config.server.max_body_bytes;
    let root = app.inner.shared_root.clone();
    let modes = app.inner.config.storage.modes;
    let folder = folder_name(job_dir).to_owned();
    let bytes = tokio::task::spawn_blocking(move || read_trigger(&root, &folder, modes, limit))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let (request, sha256) = parse_request(&bytes)?;
    let folder = folder_name(job_dir);
    let id = request.job_id.to_string();
    if folder != id {
        let detail = if folder.eq_ignore_ascii_case(&id) {
            format!("the job folder must be named by the job id in lower case ({id}), not {folder}")
        } else {
            format!("must be the job folder's name ({folder})")
        };
        let errors = vec![FieldError::new("/job_id", detail)];
        return Err(ApiError::invalid(ErrorSource::Request, errors));
    }
    accept(app, request, sha256, None)
        .await
        .map(|(_, body)| body)
}

/// Reads the trigger file through the folder's handle (no link followed, no FIFO blocked on),
/// up to `limit`.
fn read_trigger(
    root: &Path,
    folder: &str,
    modes: Modes,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let rel = format!("input/{TRIGGER}");
    let read = JobDir::folder(root, folder, modes).and_then(|dir| dir.read(&rel, limit as u64));
    match read {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(unreadable(
            StatusCode::BAD_REQUEST,
            format!("{rel} does not exist"),
        )),
        Err(JobDirError::TooLarge { .. }) => Err(unreadable(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{rel} is larger than server.max_body_bytes ({limit})"),
        )),
        Err(e) => Err(unreadable(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

fn unreadable(status: StatusCode, detail: String) -> ApiError {
    ApiError::unreadable_body(status, detail)
}
