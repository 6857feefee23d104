//! The job folder as a live view of the store: `output/status.json` (what `GET /jobs/{id}`
//! answers) and `output/events.jsonl` (the events SSE replays, plus delivery attempts).
//!
//! The store stays the truth; these files follow it. Changes only mark a job dirty; one worker
//! brings dirty jobs up to date in rounds, each round one store read for the whole batch and one
//! pass of file writes off the runtime, so a burst of jobs costs a few round trips rather than
//! several per job, and changes that land together are written together. A job is marked when
//! it is accepted, when this node starts running it (it is then followed: every new event of it
//! marks it), when it ends without running and after each delivery attempt. `status.json` is
//! rewritten on a state change and on a delivery attempt at once, on progress at most every
//! `storage.status_min_interval`. Files are replaced by rename (never half-written) but not
//! fsynced: after a crash the next round rewrites them.
//!
//! Writes are fenced like the runner's (see [`crate::fence`]): no round runs while the
//! node's lease has lapsed (marks wait for the next renewal), and a job whose run this node
//! lost is never written again, checked last, right before each job's files.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::Config;
use crate::contract::{DeliveryId, EventData, JobEvent, JobId, Timestamp};
use crate::fence::Fence;
use crate::jobdir::{JobDir, JobDirError, Modes, output_uri};
use crate::store::{AttemptRecorded, Change, ChangeAsk, Changes, Store};

/// Events read per job and round; a job with more is marked again for the next round.
const PAGE: usize = 512;

/// How long a woken worker waits for more changes before its round: under load the changes
/// of many jobs, and several of one job, are written together.
const LINGER: Duration = Duration::from_millis(5);

/// Jobs written per round at most, so a burst of accepted jobs (100,000 queued at once) is
/// written a slice at a time rather than read into memory together.
const BATCH: usize = 256;

/// Cursors of jobs this node does not follow, kept for the delivery notes that follow a job's
/// end (a kept cursor is checked against the file's length before use).
const RECENT: usize = 1024;

/// Where a job's `events.jsonl` is.
#[derive(Debug, Clone, Default)]
struct Cursor {
    /// The job's `output/`, if its folder is usable.
    output: Option<PathBuf>,
    /// The last seq appended.
    seq: u64,
    /// Lines in the file.
    lines: usize,
    /// The file's length after our last append: another writer changed it if it differs.
    len: u64,
    /// Whether the bound was hit (and said so).
    truncated: bool,
    /// Whether the terminal event is in the file.
    ended: bool,
    /// When `status.json` was last written by this worker.
    status_at: Option<Instant>,
}

/// `events.jsonl`, relative to the job folder.
const EVENTS: &str = "output/events.jsonl";
/// The most of an existing `events.jsonl` read back (it holds at most `events_per_job` lines).
const EVENTS_MAX: u64 = 256 << 20;

/// What a dirty job needs.
#[derive(Debug, Default)]
struct Dirty {
    /// Rewrite `status.json` whatever the events say.
    status: bool,
    /// Lines to append after the job's events (delivery attempts).
    notes: String,
}

/// Marks waiting for the worker.
#[derive(Default)]
struct Pending {
    dirty: HashMap<JobId, Dirty>,
    /// Dirty jobs in the order they were first marked: rounds take the oldest first.
    order: VecDeque<JobId>,
    /// Jobs this node runs: each of their new events marks them.
    followed: HashSet<JobId>,
}

impl Pending {
    fn dirty(&mut self, job_id: JobId) -> &mut Dirty {
        self.dirty.entry(job_id).or_insert_with(|| {
            self.order.push_back(job_id);
            Dirty::default()
        })
    }

    /// Up to `BATCH` dirty jobs, oldest first.
    fn take(&mut self) -> Vec<(JobId, Dirty)> {
        let n = self.order.len().min(BATCH);
        self.order
            .drain(..n)
            .filter_map(|job_id| Some((job_id, self.dirty.remove(&job_id)?)))
            .collect()
    }
}

