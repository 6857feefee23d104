//! Durable job state behind one narrow interface: enqueue, claim, transition, events, outbox.
//!
//! Everything the sidecar must not lose goes through [`Store`]. The embedded default is
//! [`SqliteStore`]; a fleet backend implements the same trait. Every state change is a
//! compare-and-set on `(state, attempt)`, so a writer holding a stale view changes nothing.

mod filter;
mod hub;
mod postgres;
mod row;
mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use url::Url;

use crate::config::{StoreBackend, StoreConfig};
use crate::contract::{
    AgentName, DeliveryId, DeliveryStatus, JobAttempt, JobError, JobEvent, JobId, JobName,
    JobState, JobStatus, JobSummary, PAYLOAD_VERSION, Priority, Progress, ProgressSnapshot,
    Timestamp, Transition, TriggerRequest,
};

use filter::{Condition, FilterValue};
pub use filter::{DeliveryFilter, DeliveryQuery, JobCursor, JobFilter, JobQuery};
pub use hub::{AttemptRecorded, Change, Tap};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The group transaction holding this write failed to commit; nothing of it was stored.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// Schema migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// PostgreSQL refused or failed, or the connection broke.
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    /// PostgreSQL schema migrations could not be applied.
    #[error("PostgreSQL migration failed: {0}")]
    PgMigration(String),
    /// A stored value does not parse; the database was edited by hand or is corrupt.
    #[error("stored value for job {job_id} is unreadable: {reason}")]
    Corrupt {
        /// The job.
        job_id: String,
        /// What failed to parse.
        reason: String,
    },
    /// The job is not where the caller thought: its write was refused (fencing).
    #[error("job {job_id} is no longer {expected} at attempt {attempt}; write refused")]
    Stale {
        /// The job.
        job_id: JobId,
        /// The state the caller expected.
        expected: JobState,
        /// The attempt the caller owns.
        attempt: u32,
    },
    /// The store's writer has stopped (the process is shutting down).
    #[error("the store is closed")]
    Closed,
}

/// Result of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Scheduled jobs promoted to the queue in one transaction at most (the rest in the next).
const PROMOTE_BATCH: i64 = 500;

/// A validated trigger, ready to be persisted.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The request as accepted.
    pub request: TriggerRequest,
    /// SHA-256 of the request's canonical JSON: equal bodies are idempotent replays.
    pub request_sha256: String,
    /// Correlation id for logs, the agent and callbacks.
    pub trace_id: String,
    /// Acceptance time.
    pub at: Timestamp,
    /// Where it sorts in the queue: `at` (or `run_at`) pushed back by its priority (see
    /// [`crate::config::JobsConfig::priority_aging`]).
    pub sort_at: Timestamp,
    /// When set, the job is stored `scheduled` and becomes `queued` at this time.
    pub run_at: Option<Timestamp>,
}

impl NewJob {
    /// The state it is stored in after `received`.
    fn first_state(&self) -> JobState {
        if self.run_at.is_some() {
            JobState::Scheduled
        } else {
            JobState::Queued
        }
    }
}

/// An attempt that ended in a way its agent's retry policy retries: the job waits
/// `scheduled` until `run_at`, holding no slot, and the attempt is recorded.
#[derive(Debug, Clone)]
pub struct RetryLater {
    /// The job.
    pub job_id: JobId,
    /// The attempt that ended (fencing: the job must still be `in_progress` at it).
    pub attempt: u32,
    /// How it ended (`failed` or `timed_out`).
    pub state: JobState,
    /// The agent's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it did not complete.
    pub error: Option<JobError>,
    /// When it ended.
    pub at: Timestamp,
    /// When the next attempt may start.
    pub run_at: Timestamp,
    /// Its place in the queue from then (`run_at` pushed back by its priority).
    pub schedule_key: Timestamp,
}

/// Who this process is in the fleet: the node (stable across restarts) and this start of it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name (`store.node_id`).
    pub id: String,
    /// This process: a claim records it, so a restarted node knows its old claims as orphans.
    pub incarnation: String,
    /// How long a claim lasts without a heartbeat.
    pub lease: std::time::Duration,
}

impl Node {
    /// This process of node `id`.
    pub fn new(id: &str, lease: std::time::Duration) -> Self {
        Self {
            id: id.to_owned(),
            incarnation: uuid::Uuid::new_v4().to_string(),
            lease,
        }
    }
}

