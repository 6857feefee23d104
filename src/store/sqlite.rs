//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that commits them in groups: every write waiting
//! when a transaction starts joins it, and all of them are acknowledged after the single fsync
//! of its COMMIT. Each write runs in its own savepoint, so one failing write does not undo the
//! others. Reads use a small pool of read-only connections on the blocking pool.

mod sql;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use rusqlite_migration::{M, Migrations};
use tokio::sync::oneshot;

use super::hub::{AttemptRecorded, Change, Hub};
use super::row::{self, Cols, to_json};
use super::*;
use crate::contract::{DeliveryAttempt, DeliveryState};

/// Writes waiting when a transaction starts join it, up to this many.
const MAX_GROUP: usize = 512;
/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 4;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type WriteOp = Box<dyn FnOnce(&mut Transaction<'_>) -> Reply + Send>;

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<ReadPool>,
    hub: Hub,
    events_per_job: usize,
    node: Arc<Node>,
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!(
            "../../migrations/sqlite/0001_jobs_events_outbox.sql"
        )),
        M::up(include_str!("../../migrations/sqlite/0002_lifecycle.sql")),
        M::up(include_str!("../../migrations/sqlite/0003_heartbeat.sql")),
        M::up(include_str!("../../migrations/sqlite/0004_nodes.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0005_claim_per_agent.sql"
        )),
        M::up(include_str!(
            "../../migrations/sqlite/0006_acceptance_order.sql"
        )),
        M::up(include_str!("../../migrations/sqlite/0007_dashboard.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0008_pause_and_keys.sql"
        )),
        M::up(include_str!("../../migrations/sqlite/0009_schedule.sql")),
        M::up(include_str!(
            "../../migrations/sqlite/0010_covering_indexes.sql"
        )),
    ])
}

impl Drop for SqliteStore {
    /// The idle read connections are closed on the writer thread, just before it closes its
    /// own: SQLite (3.50's unix VFS) can deadlock when two threads close connections to the
    /// same file at once (`unixClose` and `unixLock` take its two mutexes in opposite orders).
    fn drop(&mut self) {
        let idle =
            std::mem::take(&mut *self.readers.idle.lock().unwrap_or_else(|p| p.into_inner()));
        if idle.is_empty() {
            return;
        }
        let close: WriteOp = Box::new(move |_txn| {
            drop(idle);
            Box::new(|_commit| {})
        });
        let _ = self.writer.send(close);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`; each job keeps at most
    /// `events_per_job` events.
    pub async fn open(path: &Path, events_per_job: usize, node: Node) -> StoreResult<Self> {
        let path = path.to_owned();
        let conn = tokio::task::spawn_blocking(move || open_writer(&path).map(|c| (c, path)))
            .await
            .map_err(|_| StoreError::Closed)??;
        let (conn, path) = conn;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|_| StoreError::Closed)?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            hub: Hub::default(),
            events_per_job,
            node: Arc::new(node),
        })
    }

    /// Creates and migrates the database at `path`; returns how many migrations were new.
    pub async fn migrate(path: &Path) -> StoreResult<usize> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_configured(&path)?;
            let before = migrations().current_version(&conn)?;
            migrations().to_latest(&mut conn)?;
            let after = migrations().current_version(&conn)?;
            Ok(version_number(after).saturating_sub(version_number(before)))
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in the next group transaction; returns once that transaction is durable.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<StoreResult<T>>();
        let op: WriteOp = Box::new(move |txn| {
            let result = in_savepoint(txn, f);
            Box::new(move |commit: Result<(), String>| {
                let outcome = match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Commit(e)),
                };
                let _ = tx.send(outcome);
            })
        });
        self.writer.send(op).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read-only connection.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let result = f(&conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

impl ReadPool {
    fn take(&self) -> StoreResult<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

fn version_number(v: rusqlite_migration::SchemaVersion) -> usize {
    match v {
        rusqlite_migration::SchemaVersion::Inside(n)
        | rusqlite_migration::SchemaVersion::Outside(n) => n.get(),
        rusqlite_migration::SchemaVersion::NoneSet => 0,
    }
}

/// Opens (creating its folder and file) with the pragmas every connection that writes needs.
fn open_configured(path: &Path) -> StoreResult<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Corrupt {
            job_id: String::new(),
            reason: format!("cannot create {}: {e}", dir.display()),
        })?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a COMMIT is on disk before the trigger is answered 202.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn open_writer(path: &Path) -> StoreResult<Connection> {
    let mut conn = open_configured(path)?;
    migrations().to_latest(&mut conn)?;
    Ok(conn)
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut txn = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(txn) => txn,
            Err(e) => {
                // Dropping the ops drops their reply channels: each caller gets `StoreError::Closed`.
                tracing::error!(error = %e, "store: cannot begin a transaction");
                continue;
            }
        };
        let replies: Vec<Reply> = batch.into_iter().map(|op| op(&mut txn)).collect();
        let commit = txn.commit().map_err(|e| e.to_string());
        if let Err(e) = &commit {
            tracing::error!(error = %e, "store: commit failed");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

fn in_savepoint<T>(
    txn: &mut Transaction<'_>,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    let sp = txn.savepoint()?;
    let result = f(&sp);
    if result.is_ok() {
        sp.commit()?;
    }
    result
}

// ---- row mapping ----

impl row::Cols for Row<'_> {
    fn text(&self, col: usize) -> StoreResult<String> {
        Ok(self.get(col)?)
    }
    fn opt_text(&self, col: usize) -> StoreResult<Option<String>> {
        Ok(self.get(col)?)
    }
    fn int(&self, col: usize) -> StoreResult<i64> {
        Ok(self.get(col)?)
    }
    fn opt_int(&self, col: usize) -> StoreResult<Option<i64>> {
        Ok(self.get(col)?)
    }
    fn count(&self, col: usize) -> StoreResult<u32> {
        Ok(self.get(col)?)
    }
    fn opt_i32(&self, col: usize) -> StoreResult<Option<i32>> {
        Ok(self.get(col)?)
    }
    fn opt_status(&self, col: usize) -> StoreResult<Option<u16>> {
        Ok(self.get(col)?)
    }
    fn bytes(&self, col: usize) -> StoreResult<Vec<u8>> {
        Ok(self.get(col)?)
    }
}

/// Runs `sql` and maps every row with `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut f: impl FnMut(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut found = Vec::new();
    while let Some(r) = rows.next()? {
        found.push(f(r)?);
    }
    Ok(found)
}

/// Runs `sql` and maps its first row, if any, with `f`.
fn first<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(f).transpose()
}

/// Runs `sql`, which must answer one row of one value.
fn value<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> StoreResult<T> {
    Ok(conn.prepare_cached(sql)?.query_row(params, |r| r.get(0))?)
}

fn execute(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> StoreResult<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params)?)
}

