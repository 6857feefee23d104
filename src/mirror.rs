//! The job folder as a live view of the store: `output/status.json` (what `GET /jobs/{id}`
//! answers) and `output/events.jsonl` (the events SSE replays, plus delivery attempts).
//!
//! The store stays the truth; these files follow it. A job is synced when it is accepted, when
//! it ends without running, and after each delivery attempt; while it runs, a follower task
//! wakes on the store's hub, appends new events and rewrites `status.json` at once on a state
//! change, at most every `storage.status_min_interval` on progress. Files are replaced by
//! rename (never half-written) but not fsynced: after a crash the next sync rewrites them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::contract::{DeliveryAttempt, DeliveryId, EventData, JobEvent, JobId, Timestamp};
use crate::jobdir::JobDir;
use crate::runner::output_uri;
use crate::store::{AttemptOutcome, Store, StoreError};

/// Events read from the store at once.
const PAGE: usize = 512;

/// Where a job's `events.jsonl` is. Shared by every writer of the job (behind its lock), so
/// lines are never duplicated or interleaved.
#[derive(Debug, Default)]
struct Cursor {
    /// Whether `output` and the counts below were read from disk.
    loaded: bool,
    /// The job's `output/`, if its folder is usable.
    output: Option<PathBuf>,
    /// The last seq appended.
    seq: u64,
    /// Lines in the file.
    lines: usize,
    /// Whether the bound was hit (and said so).
    truncated: bool,
    /// Whether the terminal event is in the file.
    ended: bool,
}

/// A line of `events.jsonl` that is not a job event.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Note<'a> {
    /// One completion attempt.
    Delivery {
        job_id: JobId,
        delivery_id: &'a DeliveryId,
        attempt: u32,
        at: Timestamp,
        status_code: Option<u16>,
        error: Option<&'a str>,
        outcome: &'static str,
    },
    /// The bound was hit: later progress is in the store (and SSE) only.
    Truncated {
        job_id: JobId,
        after_seq: u64,
        message: String,
    },
}

/// Keeps job folders in step with the store.
pub struct Mirror {
    store: Arc<dyn Store>,
    shared_root: PathBuf,
    output_uri_prefix: Option<String>,
    max_lines: usize,
    status_interval: Duration,
    cursors: Mutex<HashMap<JobId, Arc<tokio::sync::Mutex<Cursor>>>>,
}