/// What a node reports with each heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    /// The agents it offers.
    pub agents: Vec<AgentName>,
    /// The attempts it runs, whose leases the beat renews.
    pub running: Vec<(JobId, u32)>,
    /// Its overall concurrency limit.
    pub max_concurrent: usize,
    /// When.
    pub at: Timestamp,
}

/// What a heartbeat found out about the attempts the node runs.
#[derive(Debug, Clone, Default)]
pub struct BeatAnswer {
    /// Attempts this node no longer owns (reclaimed elsewhere): stop them, write nothing.
    pub lost: Vec<(JobId, u32)>,
    /// Attempts someone asked to cancel (on any node).
    pub cancel: Vec<(JobId, u32)>,
}

/// A change another process made that this one should act on (delivered by `LISTEN/NOTIFY` in
/// a fleet; the embedded store has no other process and sends none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// A job entered the queue.
    Queued,
    /// A cancel was accepted for an attempt running on this node.
    Cancel(JobId, u32),
}

/// What a claim may take of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The agent.
    pub agent: AgentName,
    /// How many more of its jobs this node may start.
    pub free: usize,
    /// At most this many of its jobs with one concurrency key run at once, on every node
    /// (`[agents.NAME] max_per_key`); `None` for no limit.
    pub max_per_key: Option<u32>,
}

/// What is paused (issue 21): claims skip these agents; queued jobs stay queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paused {
    /// Every agent is paused (`POST /agents/pause`).
    pub all: bool,
    /// These agents are paused one by one (`POST /agents/{name}/pause`).
    pub agents: std::collections::BTreeSet<AgentName>,
}

impl Paused {
    /// The scope the store keeps for every agent at once (never an agent name).
    const ALL: &str = "*";

    /// Whether claims skip `agent`.
    pub fn holds(&self, agent: &AgentName) -> bool {
        self.all || self.agents.contains(agent)
    }

    /// The store's scope of a pause: one agent, or every agent (`None`).
    fn scope(agent: Option<&AgentName>) -> &str {
        agent.map_or(Self::ALL, AgentName::as_str)
    }

    /// The pauses from the store's scopes (unknown ones, e.g. an agent since removed, kept).
    fn from_scopes(scopes: impl IntoIterator<Item = String>) -> Self {
        let mut paused = Self::default();
        for scope in scopes {
            if scope == Self::ALL {
                paused.all = true;
            } else if let Ok(agent) = scope.parse() {
                paused.agents.insert(agent);
            }
        }
        paused
    }

    /// `slots` without the paused agents.
    fn unpaused(&self, slots: Vec<Slot>) -> Vec<Slot> {
        slots
            .into_iter()
            .filter(|s| !self.holds(&s.agent))
            .collect()
    }
}

/// How many jobs of one agent wait and run, on every node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentLoad {
    /// Jobs `queued`.
    pub queued: u64,
    /// Jobs `in_progress`.
    pub running: u64,
}

/// What `enqueue` did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// A new job, now durably queued.
    Created(JobRecord),
    /// The same request was seen before; nothing new was stored.
    Duplicate(JobRecord),
    /// The job id exists with a different request.
    Conflict(JobRecord),
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// The job.
    pub job_id: JobId,
    /// Its user.
    pub user_id: String,
    /// Its agent.
    pub agent_name: AgentName,
    /// Its Rails handler.
    pub job_name: JobName,
    /// Its priority.
    pub priority: Priority,
    /// Where it is.
    pub state: JobState,
    /// How many times it was claimed.
    pub attempt: u32,
    /// The accepted trigger.
    pub request: TriggerRequest,
    /// SHA-256 of the accepted trigger's canonical JSON.
    pub request_sha256: String,
    /// Correlation id.
    pub trace_id: String,
    /// Acceptance time.
    pub created_at: Timestamp,
    /// When it last entered the queue (acceptance, or a requeue).
    pub queued_at: Timestamp,
    /// When the current attempt started.
    pub started_at: Option<Timestamp>,
    /// When the job ended.
    pub finished_at: Option<Timestamp>,
    /// The agent's exit code.
    pub exit_code: Option<i32>,
    /// Why it did not complete.
    pub error: Option<JobError>,
    /// The final summary (or trimmed index).
    pub output_index: Option<Value>,
    /// The latest progress event.
    pub last_progress: Option<ProgressSnapshot>,
    /// Whether a cancel was accepted while it ran.
    pub cancel_requested: bool,
    /// When it was last scheduled to start (a trigger's `run_at` or `delay`, a retry).
    pub run_at: Option<Timestamp>,
}