fn load_job(conn: &Connection, job_id: JobId) -> StoreResult<Option<JobRecord>> {
    first(conn, sql::JOB, [job_id.to_string()], |r| row::job(r))
}

/// Appends an event to the job's history, returning its seq.
fn append_event(
    conn: &Connection,
    job_id: JobId,
    attempt: u32,
    kind: &str,
    data: &str,
    at: Timestamp,
) -> StoreResult<u64> {
    let seq: i64 = value(
        conn,
        sql::NEXT_SEQ,
        params![job_id.to_string(), at.unix_ms()],
    )?;
    execute(
        conn,
        sql::INSERT_EVENT,
        params![job_id.to_string(), seq, at.unix_ms(), attempt, kind, data],
    )?;
    Ok(u64::try_from(seq).unwrap_or_default())
}

fn append_state(
    conn: &Connection,
    job_id: JobId,
    attempt: u32,
    state: JobState,
    at: Timestamp,
) -> StoreResult<u64> {
    append_event(conn, job_id, attempt, "state", &to_json(&state), at)
}

fn insert_job(conn: &Connection, job: &NewJob) -> StoreResult<()> {
    let r = &job.request;
    execute(
        conn,
        sql::INSERT_JOB,
        params![
            r.job_id.to_string(),
            r.user_id,
            r.agent_name.as_str(),
            r.job_name.as_str(),
            r.priority.rank(),
            to_json(r),
            job.request_sha256,
            job.trace_id,
            job.at.unix_ms(),
            job.sort_at.unix_ms(),
            job.first_state().as_str(),
            job.run_at.map(Timestamp::unix_ms),
            r.concurrency_key,
        ],
    )?;
    append_state(conn, r.job_id, 0, JobState::Received, job.at)?;
    append_state(conn, r.job_id, 0, job.first_state(), job.at)?;
    Ok(())
}