impl Mirror {
    /// A mirror over `shared_root` (canonical).
    pub fn new(store: Arc<dyn Store>, config: &Config, shared_root: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            store,
            shared_root,
            output_uri_prefix: config.storage.output_uri_prefix.clone(),
            max_lines: config.jobs.events_per_job,
            status_interval: config.storage.status_min_interval,
            cursors: Mutex::new(HashMap::new()),
        })
    }

    fn cursor(&self, job_id: JobId) -> Arc<tokio::sync::Mutex<Cursor>> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(cursors.entry(job_id).or_default())
    }

    /// Drops the job's cursor unless another writer still holds it (the next writer reads the
    /// file back).
    fn forget(&self, job_id: JobId) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        if cursors
            .get(&job_id)
            .is_some_and(|c| Arc::strong_count(c) == 1)
        {
            cursors.remove(&job_id);
        }
    }

    /// Resolves the job's output folder and reads back what the file holds (off the runtime).
    async fn load(&self, job_id: JobId, cursor: &mut Cursor) {
        if cursor.loaded {
            return;
        }
        let root = self.shared_root.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let output = JobDir::open(&root, job_id)
                .ok()
                .filter(|dir| dir.prepare_output().is_ok())
                .map(|dir| dir.output());
            let mut cursor = output
                .as_ref()
                .map(|o| read_back(&o.join("events.jsonl")))
                .unwrap_or_default();
            cursor.output = output;
            cursor.loaded = true;
            cursor
        })
        .await;
        *cursor = loaded.unwrap_or_else(|_| Cursor {
            loaded: true,
            ..Cursor::default()
        });
    }

    /// Brings the job's files up to date now. Its cursor is not kept (a queued job may wait
    /// long; the next sync reads the file back).
    pub async fn sync(&self, job_id: JobId) {
        {
            let cursor = self.cursor(job_id);
            let mut cursor = cursor.lock().await;
            if let Err(e) = self.sync_events(job_id, &mut cursor).await {
                warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
            }
            self.write_status(job_id, &cursor).await;
        }
        self.forget(job_id);
    }

    /// Follows a running job until its terminal event is on disk (whoever wrote it), or
    /// `cancel`.
    pub async fn follow(self: Arc<Self>, job_id: JobId, cancel: CancellationToken) {
        let mut changed = self.store.subscribe(job_id);
        let cursor = self.cursor(job_id);
        let mut status_due: Option<Instant> = None;
        let mut last_status = Instant::now() - self.status_interval;
        loop {
            let mut guard = cursor.lock().await;
            let synced = self.sync_events(job_id, &mut guard).await;
            if guard.output.is_none() || guard.ended {
                // An unusable folder has nothing to follow; an ended job nothing more.
                self.write_status(job_id, &guard).await;
                break;
            }
            let state_changed = match synced {
                Ok(state_changed) => state_changed,
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
                    false
                }
            };
            if state_changed || status_due.is_some_and(|at| at <= Instant::now()) {
                if last_status.elapsed() >= self.status_interval {
                    self.write_status(job_id, &guard).await;
                    last_status = Instant::now();
                    status_due = None;
                } else {
                    status_due = Some(last_status + self.status_interval);
                }
            }
            drop(guard);
            let wait = status_due.map(|at| at.saturating_duration_since(Instant::now()));
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { break },
                () = sleep_or_forever(wait) => {}
                () = cancel.cancelled() => break,
            }
        }
        drop(cursor);
        self.forget(job_id);
    }

    /// Appends the events after the cursor; `Ok(true)` if a state change was among them. The
    /// cursor moves only past what was written.
    async fn sync_events(&self, job_id: JobId, cursor: &mut Cursor) -> Result<bool, StoreError> {
        self.load(job_id, cursor).await;
        let Some(output) = cursor.output.clone() else {
            return Ok(false);
        };
        let path = output.join("events.jsonl");
        let mut state_changed = false;
        loop {
            let events = self.store.events_after(job_id, cursor.seq, PAGE).await?;
            let Some(last) = events.last() else {
                return Ok(state_changed);
            };
            let mut next = Cursor {
                seq: last.seq,
                lines: cursor.lines,
                truncated: cursor.truncated,
                ended: cursor.ended,
                ..Cursor::default()
            };
            let mut text = String::new();
            for event in &events {
                next.ended |= event.is_terminal();
                state_changed |= matches!(event.data, EventData::State { .. });
                self.line_for(&mut next, event, &mut text);
            }
            append_blocking(path.clone(), text)
                .await
                .map_err(|e| StoreError::Corrupt {
                    job_id: job_id.to_string(),
                    reason: format!("events.jsonl: {e}"),
                })?;
            cursor.seq = next.seq;
            cursor.lines = next.lines;
            cursor.truncated = next.truncated;
            cursor.ended = next.ended;
        }
    }

    fn line_for(&self, cursor: &mut Cursor, event: &JobEvent, text: &mut String) {
        let progress = matches!(event.data, EventData::Progress { .. });
        if progress && cursor.lines >= self.max_lines {
            if !cursor.truncated {
                cursor.truncated = true;
                let note = Note::Truncated {
                    job_id: event.job_id,
                    after_seq: event.seq.saturating_sub(1),
                    message: format!(
                        "events.jsonl holds at most {} progress lines; later progress is not written here (the newest is in GET /jobs/{}/events and status.json)",
                        self.max_lines, event.job_id
                    ),
                };
                push_line(text, &note);
                cursor.lines += 1;
            }
            return;
        }
        push_line(text, event);
        cursor.lines += 1;
    }

    /// Appends a completion attempt and rewrites `status.json` (its delivery state changed).
    pub async fn delivery_attempt(
        &self,
        job_id: JobId,
        id: &DeliveryId,
        number: u32,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) {
        let note = Note::Delivery {
            job_id,
            delivery_id: id,
            attempt: number,
            at: attempt.at,
            status_code: attempt.status_code,
            error: attempt.error.as_deref(),
            outcome: match outcome {
                AttemptOutcome::Delivered => "delivered",
                AttemptOutcome::RetryAt(_) => "retry",
                AttemptOutcome::Dead => "dead",
            },
        };
        let mut text = String::new();
        push_line(&mut text, &note);
        {
            let cursor = self.cursor(job_id);
            let mut cursor = cursor.lock().await;
            // The job's own events first, so the file reads in the order things happened.
            if let Err(e) = self.sync_events(job_id, &mut cursor).await {
                warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
            }
            if let Some(output) = cursor.output.clone() {
                match append_blocking(output.join("events.jsonl"), text).await {
                    Ok(()) => cursor.lines += 1,
                    Err(e) => warn!(job_id = %job_id, error = %e, "cannot update events.jsonl"),
                }
            }
            self.write_status(job_id, &cursor).await;
        }
        self.forget(job_id);
    }

    /// Rewrites `status.json`; called with the job's cursor locked, so two writers cannot
    /// leave an older view on disk.
    async fn write_status(&self, job_id: JobId, cursor: &Cursor) {
        let Some(output) = cursor.output.clone() else {
            return;
        };
        let view = match self.store.job_view(job_id).await {
            Ok(Some(view)) => view,
            Ok(None) => return,
            Err(e) => {
                warn!(job_id = %job_id, error = %e, "cannot read the job for status.json");
                return;
            }
        };
        let uri = output_uri(&self.output_uri_prefix, &self.shared_root, job_id);
        let Ok(mut bytes) = serde_json::to_vec_pretty(&view.status(uri)) else {
            return;
        };
        bytes.push(b'\n');
        let written =
            tokio::task::spawn_blocking(move || replace(&output.join("status.json"), &bytes)).await;
        if let Ok(Err(e)) = written {
            warn!(job_id = %job_id, error = %e, "cannot write status.json");
        }
    }
}

async fn sleep_or_forever(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn push_line<T: Serialize>(text: &mut String, value: &T) {
    if let Ok(line) = serde_json::to_string(value) {
        text.push_str(&line);
        text.push('\n');
    }
}

/// Where an existing `events.jsonl` left off (after a restart).
fn read_back(path: &Path) -> Cursor {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut cursor = Cursor::default();
    for line in text.lines() {
        cursor.lines += 1;
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if let Some(seq) = value.get("seq").and_then(serde_json::Value::as_u64) {
            cursor.seq = cursor.seq.max(seq);
        }
        match value.get("type").and_then(serde_json::Value::as_str) {
            Some("truncated") => cursor.truncated = true,
            Some("state") => {
                let state = value.get("state").and_then(serde_json::Value::as_str);
                cursor.ended |= state
                    .and_then(|s| s.parse::<crate::contract::JobState>().ok())
                    .is_some_and(|s| s.is_terminal());
            }
            _ => {}
        }
    }
    cursor
}

async fn append_blocking(path: PathBuf, text: String) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(text.as_bytes())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Replaces `path` by rename (readers see the old or the new file, never half of one).
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