impl JobRecord {
    /// The job as `GET /jobs` lists it.
    pub fn summary(&self) -> JobSummary {
        JobSummary {
            job_id: self.job_id,
            user_id: self.user_id.clone(),
            agent_name: self.agent_name.clone(),
            job_name: self.job_name.clone(),
            priority: self.priority,
            state: self.state,
            attempt: self.attempt,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// A job with its history: what `GET /jobs/{id}` shows.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The job.
    pub job: JobRecord,
    /// Every state change, oldest first.
    pub transitions: Vec<Transition>,
    /// The completion delivery, once the job is terminal.
    pub delivery: Option<DeliveryStatus>,
    /// Every ended attempt, oldest first.
    pub attempts: Vec<JobAttempt>,
}

/// What the job-folder mirror asks about one job.
#[derive(Debug, Clone, Copy)]
pub struct ChangeAsk {
    /// The job.
    pub job_id: JobId,
    /// Its events after this seq are wanted.
    pub after_seq: u64,
    /// Whether its view is wanted too.
    pub view: bool,
}

/// The answer to one [`ChangeAsk`].
#[derive(Debug, Default)]
pub struct Changes {
    /// The events after the seq asked, oldest first, at most the limit asked.
    pub events: Vec<JobEvent>,
    /// The job's view, when asked for and the job exists.
    pub view: Option<JobView>,
}

impl JobView {
    /// The public status document of the job (`GET /jobs/{id}`, `output/status.json`).
    pub fn status(&self, output_uri: String) -> JobStatus {
        let job = &self.job;
        JobStatus {
            version: PAYLOAD_VERSION,
            job_id: job.job_id,
            user_id: job.user_id.clone(),
            agent_name: job.agent_name.clone(),
            job_name: job.job_name.clone(),
            priority: job.priority,
            concurrency_key: job.request.concurrency_key.clone(),
            state: job.state,
            attempt: job.attempt,
            run_at: job.run_at.filter(|_| job.state == JobState::Scheduled),
            attempts: self.attempts.clone(),
            trace_id: job.trace_id.clone(),
            transitions: self.transitions.clone(),
            last_progress: job.last_progress.clone(),
            exit_code: job.exit_code,
            error: job.error.clone(),
            delivery: self.delivery.clone(),
            output_uri,
            output_index: job.output_index.clone(),
        }
    }
}

/// The end of an attempt, with the completion callback to deliver.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The job.
    pub job_id: JobId,
    /// The state the job must still be in (fencing).
    pub from: JobState,
    /// The attempt the caller owns (fencing).
    pub attempt: u32,
    /// The terminal state.
    pub state: JobState,
    /// The agent's exit code.
    pub exit_code: Option<i32>,
    /// Why it did not complete.
    pub error: Option<JobError>,
    /// The final summary (or trimmed index).
    pub output_index: Value,
    /// When it ended.
    pub at: Timestamp,
    /// The completion callback, written in the same transaction.
    pub completion: NewDelivery,
    /// The completion is leased to the caller until then, for its first attempt; if that
    /// attempt is never made (a crash), the outbox makes it once the lease ends.
    pub lease_until: Timestamp,
}

impl Finish {
    /// The refusal of a writer whose view of the job is stale.
    fn stale(&self) -> StoreError {
        StoreError::Stale {
            job_id: self.job_id,
            expected: self.from,
            attempt: self.attempt,
        }
    }

    /// Refuses an end the lifecycle does not allow from the state the writer expects.
    fn allowed(&self) -> StoreResult<()> {
        if self.from.can_become(self.state) {
            Ok(())
        } else {
            Err(self.stale())
        }
    }