fn enqueue_in(conn: &Connection, job: NewJob) -> StoreResult<Enqueued> {
    let job_id = job.request.job_id;
    let existing = first(conn, sql::JOB_SHA, [job_id.to_string()], |r| r.text(0))?;
    let missing = || row::corrupt(&job_id.to_string(), "job vanished inside its transaction");
    match existing {
        Some(sha) => {
            let record = load_job(conn, job_id)?.ok_or_else(missing)?;
            Ok(if sha == job.request_sha256 {
                Enqueued::Duplicate(record)
            } else {
                Enqueued::Conflict(record)
            })
        }
        None => {
            insert_job(conn, &job)?;
            Ok(Enqueued::Created(
                load_job(conn, job_id)?.ok_or_else(missing)?,
            ))
        }
    }
}

fn claim_in(
    conn: &Connection,
    slots: &[Slot],
    at: Timestamp,
    node: &Node,
) -> StoreResult<Option<JobRecord>> {
    let Some(job_id) = next_queued(conn, slots)? else {
        return Ok(None);
    };
    let job = first(
        conn,
        sql::CLAIM_JOB,
        params![
            at.unix_ms(),
            node.id,
            node.incarnation,
            at.plus(node.lease).unix_ms(),
            job_id
        ],
        |r| row::job(r),
    )?;
    if let Some(job) = &job {
        append_state(conn, job.job_id, job.attempt, JobState::InProgress, at)?;
    }
    Ok(job)
}

/// The queued job to claim next among the agents of `slots`: each agent's first in claim order
/// whose key is below the agent's per-key limit (one index walk each), then the earliest of
/// those.
fn next_queued(conn: &Connection, slots: &[Slot]) -> StoreResult<Option<String>> {
    let mut best: Option<(i64, i64, String)> = None;
    for slot in slots {
        let head = first(
            conn,
            sql::NEXT_QUEUED,
            params![slot.agent.as_str(), slot.max_per_key],
            |r| Ok((r.int(0)?, r.int(1)?, r.text(2)?)),
        )?;
        best = best.into_iter().chain(head).min();
    }
    Ok(best.map(|(_, _, job_id)| job_id))
}

/// Claims job after job in one transaction, so a burst costs one commit, not one per job;
/// paused agents are left out (the pause is read in the same transaction).
fn claim_batch_in(
    conn: &Connection,
    slots: Vec<Slot>,
    mut free: usize,
    at: Timestamp,
    node: &Node,
) -> StoreResult<Vec<JobRecord>> {
    let mut slots = paused_in(conn)?.unpaused(slots);
    let mut claimed = Vec::new();
    while free > 0 {
        slots.retain(|s| s.free > 0);
        let Some(job) = claim_in(conn, &slots, at, node)? else {
            break;
        };
        if let Some(slot) = slots.iter_mut().find(|s| s.agent == job.agent_name) {
            slot.free -= 1;
        }
        free -= 1;
        claimed.push(job);
    }
    Ok(claimed)
}

fn paused_in(conn: &Connection) -> StoreResult<Paused> {
    Ok(Paused::from_scopes(all(conn, sql::PAUSED, [], |r| {
        r.text(0)
    })?))
}

fn fenced(conn: &Connection, job_id: JobId, expected: JobState, attempt: u32) -> StoreResult<()> {
    let current = first(conn, sql::FENCE, [job_id.to_string()], |r| {
        Ok((r.text(0)?, r.count(1)?))
    })?;
    match current {
        Some((state, a)) if state == expected.as_str() && a == attempt => Ok(()),
        _ => Err(StoreError::Stale {
            job_id,
            expected,
            attempt,
        }),
    }
}

fn progress_in(
    conn: &Connection,
    job_id: JobId,
    attempt: u32,
    progress: Progress,
    at: Timestamp,
    keep: usize,
) -> StoreResult<ProgressSnapshot> {
    fenced(conn, job_id, JobState::InProgress, attempt)?;
    let mut snapshot = snapshot(progress, at);
    snapshot.seq = append_event(conn, job_id, attempt, "progress", "null", at)?;
    let json = to_json(&snapshot);
    execute(
        conn,
        sql::SET_EVENT_DATA,
        params![job_id.to_string(), snapshot.seq as i64, json],
    )?;
    execute(
        conn,
        sql::SET_LAST_PROGRESS,
        params![job_id.to_string(), json],
    )?;
    if let Some(oldest_kept) = oldest_kept(snapshot.seq, keep) {
        execute(
            conn,
            sql::TRIM_PROGRESS,
            params![job_id.to_string(), oldest_kept],
        )?;
    }
    Ok(snapshot)
}