/// The worker's own state.
#[derive(Default)]
struct Worker {
    cursors: HashMap<JobId, Cursor>,
    recent: VecDeque<JobId>,
    /// Jobs whose progress is written once the status interval has passed.
    deferred: HashMap<JobId, Instant>,
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

impl<'a> Note<'a> {
    fn delivery(recorded: &'a AttemptRecorded) -> Self {
        Self::Delivery {
            job_id: recorded.job_id,
            delivery_id: &recorded.delivery_id,
            attempt: recorded.number,
            at: recorded.attempt.at,
            status_code: recorded.attempt.status_code,
            error: recorded.attempt.error.as_deref(),
            outcome: recorded.outcome.label(),
        }
    }
}

/// One job's share of a round.
struct Plan {
    job_id: JobId,
    dirty: Dirty,
    cursor: Cursor,
}

/// What a round writes for one job.
struct FileWork {
    output: PathBuf,
    text: String,
    status: Option<Vec<u8>>,
}

/// A job at the end of a round: its cursor once the files are written, and what to write.
type Settling = (JobId, Cursor, Option<FileWork>);

/// Keeps job folders in step with the store.
pub struct Mirror {
    store: Arc<dyn Store>,
    shared_root: PathBuf,
    modes: Modes,
    output_uri_prefix: Option<String>,
    max_lines: usize,
    status_interval: Duration,
    pending: Mutex<Pending>,
    wake: Notify,
    worker: tokio::sync::Mutex<Worker>,
    fence: Arc<Fence>,
}

impl Mirror {
    /// A mirror over `shared_root` (canonical), told of new events by the store, writing what
    /// `fence` allows.
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        shared_root: PathBuf,
        fence: Arc<Fence>,
    ) -> Arc<Self> {
        let mirror = Arc::new(Self {
            fence,
            store: Arc::clone(&store),
            shared_root,
            modes: config.storage.modes,
            output_uri_prefix: config.storage.output_uri_prefix.clone(),
            max_lines: config.jobs.events_per_job,
            status_interval: config.storage.status_min_interval,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            worker: tokio::sync::Mutex::new(Worker::default()),
        });
        let weak: Weak<Self> = Arc::downgrade(&mirror);
        store.tap(Arc::new(move |change| {
            if let Some(mirror) = weak.upgrade() {
                mirror.heard(change);
            }
        }));
        mirror
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the store recorded: a job accepted, ended or requeued here gets its files
    /// rewritten; a job claimed here is followed (every later event of it, from this node or
    /// another, marks it) until its terminal event is on disk; a completion attempt is
    /// appended after the job's events.
    fn heard(&self, change: Change) {
        {
            let mut pending = self.pending();
            match change {
                Change::Accepted(job_id) | Change::Moved(job_id) => {
                    pending.dirty(job_id).status = true
                }
                Change::Claimed(job_id) => {
                    pending.followed.insert(job_id);
                    pending.dirty(job_id).status = true;
                }
                Change::Progress(job_id) | Change::Heard(job_id) => {
                    if !pending.followed.contains(&job_id) {
                        return;
                    }
                    pending.dirty(job_id);
                }
                Change::Attempt(recorded) => {
                    let dirty = pending.dirty(recorded.job_id);
                    dirty.status = true;
                    push_line(&mut dirty.notes, &Note::delivery(&recorded));
                }
                Change::All => {
                    let followed: Vec<JobId> = pending.followed.iter().copied().collect();
                    if followed.is_empty() {
                        return;
                    }
                    for job_id in followed {
                        pending.dirty(job_id);
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// The worker: a round whenever jobs are marked or deferred progress falls due, until
    /// `cancel`. [`Mirror::flush`] writes what is marked after that.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let due = self.worker.lock().await.deferred.values().min().copied();
            tokio::select! {
                () = self.wake.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep(LINGER) => {}
                        () = cancel.cancelled() => return,
                    }
                }
                () = sleep_until(due) => {}
                // What was marked while the lease had lapsed.
                () = self.fence.reopened() => {}
                () = cancel.cancelled() => return,
            }
            self.round().await;
        }
    }

    /// Writes everything marked, deferred progress included (at shutdown, once every writer
    /// stopped).
    pub async fn flush(&self) {
        {
            let worker = self.worker.lock().await;
            let mut pending = self.pending();
            for job_id in worker.deferred.keys() {
                pending.dirty(*job_id).status = true;
            }
        }
        while self.round().await {}
    }

    /// One round over every dirty job and every deferred one that fell due; whether there was
    /// anything to do.
    async fn round(&self) -> bool {
        if !self.fence.open() {
            // The marks wait for the lease's renewal (`Fence::reopened`).
            return false;
        }
        let mut worker = self.worker.lock().await;
        let now = Instant::now();
        let batch: Vec<(JobId, Dirty)> = {
            let mut pending = self.pending();
            worker.deferred.retain(|job_id, at| {
                if *at <= now {
                    pending.dirty(*job_id);
                }
                *at > now
            });
            let batch = pending.take();
            if !pending.order.is_empty() {
                // The rest in the next round.
                self.wake.notify_one();
            }
            batch
        };
        if batch.is_empty() {
            return false;
        }
        let plans = self.cursors(&mut worker, batch).await;
        let asks = plans
            .iter()
            .filter(|p| p.cursor.output.is_some())
            .map(|p| ChangeAsk {
                job_id: p.job_id,
                after_seq: p.cursor.seq,
                view: self.view_wanted(p, now),
            })
            .collect();
        let changes = match self.store.changes(asks, PAGE).await {
            Ok(changes) => changes,
            Err(e) => {
                warn!(error = %e, "cannot read jobs for their folders");
                // Their files stay as they are until the jobs change again.
                Vec::new()
            }
        };
        let mut changes = changes.into_iter();
        let mut settling = Vec::new();
        for plan in plans {
            if plan.cursor.output.is_none() {
                settling.push((plan.job_id, plan.cursor, None));
                continue;
            }
            let Some(change) = changes.next() else {
                worker.cursors.insert(plan.job_id, plan.cursor);
                continue;
            };
            settling.push(self.plan_write(&mut worker, plan, change, now));
        }
        let written = write_all(
            self.shared_root.clone(),
            self.modes,
            settling,
            Arc::clone(&self.fence),
        )
        .await;
        self.settle(&mut worker, written);
        true
    }

    /// Whether a job's view is read this round: asked for, or progress may be written.
    fn view_wanted(&self, plan: &Plan, now: Instant) -> bool {
        plan.dirty.status || self.status_due(&plan.cursor, now)
    }

    fn status_due(&self, cursor: &Cursor, now: Instant) -> bool {
        cursor
            .status_at
            .is_none_or(|at| now.duration_since(at) >= self.status_interval)
    }

    /// Each job's cursor: kept if the file is as this worker left it, else read back from the
    /// file (off the runtime).
    async fn cursors(&self, worker: &mut Worker, batch: Vec<(JobId, Dirty)>) -> Vec<Plan> {
        let known: Vec<(JobId, Dirty, Option<Cursor>)> = batch
            .into_iter()
            .map(|(job_id, dirty)| {
                let cursor = worker.cursors.remove(&job_id);
                (job_id, dirty, cursor)
            })
            .collect();
        let root = self.shared_root.clone();
        let modes = self.modes;
        let checked = tokio::task::spawn_blocking(move || {
            known
                .into_iter()
                .map(|(job_id, dirty, cursor)| Plan {
                    job_id,
                    dirty,
                    cursor: checked_cursor(&root, modes, job_id, cursor),
                })
                .collect()
        })
        .await;
        checked.unwrap_or_default()
    }

    /// The lines and status a job's changes call for; the cursor it will have once written.
    fn plan_write(
        &self,
        worker: &mut Worker,
        plan: Plan,
        change: Changes,
        now: Instant,
    ) -> Settling {
        let view_read = self.view_wanted(&plan, now);
        let Plan {
            job_id,
            dirty,
            cursor,
        } = plan;
        let mut next = cursor.clone();
        let mut text = String::new();
        let mut state_changed = false;
        for event in &change.events {
            next.seq = event.seq;
            next.ended |= event.is_terminal();
            state_changed |= matches!(event.data, EventData::State { .. });
            self.line_for(&mut next, event, &mut text);
        }
        let more = change.events.len() >= PAGE;
        let mut status_wanted = dirty.status || state_changed;
        if more {
            // The notes wait for the rest of the job's events, so the file reads in order.
            self.requeue(job_id, dirty.status, dirty.notes);
        } else if !dirty.notes.is_empty() {
            next.lines += dirty.notes.lines().count();
            text.push_str(&dirty.notes);
        }
        if !change.events.is_empty() && !status_wanted {
            // Progress only: written once the interval since the last write has passed.
            if self.status_due(&cursor, now) {
                status_wanted = true;
            } else if let Some(at) = cursor.status_at {
                worker.deferred.insert(job_id, at + self.status_interval);
            }
        }
        let status = match (&change.view, status_wanted) {
            (Some(view), true) => {
                let uri = output_uri(&self.output_uri_prefix, &self.shared_root, job_id);
                serde_json::to_vec_pretty(&view.status(uri))
                    .ok()
                    .map(|mut bytes| {
                        bytes.push(b'\n');
                        bytes
                    })
            }
            (None, true) if !view_read => {
                // The view was not read (progress within the interval met a state change).
                self.requeue(job_id, true, String::new());
                None
            }
            _ => None,
        };
        if status.is_some() {
            next.status_at = Some(now);
            worker.deferred.remove(&job_id);
        }
        let write = FileWork {
            output: cursor.output.clone().unwrap_or_default(),
            text,
            status,
        };
        (job_id, next, Some(write))
    }

    fn requeue(&self, job_id: JobId, status: bool, notes: String) {
        {
            let mut pending = self.pending();
            let dirty = pending.dirty(job_id);
            dirty.status |= status;
            dirty.notes.insert_str(0, &notes);
        }
        self.wake.notify_one();
    }

    /// Keeps the cursors of what was written: a followed job's until its end is on disk, the
    /// others' among the recent ones.
    fn settle(&self, worker: &mut Worker, written: Vec<(JobId, Result<Cursor, JobDirError>)>) {
        let mut pending = self.pending();
        for (job_id, cursor) in written {
            let cursor = match cursor {
                Ok(cursor) => cursor,
                Err(_) if !self.fence.allows(job_id) => {
                    if self.fence.forfeits(job_id) {
                        // Lost to another node: its folder is theirs.
                        pending.followed.remove(&job_id);
                    } else {
                        // The lease lapsed mid-round: written after its renewal.
                        pending.dirty(job_id).status = true;
                    }
                    continue;
                }
                Err(e) => {
                    warn!(job_id = %job_id, error = %e, "cannot update events.jsonl");
                    // Read back next time: what is in the file is unknown.
                    continue;
                }
            };
            let followed = if cursor.ended || cursor.output.is_none() {
                pending.followed.remove(&job_id);
                false
            } else {
                pending.followed.contains(&job_id)
            };
            if !followed {
                worker.recent.push_back(job_id);
            }
            worker.cursors.insert(job_id, cursor);
        }
        while worker.recent.len() > RECENT {
            if let Some(old) = worker.recent.pop_front()
                && !pending.followed.contains(&old)
            {
                worker.cursors.remove(&old);
            }
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
}

/// Appends and replaces every job's files in one pass off the runtime; each job's cursor with
/// the length `events.jsonl` has after it, or why the append failed.
/// A job the fence refuses is left as it is.
async fn write_all(
    root: PathBuf,
    modes: Modes,
    settling: Vec<Settling>,
    fence: Arc<Fence>,
) -> Vec<(JobId, Result<Cursor, JobDirError>)> {
    let written = tokio::task::spawn_blocking(move || {
        settling
            .into_iter()
            .map(|(job_id, cursor, work)| {
                let written = if fence.allows(job_id) {
                    write_files(&root, modes, job_id, cursor, work)
                } else {
                    Err(JobDirError::Io {
                        path: job_id.to_string(),
                        source: std::io::Error::other("fenced: this node may not write the folder"),
                    })
                };
                (job_id, written)
            })
            .collect()
    })
    .await;
    // A pass that died leaves its cursors unknown: they are read back next time.
    written.unwrap_or_default()
}

/// Writes one job's files through its folder's handle, so a link planted in `output/` is
/// refused (events.jsonl) or replaced (status.json), never followed.
fn write_files(
    root: &Path,
    modes: Modes,
    job_id: JobId,
    cursor: Cursor,
    work: Option<FileWork>,
) -> Result<Cursor, JobDirError> {
    let Some(work) = work else {
        return Ok(cursor);
    };
    let dir = JobDir::folder(root, &job_id.to_string(), modes)?;
    // The events first, so status.json never runs ahead of events.jsonl.
    let appended = if work.text.is_empty() {
        Ok(cursor)
    } else {
        append(&dir, &work.text).map(|len| Cursor { len, ..cursor })
    };
    if let Some(bytes) = work.status
        && let Err(e) = dir.write_atomic("output/status.json", &bytes)
    {
        warn!(error = %e, output = %work.output.display(), "cannot write status.json");
    }
    appended
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn push_line<T: Serialize>(text: &mut String, value: &T) {
    if let Ok(line) = serde_json::to_string(value) {
        text.push_str(&line);
        text.push('\n');
    }
}

/// `cursor` if the file is still as long as it left it, else what the file says.
fn checked_cursor(root: &Path, modes: Modes, job_id: JobId, cursor: Option<Cursor>) -> Cursor {
    let id = job_id.to_string();
    if let Some(cursor) = cursor
        && cursor.output.is_some()
        && JobDir::folder(root, &id, modes)
            .is_ok_and(|dir| dir.file_len(EVENTS) == Some(cursor.len))
    {
        return cursor;
    }
    let dir = JobDir::open(root, job_id, modes)
        .ok()
        .filter(|dir| dir.create_dir("output").is_ok());
    let mut read = dir.as_ref().map(read_back).unwrap_or_default();
    read.output = dir.map(|dir| dir.output());
    read
}

/// Where an existing `events.jsonl` left off (after a restart, or another writer); a link or
/// FIFO there reads as empty (and the next append is refused).
fn read_back(dir: &JobDir) -> Cursor {
    let text = dir
        .read(EVENTS, EVENTS_MAX)
        .ok()
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let mut cursor = Cursor {
        len: text.len() as u64,
        ..Cursor::default()
    };
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

/// Appends `text` to `events.jsonl`; the file's length after it.
fn append(dir: &JobDir, text: &str) -> Result<u64, JobDirError> {
    use std::io::Write;
    let io = |source| JobDirError::Io {
        path: EVENTS.into(),
        source,
    };
    let mut file = dir.append(EVENTS)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(file.metadata().map_err(io)?.len())
}