    /// The completion this end wrote, leased to its writer for the first attempt; `job` is the
    /// job's row after the end.
    fn into_due(self, job: JobRecord) -> DueDelivery {
        DueDelivery {
            id: self.completion.id,
            job_id: self.job_id,
            job_name: job.job_name,
            status: self.state,
            url: self.completion.url,
            body: self.completion.body,
            attempts: 0,
            last_status_code: None,
            age_from: self.at,
            trace_id: job.trace_id,
            agent_name: job.agent_name.to_string(),
        }
    }
}

/// A callback to deliver, written to the outbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Stable id (JWT `jti`, `webhook-id`).
    pub id: DeliveryId,
    /// Where it goes.
    pub url: Url,
    /// The exact body bytes; fixed across retries so `body_sha256` is too.
    pub body: Vec<u8>,
}

/// A callback due for an attempt, leased to the caller.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// Stable id.
    pub id: DeliveryId,
    /// The job.
    pub job_id: JobId,
    /// The job's Rails handler (a JWT claim).
    pub job_name: JobName,
    /// The job's terminal state (a JWT claim).
    pub status: JobState,
    /// Where it goes.
    pub url: Url,
    /// The exact body.
    pub body: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: u32,
    /// HTTP status of the previous attempt, if any.
    pub last_status_code: Option<u16>,
    /// When it was written, or last redriven: the age limit counts from here.
    pub age_from: Timestamp,
    /// The job's trace id (the `traceparent` of every attempt).
    pub trace_id: String,
    /// The job's agent (for logs).
    pub agent_name: String,
}

/// A job the sweeper deleted, for its log line.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The job.
    pub job_id: JobId,
    /// Its Rails handler.
    pub job_name: String,
    /// Its agent.
    pub agent_name: String,
    /// Its trace id.
    pub trace_id: String,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    /// Acknowledged; done.
    Delivered,
    /// Try again at this time.
    RetryAt(Timestamp),
    /// Give up; it stays visible as a dead letter.
    Dead,
}

/// The progress event an agent's report becomes at `at` (its seq is drawn when it is stored).
fn snapshot(progress: Progress, at: Timestamp) -> ProgressSnapshot {
    ProgressSnapshot {
        seq: 0,
        stage: progress.stage,
        message: progress.message,
        percent: progress.percent,
        timestamp: at,
    }
}

/// Bounded history: after event `seq`, progress events up to the returned seq go, so the
/// newest `keep` events stay (state changes always stay).
fn oldest_kept(seq: u64, keep: usize) -> Option<i64> {
    let oldest = i64::try_from(seq).unwrap_or(i64::MAX) - keep as i64;
    (oldest > 0).then_some(oldest)
}

impl AttemptOutcome {
    /// The outcome in a word (metrics, `events.jsonl`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::RetryAt(_) => "retry",
            Self::Dead => "dead",
        }
    }

    /// The delivery's `state`, `next_attempt_at` and `delivered_at` after an attempt made at
    /// `at` (milliseconds).
    fn columns(self, at: Timestamp) -> (&'static str, Option<i64>, Option<i64>) {
        match self {
            Self::Delivered => ("delivered", None, Some(at.unix_ms())),
            Self::RetryAt(next) => ("pending", Some(next.unix_ms()), None),
            Self::Dead => ("dead", None, None),
        }
    }
}

impl BeatAnswer {
    /// Sorts the attempts a node runs by what the store says of each: `None` when it no longer
    /// owns it, `Some(true)` when a cancel was asked for.
    fn sort(
        running: &[(JobId, u32)],
        mut owned: impl FnMut(JobId, u32) -> StoreResult<Option<bool>>,
    ) -> StoreResult<Self> {
        let mut answer = Self::default();
        for &(job_id, attempt) in running {
            match owned(job_id, attempt)? {
                None => answer.lost.push((job_id, attempt)),
                Some(true) => answer.cancel.push((job_id, attempt)),
                Some(false) => {}
            }
        }
        Ok(answer)
    }
}