/// Records how the job's current attempt ended (nothing when it never ran, or was recorded).
fn record_job_attempt(
    conn: &Connection,
    job_id: JobId,
    (state, at): (JobState, Timestamp),
    exit_code: Option<i32>,
    error: Option<&JobError>,
    retry_at: Option<Timestamp>,
) -> StoreResult<()> {
    execute(
        conn,
        sql::RECORD_JOB_ATTEMPT,
        params![
            job_id.to_string(),
            at.unix_ms(),
            state.as_str(),
            exit_code,
            error.map(to_json),
            retry_at.map(Timestamp::unix_ms),
        ],
    )?;
    Ok(())
}

fn retry_later_in(conn: &Connection, r: &RetryLater) -> StoreResult<()> {
    fenced(conn, r.job_id, JobState::InProgress, r.attempt)?;
    record_job_attempt(
        conn,
        r.job_id,
        (r.state, r.at),
        r.exit_code,
        r.error.as_ref(),
        Some(r.run_at),
    )?;
    execute(
        conn,
        sql::RETRY_LATER,
        params![
            r.job_id.to_string(),
            r.run_at.unix_ms(),
            r.at.unix_ms(),
            r.schedule_key.unix_ms()
        ],
    )?;
    append_state(conn, r.job_id, r.attempt, JobState::Scheduled, r.at)?;
    Ok(())
}

fn promote_in(conn: &Connection, now: Timestamp) -> StoreResult<Vec<JobId>> {
    let due = all(
        conn,
        sql::PROMOTE_DUE,
        params![now.unix_ms(), PROMOTE_BATCH],
        |r| Ok((r.parsed::<JobId>(0)?, r.count(1)?)),
    )?;
    for (job_id, attempt) in &due {
        append_state(conn, *job_id, *attempt, JobState::Queued, now)?;
    }
    Ok(due.into_iter().map(|(job_id, _)| job_id).collect())
}

fn finish_in(conn: &Connection, f: Finish) -> StoreResult<DueDelivery> {
    fenced(conn, f.job_id, f.from, f.attempt)?;
    f.allowed()?;
    record_job_attempt(
        conn,
        f.job_id,
        (f.state, f.at),
        f.exit_code,
        f.error.as_ref(),
        None,
    )?;
    execute(
        conn,
        sql::FINISH_JOB,
        params![
            f.job_id.to_string(),
            f.state.as_str(),
            f.at.unix_ms(),
            f.exit_code,
            f.error.as_ref().map(to_json),
            to_json(&f.output_index),
        ],
    )?;
    append_state(conn, f.job_id, f.attempt, f.state, f.at)?;
    execute(
        conn,
        sql::INSERT_COMPLETION,
        params![
            f.completion.id.as_str(),
            f.job_id.to_string(),
            f.completion.url.as_str(),
            f.completion.url.origin().ascii_serialization(),
            f.completion.body,
            f.at.unix_ms(),
            f.lease_until.unix_ms(),
        ],
    )?;
    let job = load_job(conn, f.job_id)?.ok_or_else(|| f.stale())?;
    Ok(f.into_due(job))
}

fn view_in(conn: &Connection, job_id: JobId) -> StoreResult<Option<JobView>> {
    let Some(job) = load_job(conn, job_id)? else {
        return Ok(None);
    };
    let transitions = all(conn, sql::TRANSITIONS, [job_id.to_string()], |r| {
        row::transition(job_id, r)
    })?;
    let filter = DeliveryFilter::one(None);
    let delivery = deliveries_in(conn, &filter, Some(job_id))?
        .into_iter()
        .next();
    let attempts = all(conn, sql::JOB_ATTEMPTS, [job_id.to_string()], |r| {
        row::job_attempt(r)
    })?;
    Ok(Some(JobView {
        job,
        transitions,
        delivery,
        attempts,
    }))
}

fn claim_deliveries_in(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    // All of the UPDATE happens at its first step; the job is read while its rows are returned.
    all(
        conn,
        sql::CLAIM_DUE_DELIVERIES,
        params![now.unix_ms(), lease_until.unix_ms(), limit as i64],
        |d| {
            let job_id: JobId = d.parsed(1)?;
            let mut stmt = conn.prepare_cached(sql::DUE_JOB)?;
            let mut jobs = stmt.query([job_id.to_string()])?;
            let j = jobs.next()?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            row::due(d, j, 0)
        },
    )
}

