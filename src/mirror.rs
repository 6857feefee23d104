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

/// Where a job's `events.jsonl` is.
#[derive(Debug, Default)]
struct Cursor {
    /// The last seq appended.
    seq: u64,
    /// Lines in the file.
    lines: usize,
    /// Whether the bound was hit (and said so).
    truncated: bool,
    /// Whether the file was read back after a restart.
    loaded: bool,
}

/// What a sync found.
#[derive(Debug, Default)]
struct Synced {
    /// The terminal event is on disk.
    ended: bool,
    /// A state change was appended.
    state_changed: bool,
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

    fn forget(&self, job_id: JobId) {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job_id);
    }

    fn output(&self, job_id: JobId) -> Option<PathBuf> {
        let dir = JobDir::open(&self.shared_root, job_id).ok()?;
        dir.prepare_output().ok()?;
        Some(dir.output())
    }

    /// Brings the job's files up to date now. Its cursor is not kept (a queued job may wait
    /// long; the next sync reads the file back).
    pub async fn sync(&self, job_id: JobId) {
        match self.sync_events(job_id).await {
            Ok(_) => self.write_status(job_id).await,
            Err(e) => warn!(job_id = %job_id, error = %e, "cannot update events.jsonl"),
        }
        self.forget(job_id);
    }

    /// Follows a running job until its terminal event is on disk, or `cancel`.
    pub async fn follow(self: Arc<Self>, job_id: JobId, cancel: CancellationToken) {
        let mut changed = self.store.subscribe(job_id);
        let mut status_due: Option<Instant> = None;
        let mut last_status = Instant::now() - self.status_interval;
        loop {
            let state_changed = match self.sync_events(job_id).await {
                Ok(synced) if synced.ended => {
                    self.write_status(job_id).await;
                    self.forget(job_id);
                    return;
                }
                Ok(synced) => synced.state_changed,
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
                    false
                }
            };
            if state_changed || status_due.is_some_and(|at| at <= Instant::now()) {
                if last_status.elapsed() >= self.status_interval {
                    self.write_status(job_id).await;
                    last_status = Instant::now();
                    status_due = None;
                } else {
                    status_due = Some(last_status + self.status_interval);
                }
            }
            let wait = status_due.map(|at| at.saturating_duration_since(Instant::now()));
            tokio::select! {
                changed = changed.changed() => if changed.is_err() { return },
                () = sleep_or_forever(wait) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Appends the events after the cursor.
    async fn sync_events(&self, job_id: JobId) -> Result<Synced, StoreError> {
        let cursor = self.cursor(job_id);
        let mut cursor = cursor.lock().await;
        let mut synced = Synced::default();
        let Some(output) = self.output(job_id) else {
            return Ok(synced);
        };
        let path = output.join("events.jsonl");
        if !cursor.loaded {
            *cursor = read_back(&path);
        }
        loop {
            let events = self.store.events_after(job_id, cursor.seq, PAGE).await?;
            if events.is_empty() {
                return Ok(synced);
            }
            let mut text = String::new();
            for event in &events {
                synced.ended |= event.is_terminal();
                synced.state_changed |= matches!(event.data, EventData::State { .. });
                self.line_for(&mut cursor, event, &mut text);
                cursor.seq = event.seq;
            }
            append_blocking(path.clone(), text)
                .await
                .map_err(|e| StoreError::Corrupt {
                    job_id: job_id.to_string(),
                    reason: format!("events.jsonl: {e}"),
                })?;
        }
    }

    fn line_for(&self, cursor: &mut Cursor, event: &JobEvent, text: &mut String) {
        let progress = matches!(event.data, EventData::Progress { .. });
        if progress && cursor.lines >= self.max_lines {
            if !cursor.truncated {
                cursor.truncated = true;
                let note = Note::Truncated {
                    job_id: event.job_id,
                    after_seq: cursor.seq,
                    message: format!(
                        "events.jsonl holds at most {} lines; later progress is only in GET /jobs/{}/events",
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
        // The job's own events first, so the file reads in the order things happened.
        if let Err(e) = self.sync_events(job_id).await {
            warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
        }
        let cursor = self.cursor(job_id);
        {
            let mut cursor = cursor.lock().await;
            if let Some(output) = self.output(job_id) {
                let path = output.join("events.jsonl");
                if !cursor.loaded {
                    *cursor = read_back(&path);
                }
                if let Err(e) = append_blocking(path, text).await {
                    warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
                }
                cursor.lines += 1;
            }
        }
        self.forget(job_id);
        self.write_status(job_id).await;
    }

    async fn write_status(&self, job_id: JobId) {
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
        let Some(output) = self.output(job_id) else {
            return;
        };
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
    let mut cursor = Cursor {
        loaded: true,
        ..Cursor::default()
    };
    for line in text.lines() {
        cursor.lines += 1;
        let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if let Some(seq) = value.get("seq").and_then(serde_json::Value::as_u64) {
            cursor.seq = cursor.seq.max(seq);
        }
        if value.get("type").and_then(serde_json::Value::as_str) == Some("truncated") {
            cursor.truncated = true;
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