/// The persistence interface. Every method is durable when it returns.
#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a new job as `received → queued` (`received → scheduled` when it has a
    /// `run_at`), or reports the existing one.
    async fn enqueue(&self, job: NewJob) -> StoreResult<Enqueued>;

    /// A job's own row (cheaper than [`Store::job_view`]).
    async fn job(&self, job_id: JobId) -> StoreResult<Option<JobRecord>>;

    /// A job with its transitions and completion delivery.
    async fn job_view(&self, job_id: JobId) -> StoreResult<Option<JobView>>;

    /// Moves up to `free` queued jobs to `in_progress` in one transaction, each the first in
    /// claim order among the agents that still have a free slot in `slots` and are not
    /// paused, whose concurrency key has fewer than the agent's `max_per_key` running (on
    /// every node; jobs behind a key at its limit are still taken), incrementing their attempt.
    async fn claim(
        &self,
        slots: Vec<Slot>,
        free: usize,
        at: Timestamp,
    ) -> StoreResult<Vec<JobRecord>>;

    /// Pauses (`paused`) or resumes one agent, or every agent (`None`), durably and for every
    /// node; resuming wakes every node's scheduler. Returns whether anything changed.
    async fn set_paused(
        &self,
        agent: Option<AgentName>,
        paused: bool,
        at: Timestamp,
    ) -> StoreResult<bool>;

    /// What is paused now.
    async fn paused(&self) -> StoreResult<Paused>;

    /// Queued and running jobs per agent, on every node (agents with neither are left out).
    async fn agent_loads(&self) -> StoreResult<std::collections::BTreeMap<AgentName, AgentLoad>>;

    /// Jobs `in_progress` on any node.
    async fn in_progress(&self) -> StoreResult<Vec<JobRecord>>;

    /// `in_progress` jobs whose runner is gone: claimed by an earlier process of this node, or
    /// whose lease ran out at `now`.
    async fn orphans(&self, now: Timestamp) -> StoreResult<Vec<JobRecord>>;

    /// Records this node as alive with what it offers, renews the leases of the attempts it
    /// runs, and says which of them it lost and which were asked to cancel.
    async fn heartbeat(&self, beat: Beat) -> StoreResult<BeatAnswer>;

    /// The nodes whose last heartbeat is at or after `since`.
    async fn nodes(&self, since: Timestamp) -> StoreResult<Vec<crate::contract::NodeStatus>>;

    /// Whether this process leads the fleet's sweeper and pruning (taking the lead if it is
    /// free); a leader that dies loses it.
    async fn lead(&self) -> StoreResult<bool>;

    /// Changes made by other processes (see [`Signal`]); closed at once when no other process
    /// shares the store.
    fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal>;

    /// Jobs matching `filter`, newest first.
    async fn list_jobs(&self, filter: JobFilter) -> StoreResult<Vec<JobRecord>>;

    /// Up to `limit` jobs queued (or requeued) before `before`, longest waiting first.
    async fn queued_before(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<JobRecord>>;

    /// Marks a running attempt as asked to cancel, durably (a restart then ends it `canceled`).
    async fn request_cancel(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()>;

    /// Puts an interrupted attempt back in the queue, in its old place; the next claim counts
    /// the next attempt.
    async fn requeue(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()>;

    /// Re-runs a job that ended `from` at `attempt` as its next attempt (issue 21): back to
    /// `queued` with its end cleared, scheduled like a job accepted at `at` (`schedule_key`,
    /// a fresh acceptance number), with a `queued` event of the next attempt. `Stale` when it
    /// is no longer `from` at `attempt` (a concurrent re-run, or it was pruned).
    async fn rerun(
        &self,
        job_id: JobId,
        from: JobState,
        attempt: u32,
        at: Timestamp,
        schedule_key: Timestamp,
    ) -> StoreResult<()>;

    /// Ends an attempt for a retry (see [`RetryLater`]): the attempt recorded, the job
    /// `scheduled` with a `scheduled` event of that attempt. `Stale` when it is no longer
    /// `in_progress` at that attempt.
    async fn retry_later(&self, retry: RetryLater) -> StoreResult<()>;

    /// Moves the `scheduled` jobs due at `now` to `queued` (each with a `queued` event; its
    /// `queued_at` stays its `run_at`), and returns how many; any node may, and each job moves
    /// once.
    async fn promote_due(&self, now: Timestamp) -> StoreResult<usize>;

    /// When the earliest `scheduled` job is due, if any.
    async fn next_run_at(&self) -> StoreResult<Option<Timestamp>>;

    /// The job's events after `after_seq`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        job_id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<JobEvent>>;

    /// For each ask, the job's events after its seq (at most `limit`) and, when asked, its
    /// view: one round trip for many jobs.
    async fn changes(&self, asks: Vec<ChangeAsk>, limit: usize) -> StoreResult<Vec<Changes>>;

    /// A receiver that changes whenever the job's history grows (replay with
    /// [`Store::events_after`]).
    fn subscribe(&self, job_id: JobId) -> tokio::sync::watch::Receiver<()>;

    /// Sets the tap told of every job's new events (written here, or by another node).
    fn tap(&self, tap: Tap);

    /// Queued jobs per agent and dead-lettered completions, for the metrics.
    async fn gauges(&self) -> StoreResult<crate::telemetry::StoreGauges>;

    /// How many jobs `filter` matches, per state (its cursor and limit aside).
    async fn count_jobs(&self, filter: JobFilter) -> StoreResult<Vec<(JobState, u64)>>;

    /// What the overview shows of the jobs and callbacks since `since`, and of now.
    async fn overview(&self, since: Timestamp) -> StoreResult<crate::overview::OverviewRows>;

    /// Proves the store takes writes (rewrites a heartbeat row, committed).
    async fn check_writable(&self) -> StoreResult<()>;

    /// Deletes up to `limit` terminal jobs that ended before `before` and have no pending
    /// callback, with their events and deliveries; returns their ids.
    async fn prune(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<Pruned>>;

    /// Appends a progress event of `attempt` and makes it the job's latest.
    async fn record_progress(
        &self,
        job_id: JobId,
        attempt: u32,
        progress: Progress,
        at: Timestamp,
    ) -> StoreResult<ProgressSnapshot>;

    /// Ends an attempt and writes its completion callback to the outbox, atomically; returns
    /// the callback, leased to the caller for its first attempt.
    async fn finish(&self, finish: Finish) -> StoreResult<DueDelivery>;

    /// Leases up to `limit` pending deliveries due at `now` until `lease_until`.
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>>;

    /// Pushes a pending delivery back to `until` without counting an attempt (its
    /// destination's circuit breaker is open).
    async fn defer(&self, id: &DeliveryId, until: Timestamp) -> StoreResult<()>;

    /// Brings a pending delivery's next attempt forward to `now` (never later than it was
    /// due); a lease an attempt in flight holds is left alone, so the outbox claims it again
    /// only once that attempt is recorded (which sets the next time) or its lease lapses: never
    /// two attempts at once. `false` when no pending delivery has this id.
    async fn deliver_now(&self, id: &DeliveryId, now: Timestamp) -> StoreResult<bool>;

    /// Releases the delivery leases a previous process of this sidecar held, so its
    /// interrupted attempts are made again at once; returns how many.
    async fn release_leases(&self) -> StoreResult<usize>;

    /// When the next pending delivery is due, if any.
    async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>>;

    /// Records an attempt and what follows from it.
    async fn record_attempt(&self, recorded: AttemptRecorded) -> StoreResult<()>;

    /// Deliveries matching `filter`, newest first, each with its attempts.
    async fn list_deliveries(&self, filter: DeliveryFilter) -> StoreResult<Vec<DeliveryStatus>>;

    /// Puts dead deliveries matching `filter` back in the outbox, due now, with the same id;
    /// returns their ids.
    async fn redrive(&self, filter: DeliveryFilter) -> StoreResult<Vec<DeliveryId>>;

    /// One delivery with its attempts.
    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<DeliveryStatus>>;
}

/// Opens the store the config names, creating and migrating it as needed, as one process of
/// `config.node_id`; each job keeps at most `events_per_job` events.
pub async fn open(config: &StoreConfig, events_per_job: usize) -> StoreResult<Arc<dyn Store>> {
    let node = Node::new(&config.node_id, config.lease);
    Ok(match &config.backend {
        StoreBackend::Sqlite(path) => {
            Arc::new(SqliteStore::open(path, events_per_job, node).await?)
        }
        StoreBackend::Postgres(url) => {
            Arc::new(PgStore::open(&url.0, config.pool_size, events_per_job, node).await?)
        }
    })
}

/// Applies the store's migrations (what `open` does first), and returns how many were new.
pub async fn migrate(config: &StoreConfig) -> StoreResult<usize> {
    match &config.backend {
        StoreBackend::Sqlite(path) => SqliteStore::migrate(path).await,
        StoreBackend::Postgres(url) => PgStore::migrate(&url.0).await,
    }
}