fn record_attempt_in(
    conn: &Connection,
    id: &DeliveryId,
    attempt: DeliveryAttempt,
    outcome: AttemptOutcome,
) -> StoreResult<()> {
    let n: u32 = value(
        conn,
        sql::COUNT_ATTEMPT,
        params![id.as_str(), attempt.status_code, attempt.error],
    )?;
    execute(
        conn,
        sql::INSERT_ATTEMPT,
        params![
            id.as_str(),
            n,
            attempt.at.unix_ms(),
            attempt.status_code,
            attempt.error,
            attempt.latency_ms as i64,
        ],
    )?;
    let (state, next, delivered) = outcome.columns(attempt.at);
    execute(
        conn,
        sql::SETTLE_DELIVERY,
        params![id.as_str(), state, next, delivered],
    )?;
    Ok(())
}

/// `WHERE` clause and arguments of a delivery filter (`d` is deliveries, `j` jobs).
/// `WHERE` clause and arguments of `conditions`.
fn where_sql(conditions: Vec<Condition>) -> (String, Vec<rusqlite::types::Value>) {
    let (clause, values) = Condition::render(conditions, 1, |_| "?".to_owned());
    let args = values
        .into_iter()
        .map(|v| match v {
            FilterValue::Text(t) => t.into(),
            FilterValue::Int(n) => n.into(),
        })
        .collect();
    (clause, args)
}

fn filter_sql(f: &DeliveryFilter, job_id: Option<JobId>) -> (String, Vec<rusqlite::types::Value>) {
    where_sql(f.conditions(job_id))
}

fn deliveries_in(
    conn: &Connection,
    f: &DeliveryFilter,
    job_id: Option<JobId>,
) -> StoreResult<Vec<DeliveryStatus>> {
    let (filter, mut args) = filter_sql(f, job_id);
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    let sql = sql::DELIVERIES.replace("{filter}", &filter);
    let mut found = all(conn, &sql, rusqlite::params_from_iter(args), |r| {
        row::delivery(r)
    })?;
    for delivery in &mut found {
        delivery.history = all(conn, sql::ATTEMPTS, [delivery.delivery_id.as_str()], |r| {
            row::attempt(r)
        })?;
    }
    Ok(found)
}

fn redrive_in(
    conn: &Connection,
    f: &DeliveryFilter,
    now: Timestamp,
) -> StoreResult<Vec<DeliveryId>> {
    let dead = DeliveryFilter {
        state: Some(DeliveryState::Dead),
        ..f.clone()
    };
    let (filter, mut args) = filter_sql(&dead, None);
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    args.insert(0, now.unix_ms().into());
    let sql = sql::REDRIVE.replace("{filter}", &filter);
    all(conn, &sql, rusqlite::params_from_iter(args), |r| {
        r.parsed(0)
    })
}

fn events_in(
    conn: &Connection,
    job_id: JobId,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<JobEvent>> {
    all(
        conn,
        sql::EVENTS_AFTER,
        params![
            job_id.to_string(),
            i64::try_from(after).unwrap_or(i64::MAX),
            limit as i64
        ],
        |r| row::event(job_id, r),
    )
}

fn list_jobs_in(conn: &Connection, f: &JobFilter) -> StoreResult<Vec<JobRecord>> {
    let (filter, mut args) = where_sql(f.conditions());
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    let sql = sql::LIST_JOBS.replace("{filter}", &filter);
    all(conn, &sql, rusqlite::params_from_iter(args), |r| {
        row::job(r)
    })
}

fn requeue_in(conn: &Connection, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
    fenced(conn, job_id, JobState::InProgress, attempt)?;
    record_job_attempt(conn, job_id, (JobState::Queued, at), None, None, None)?;
    execute(
        conn,
        sql::REQUEUE,
        params![job_id.to_string(), at.unix_ms()],
    )?;
    append_state(conn, job_id, attempt, JobState::Queued, at)?;
    Ok(())
}

fn heartbeat_in(conn: &Connection, node: &Node, beat: &Beat) -> StoreResult<BeatAnswer> {
    let agents: Vec<&str> = beat.agents.iter().map(AgentName::as_str).collect();
    execute(
        conn,
        sql::UPSERT_NODE,
        params![
            node.id,
            node.incarnation,
            to_json(&agents),
            beat.running.len() as i64,
            beat.max_concurrent as i64,
            beat.at.unix_ms(),
        ],
    )?;
    let mut renew = conn.prepare_cached(sql::RENEW_LEASE)?;
    let lease_until = beat.at.plus(node.lease).unix_ms();
    BeatAnswer::sort(&beat.running, |job_id, attempt| {
        Ok(renew
            .query_row(
                params![job_id.to_string(), attempt, lease_until, node.incarnation],
                |r| r.get(0),
            )
            .optional()?)
    })
}

fn prune_in(conn: &Connection, before: Timestamp, limit: usize) -> StoreResult<Vec<Pruned>> {
    all(
        conn,
        sql::PRUNE,
        params![before.unix_ms(), limit as i64],
        |r| row::pruned(r),
    )
}
#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, job: NewJob) -> StoreResult<Enqueued> {
        let job_id = job.request.job_id;
        let enqueued = self.write(move |conn| enqueue_in(conn, job)).await?;
        if matches!(enqueued, Enqueued::Created(_)) {
            self.hub.tell(Change::Accepted(job_id));
        }
        Ok(enqueued)
    }

    async fn job(&self, job_id: JobId) -> StoreResult<Option<JobRecord>> {
        self.read(move |conn| load_job(conn, job_id)).await
    }

    async fn job_view(&self, job_id: JobId) -> StoreResult<Option<JobView>> {
        self.read(move |conn| view_in(conn, job_id)).await
    }

    async fn claim(
        &self,
        slots: Vec<Slot>,
        free: usize,
        at: Timestamp,
    ) -> StoreResult<Vec<JobRecord>> {
        let node = Arc::clone(&self.node);
        let claimed = self
            .write(move |conn| claim_batch_in(conn, slots, free, at, &node))
            .await?;
        for job in &claimed {
            self.hub.tell(Change::Claimed(job.job_id));
        }
        Ok(claimed)
    }

    async fn set_paused(
        &self,
        agent: Option<AgentName>,
        paused: bool,
        at: Timestamp,
    ) -> StoreResult<bool> {
        self.write(move |conn| {
            let scope = Paused::scope(agent.as_ref());
            let changed = match paused {
                true => execute(conn, sql::PAUSE, params![scope, at.unix_ms()])?,
                false => execute(conn, sql::RESUME, [scope])?,
            };
            Ok(changed > 0)
        })
        .await
    }

    async fn paused(&self) -> StoreResult<Paused> {
        self.read(paused_in).await
    }

    async fn agent_loads(&self) -> StoreResult<std::collections::BTreeMap<AgentName, AgentLoad>> {
        self.read(|conn| {
            Ok(all(conn, sql::AGENT_LOADS, [], |r| row::load(r))?
                .into_iter()
                .collect())
        })
        .await
    }

    async fn in_progress(&self) -> StoreResult<Vec<JobRecord>> {
        self.read(|conn| all(conn, sql::IN_PROGRESS, [], |r| row::job(r)))
            .await
    }

    async fn orphans(&self, now: Timestamp) -> StoreResult<Vec<JobRecord>> {
        let node = Arc::clone(&self.node);
        self.read(move |conn| {
            all(
                conn,
                sql::ORPHANS,
                params![now.unix_ms(), node.id, node.incarnation],
                |r| row::job(r),
            )
        })
        .await
    }

    async fn heartbeat(&self, beat: Beat) -> StoreResult<BeatAnswer> {
        let node = Arc::clone(&self.node);
        self.write(move |conn| heartbeat_in(conn, &node, &beat))
            .await
    }

    async fn nodes(&self, since: Timestamp) -> StoreResult<Vec<crate::contract::NodeStatus>> {
        self.read(move |conn| all(conn, sql::NODES, [since.unix_ms()], |r| row::node(r)))
            .await
    }

    async fn lead(&self) -> StoreResult<bool> {
        // One process owns an SQLite file: it always leads.
        Ok(true)
    }

    fn signals(&self) -> tokio::sync::broadcast::Receiver<Signal> {
        // No other process shares the file: a closed channel, so its follower ends at once.
        tokio::sync::broadcast::channel(1).1
    }

    async fn record_progress(
        &self,
        job_id: JobId,
        attempt: u32,
        progress: Progress,
        at: Timestamp,
    ) -> StoreResult<ProgressSnapshot> {
        let keep = self.events_per_job;
        let snapshot = self
            .write(move |conn| progress_in(conn, job_id, attempt, progress, at, keep))
            .await?;
        self.hub.tell(Change::Progress(job_id));
        Ok(snapshot)
    }

    async fn finish(&self, finish: Finish) -> StoreResult<DueDelivery> {
        let job_id = finish.job_id;
        let due = self.write(move |conn| finish_in(conn, finish)).await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(due)
    }

    async fn list_jobs(&self, filter: JobFilter) -> StoreResult<Vec<JobRecord>> {
        self.read(move |conn| list_jobs_in(conn, &filter)).await
    }

    async fn queued_before(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<JobRecord>> {
        self.read(move |conn| {
            all(
                conn,
                sql::QUEUED_BEFORE,
                params![before.unix_ms(), limit as i64],
                |r| row::job(r),
            )
        })
        .await
    }

    async fn request_cancel(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
        self.write(move |conn| {
            fenced(conn, job_id, JobState::InProgress, attempt)?;
            execute(
                conn,
                sql::REQUEST_CANCEL,
                params![job_id.to_string(), at.unix_ms()],
            )?;
            Ok(())
        })
        .await
    }

    async fn requeue(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
        self.write(move |conn| requeue_in(conn, job_id, attempt, at))
            .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn rerun(
        &self,
        job_id: JobId,
        from: JobState,
        attempt: u32,
        at: Timestamp,
        schedule_key: Timestamp,
    ) -> StoreResult<()> {
        self.write(move |conn| {
            fenced(conn, job_id, from, attempt)?;
            execute(
                conn,
                sql::RERUN,
                params![job_id.to_string(), at.unix_ms(), schedule_key.unix_ms()],
            )?;
            append_state(conn, job_id, attempt + 1, JobState::Queued, at)?;
            Ok(())
        })
        .await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn retry_later(&self, retry: RetryLater) -> StoreResult<()> {
        let job_id = retry.job_id;
        self.write(move |conn| retry_later_in(conn, &retry)).await?;
        self.hub.tell(Change::Moved(job_id));
        Ok(())
    }

    async fn promote_due(&self, now: Timestamp) -> StoreResult<usize> {
        let promoted = self.write(move |conn| promote_in(conn, now)).await?;
        for job_id in &promoted {
            self.hub.tell(Change::Moved(*job_id));
        }
        Ok(promoted.len())
    }

    async fn next_run_at(&self) -> StoreResult<Option<Timestamp>> {
        self.read(|conn| {
            let next: Option<i64> = value(conn, sql::NEXT_RUN_AT, [])?;
            Ok(next.map(Timestamp::from_unix_ms))
        })
        .await
    }

    async fn events_after(
        &self,
        job_id: JobId,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<JobEvent>> {
        self.read(move |conn| events_in(conn, job_id, after_seq, limit))
            .await
    }

    async fn changes(&self, asks: Vec<ChangeAsk>, limit: usize) -> StoreResult<Vec<Changes>> {
        self.read(move |conn| {
            // One snapshot for the whole batch.
            let tx = conn.unchecked_transaction()?;
            let changes = asks
                .iter()
                .map(|ask| {
                    Ok(Changes {
                        events: events_in(&tx, ask.job_id, ask.after_seq, limit)?,
                        view: if ask.view {
                            view_in(&tx, ask.job_id)?
                        } else {
                            None
                        },
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?;
            tx.finish()?;
            Ok(changes)
        })
        .await
    }

    fn subscribe(&self, job_id: JobId) -> tokio::sync::watch::Receiver<()> {
        self.hub.subscribe(job_id)
    }

    fn tap(&self, tap: Tap) {
        self.hub.set_tap(tap);
    }

    async fn count_jobs(&self, filter: JobFilter) -> StoreResult<Vec<(JobState, u64)>> {
        self.read(move |conn| {
            let (clause, args) = where_sql(
                JobFilter {
                    after: None,
                    ..filter
                }
                .conditions(),
            );
            let sql = sql::COUNT_JOBS.replace("{filter}", &clause);
            all(conn, &sql, rusqlite::params_from_iter(args), |r| {
                row::state_count(r)
            })
        })
        .await
    }

    async fn overview(&self, since: Timestamp) -> StoreResult<crate::overview::OverviewRows> {
        self.read(move |conn| {
            let since = since.unix_ms();
            let outbox = all(conn, sql::OUTBOX_STATES, [], |r| {
                Ok((r.text(0)?, u64::try_from(r.int(1)?).unwrap_or(0)))
            })?;
            let (pending_deliveries, dead_letters) = row::outbox_counts(&outbox);
            Ok(crate::overview::OverviewRows {
                counts: all(conn, sql::COUNTS_SINCE, [since], |r| {
                    row::agent_state_count(r)
                })?,
                queues: all(conn, sql::QUEUES, [], |r| row::queue(r))?,
                running: all(conn, sql::RUNNING_PER_AGENT, [], |r| row::queued(r))?,
                pending_deliveries,
                dead_letters,
                finished: all(conn, sql::FINISHED_SINCE, [since], |r| row::finished(r))?,
                attempts: all(conn, sql::ATTEMPTS_SINCE, [since], |r| {
                    row::callback_sample(r)
                })?,
            })
        })
        .await
    }

    async fn gauges(&self) -> StoreResult<crate::telemetry::StoreGauges> {
        self.read(|conn| {
            let queued = all(conn, sql::QUEUES, [], |r| row::queue(r))?;
            let dead_letters: i64 = value(conn, sql::DEAD_LETTERS, [])?;
            let dead_letters = u64::try_from(dead_letters).unwrap_or(0);
            Ok(crate::telemetry::StoreGauges {
                queued,
                dead_letters,
            })
        })
        .await
    }

    async fn check_writable(&self) -> StoreResult<()> {
        let now = Timestamp::now().unix_ms();
        self.write(move |conn| {
            execute(conn, sql::TOUCH_HEARTBEAT, [now])?;
            Ok(())
        })
        .await
    }

    async fn prune(&self, before: Timestamp, limit: usize) -> StoreResult<Vec<Pruned>> {
        self.write(move |conn| prune_in(conn, before, limit)).await
    }

    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<DueDelivery>> {
        self.write(move |conn| claim_deliveries_in(conn, now, lease_until, limit))
            .await
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<Timestamp>> {
        self.read(|conn| {
            let next: Option<i64> = value(conn, sql::NEXT_DUE, [])?;
            Ok(next.map(Timestamp::from_unix_ms))
        })
        .await
    }

    async fn record_attempt(&self, recorded: AttemptRecorded) -> StoreResult<()> {
        let (id, attempt, outcome) = (
            recorded.delivery_id.clone(),
            recorded.attempt.clone(),
            recorded.outcome,
        );
        self.write(move |conn| record_attempt_in(conn, &id, attempt, outcome))
            .await?;
        self.hub.tell(Change::Attempt(Box::new(recorded)));
        Ok(())
    }

    async fn defer(&self, id: &DeliveryId, until: Timestamp) -> StoreResult<()> {
        let id = id.clone();
        self.write(move |conn| {
            execute(conn, sql::DEFER, params![id.as_str(), until.unix_ms()])?;
            Ok(())
        })
        .await
    }

    async fn deliver_now(&self, id: &DeliveryId, now: Timestamp) -> StoreResult<bool> {
        let id = id.clone();
        self.write(move |conn| {
            Ok(execute(conn, sql::DELIVER_NOW, params![id.as_str(), now.unix_ms()])? > 0)
        })
        .await
    }

    async fn release_leases(&self) -> StoreResult<usize> {
        // One process owns an SQLite file, so every lease in it belonged to a dead process.
        self.write(|conn| execute(conn, sql::RELEASE_LEASES, []))
            .await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> StoreResult<Vec<DeliveryStatus>> {
        self.read(move |conn| deliveries_in(conn, &filter, None))
            .await
    }

    async fn redrive(&self, filter: DeliveryFilter) -> StoreResult<Vec<DeliveryId>> {
        let now = Timestamp::now();
        self.write(move |conn| redrive_in(conn, &filter, now)).await
    }

    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<DeliveryStatus>> {
        let filter = DeliveryFilter::one(Some(id));
        self.read(move |conn| Ok(deliveries_in(conn, &filter, None)?.into_iter().next()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(vec![0; stmt.parameter_count()]),
                |r| r.get::<_, String>(3),
            )
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn the_queue_and_outbox_claims_walk_an_index_in_order_without_sorting() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        for (sql, index) in [
            (sql::NEXT_QUEUED, "jobs_agent_queue"),
            (sql::NEXT_RUN_AT, "jobs_scheduled"),
            (sql::NEXT_ACCEPTED, "jobs_accepted"),
            (sql::CLAIM_DUE_DELIVERIES, "deliveries_due"),
        ] {
            let plan = plan(&conn, sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
        // The per-key count of a candidate is one lookup among the running jobs.
        let plan = plan(&conn, sql::NEXT_QUEUED);
        assert!(plan.contains("jobs_running_key"), "{plan}");
    }
}
