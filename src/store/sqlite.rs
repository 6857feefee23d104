//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through one writer thread that commits them in groups: every write waiting
//! when a transaction starts joins it, and all of them are acknowledged after the single fsync
//! of its COMMIT. Each write runs in its own savepoint, so one failing write does not undo the
//! others. Reads use a small pool of read-only connections on the blocking pool.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use rusqlite_migration::{M, Migrations};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::hub::{AttemptRecorded, Change, Hub};
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

const JOB_COLUMNS: &str = "job_id, user_id, agent_name, job_name, priority, state, attempt, request, \
     trace_id, created_at, started_at, finished_at, exit_code, error, output_index, last_progress, request_sha256, \
     cancel_requested_at, queued_at";

fn conversion(col: usize, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        col,
        rusqlite::types::Type::Text,
        e.to_string().into(),
    )
}

fn parsed<T: FromStr>(row: &Row<'_>, col: usize) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    row.get::<_, String>(col)?
        .parse()
        .map_err(|e| conversion(col, e))
}

fn json_col<T: DeserializeOwned>(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<T>> {
    row.get::<_, Option<String>>(col)?
        .map(|text| serde_json::from_str(&text).map_err(|e| conversion(col, e)))
        .transpose()
}

fn ts(row: &Row<'_>, col: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row.get::<_, Option<i64>>(col)?.map(Timestamp::from_unix_ms))
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        job_id: parsed(row, 0)?,
        user_id: row.get(1)?,
        agent_name: parsed(row, 2)?,
        job_name: parsed(row, 3)?,
        priority: Priority::from_rank(row.get(4)?),
        state: parsed(row, 5)?,
        attempt: row.get(6)?,
        request: json_col(row, 7)?.ok_or_else(|| conversion(7, "request is NULL"))?,
        trace_id: row.get(8)?,
        created_at: Timestamp::from_unix_ms(row.get(9)?),
        started_at: ts(row, 10)?,
        finished_at: ts(row, 11)?,
        exit_code: row.get(12)?,
        error: json_col(row, 13)?,
        output_index: json_col(row, 14)?,
        last_progress: json_col(row, 15)?,
        request_sha256: row.get(16)?,
        cancel_requested: row.get::<_, Option<i64>>(17)?.is_some(),
        queued_at: Timestamp::from_unix_ms(row.get(18)?),
    })
}

fn load_job(conn: &Connection, job_id: JobId) -> StoreResult<Option<JobRecord>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([job_id.to_string()], job_from_row)
        .optional()?)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Our own types always serialize; a failure here is a programming error caught by tests.
    serde_json::to_string(value).unwrap_or_default()
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
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE jobs SET last_seq = last_seq + 1, updated_at = ?2 WHERE job_id = ?1 RETURNING last_seq",
        )?
        .query_row(params![job_id.to_string(), at.unix_ms()], |r| r.get(0))?;
    conn.prepare_cached(
        "INSERT INTO job_events (job_id, seq, at, attempt, kind, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![job_id.to_string(), seq, at.unix_ms(), attempt, kind, data])?;
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

/// The next acceptance number: ties of `schedule_key` are broken by it (one index step).
const NEXT_ACCEPTED: &str = "SELECT coalesce(max(accepted_seq), 0) + 1 FROM jobs";

fn insert_job(conn: &Connection, job: &NewJob) -> StoreResult<()> {
    let r = &job.request;
    conn.prepare_cached(&format!(
        "INSERT INTO jobs (job_id, user_id, agent_name, job_name, priority, state, request, request_sha256, \
         trace_id, created_at, queued_at, updated_at, schedule_key, accepted_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, ?9, ?9, ?9, ?10, ({NEXT_ACCEPTED}))"
    ))?
    .execute(params![
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
    ])?;
    append_state(conn, r.job_id, 0, JobState::Received, job.at)?;
    append_state(conn, r.job_id, 0, JobState::Queued, job.at)?;
    Ok(())
}

fn enqueue_in(conn: &Connection, job: NewJob) -> StoreResult<Enqueued> {
    let job_id = job.request.job_id;
    let existing: Option<String> = conn
        .prepare_cached("SELECT request_sha256 FROM jobs WHERE job_id = ?1")?
        .query_row([job_id.to_string()], |r| r.get(0))
        .optional()?;
    let missing = || StoreError::Corrupt {
        job_id: job_id.to_string(),
        reason: "job vanished inside its transaction".into(),
    };
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
    agents: &[AgentName],
    at: Timestamp,
    node: &Node,
) -> StoreResult<Option<JobRecord>> {
    let Some(job_id) = next_queued(conn, agents)? else {
        return Ok(None);
    };
    let sql = format!(
        "UPDATE jobs SET state = 'in_progress', attempt = attempt + 1, started_at = ?1, updated_at = ?1, \
         node_id = ?2, incarnation = ?3, lease_until = ?4 WHERE job_id = ?5 AND state = 'queued' \
         RETURNING {JOB_COLUMNS}"
    );
    let job = conn
        .prepare_cached(&sql)?
        .query_row(
            params![
                at.unix_ms(),
                node.id,
                node.incarnation,
                at.plus(node.lease).unix_ms(),
                job_id
            ],
            job_from_row,
        )
        .optional()?;
    if let Some(job) = &job {
        append_state(conn, job.job_id, job.attempt, JobState::InProgress, at)?;
    }
    Ok(job)
}

/// An agent's next queued job in claim order.
const NEXT_QUEUED: &str = "SELECT schedule_key, accepted_seq, job_id FROM jobs \
     WHERE state = 'queued' AND agent_name = ?1 ORDER BY schedule_key, accepted_seq LIMIT 1";

/// Leases the due completions, earliest first; the partial index walks them in that order
/// (the planner would otherwise sort every pending one).
const CLAIM_DUE_DELIVERIES: &str = "UPDATE deliveries SET lease_until = ?2 WHERE delivery_id IN ( \
     SELECT delivery_id FROM deliveries INDEXED BY deliveries_due WHERE state = 'pending' AND next_attempt_at <= ?1 \
     AND (lease_until IS NULL OR lease_until <= ?1) ORDER BY next_attempt_at LIMIT ?3) \
     RETURNING delivery_id, job_id, url, body, attempts, coalesce(redriven_at, created_at), last_status_code";

/// The queued job to claim next among `agents`: each agent's first in claim order (one index
/// step each), then the earliest of those.
fn next_queued(conn: &Connection, agents: &[AgentName]) -> StoreResult<Option<String>> {
    let mut first = conn.prepare_cached(NEXT_QUEUED)?;
    let mut best: Option<(i64, i64, String)> = None;
    for agent in agents {
        let head: Option<(i64, i64, String)> = first
            .query_row([agent.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        best = best.into_iter().chain(head).min();
    }
    Ok(best.map(|(_, _, job_id)| job_id))
}

/// Claims job after job in one transaction, so a burst costs one commit, not one per job.
fn claim_batch_in(
    conn: &Connection,
    mut slots: Vec<(AgentName, usize)>,
    mut free: usize,
    at: Timestamp,
    node: &Node,
) -> StoreResult<Vec<JobRecord>> {
    let mut claimed = Vec::new();
    while free > 0 {
        let agents: Vec<AgentName> = slots
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(a, _)| a.clone())
            .collect();
        let Some(job) = claim_in(conn, &agents, at, node)? else {
            break;
        };
        if let Some(slot) = slots.iter_mut().find(|(a, _)| *a == job.agent_name) {
            slot.1 -= 1;
        }
        free -= 1;
        claimed.push(job);
    }
    Ok(claimed)
}

fn fenced(conn: &Connection, job_id: JobId, expected: JobState, attempt: u32) -> StoreResult<()> {
    let current: Option<(String, u32)> = conn
        .prepare_cached("SELECT state, attempt FROM jobs WHERE job_id = ?1")?
        .query_row([job_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
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
    let mut snapshot = ProgressSnapshot {
        seq: 0,
        stage: progress.stage,
        message: progress.message,
        percent: progress.percent,
        timestamp: at,
    };
    snapshot.seq = append_event(conn, job_id, attempt, "progress", "null", at)?;
    let json = to_json(&snapshot);
    conn.prepare_cached("UPDATE job_events SET data = ?3 WHERE job_id = ?1 AND seq = ?2")?
        .execute(params![job_id.to_string(), snapshot.seq as i64, json])?;
    conn.prepare_cached("UPDATE jobs SET last_progress = ?2 WHERE job_id = ?1")?
        .execute(params![job_id.to_string(), json])?;
    // Bounded history: progress older than the newest `keep` events goes; states stay.
    let oldest_kept = i64::try_from(snapshot.seq).unwrap_or(i64::MAX) - keep as i64;
    if oldest_kept > 0 {
        conn.prepare_cached(
            "DELETE FROM job_events WHERE job_id = ?1 AND kind = 'progress' AND seq <= ?2",
        )?
        .execute(params![job_id.to_string(), oldest_kept])?;
    }
    Ok(snapshot)
}

fn finish_in(conn: &Connection, f: Finish) -> StoreResult<DueDelivery> {
    fenced(conn, f.job_id, f.from, f.attempt)?;
    if !f.from.can_become(f.state) {
        return Err(StoreError::Stale {
            job_id: f.job_id,
            expected: f.from,
            attempt: f.attempt,
        });
    }
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, finished_at = ?3, updated_at = ?3, exit_code = ?4, error = ?5, \
         output_index = ?6 WHERE job_id = ?1",
    )?
    .execute(params![
        f.job_id.to_string(),
        f.state.as_str(),
        f.at.unix_ms(),
        f.exit_code,
        f.error.as_ref().map(to_json),
        to_json(&f.output_index),
    ])?;
    append_state(conn, f.job_id, f.attempt, f.state, f.at)?;
    conn.prepare_cached(
        "INSERT INTO deliveries (delivery_id, job_id, kind, url, destination, body, state, created_at, \
         next_attempt_at, lease_until) VALUES (?1, ?2, 'completion', ?3, ?4, ?5, 'pending', ?6, ?6, ?7)",
    )?
    .execute(params![
        f.completion.id.as_str(),
        f.job_id.to_string(),
        f.completion.url.as_str(),
        f.completion.url.origin().ascii_serialization(),
        f.completion.body,
        f.at.unix_ms(),
        f.lease_until.unix_ms(),
    ])?;
    let job = load_job(conn, f.job_id)?.ok_or(StoreError::Stale {
        job_id: f.job_id,
        expected: f.from,
        attempt: f.attempt,
    })?;
    Ok(f.into_due(job))
}

fn view_in(conn: &Connection, job_id: JobId) -> StoreResult<Option<JobView>> {
    let Some(job) = load_job(conn, job_id)? else {
        return Ok(None);
    };
    let transitions = conn
        .prepare_cached("SELECT data, at, attempt FROM job_events WHERE job_id = ?1 AND kind = 'state' ORDER BY seq")?
        .query_map([job_id.to_string()], |r| {
            let state: JobState = serde_json::from_str(&r.get::<_, String>(0)?).map_err(|e| conversion(0, e))?;
            Ok(Transition {
                state,
                at: Timestamp::from_unix_ms(r.get(1)?),
                attempt: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let filter = DeliveryFilter {
        limit: 1,
        ..DeliveryFilter::default()
    };
    let delivery = deliveries_in(conn, &filter, Some(job_id))?
        .into_iter()
        .next();
    Ok(Some(JobView {
        job,
        transitions,
        delivery,
    }))
}

fn claim_deliveries_in(
    conn: &Connection,
    now: Timestamp,
    lease_until: Timestamp,
    limit: usize,
) -> StoreResult<Vec<DueDelivery>> {
    let mut stmt = conn.prepare_cached(CLAIM_DUE_DELIVERIES)?;
    let rows = stmt
        .query_map(
            params![now.unix_ms(), lease_until.unix_ms(), limit as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<u16>>(6)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(id, job_id, url, body, attempts, age_from, last_status_code)| {
                let corrupt = |reason: String| StoreError::Corrupt {
                    job_id: job_id.clone(),
                    reason,
                };
                let job: JobId = job_id
                    .parse()
                    .map_err(|e: crate::contract::IdError| corrupt(e.to_string()))?;
                // Only the two JWT claims and the log fields are needed, not the whole row.
                let (job_name, status, trace_id, agent_name): (String, String, String, String) =
                    conn.prepare_cached(
                        "SELECT job_name, state, trace_id, agent_name FROM jobs WHERE job_id = ?1",
                    )?
                    .query_row([job.to_string()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?;
                Ok(DueDelivery {
                    id: id
                        .parse()
                        .map_err(|e: std::convert::Infallible| corrupt(e.to_string()))?,
                    job_id: job,
                    job_name: job_name
                        .parse()
                        .map_err(|e: crate::contract::IdError| corrupt(e.to_string()))?,
                    status: status
                        .parse()
                        .map_err(|e: crate::contract::UnknownState| corrupt(e.to_string()))?,
                    url: url
                        .parse()
                        .map_err(|e: url::ParseError| corrupt(e.to_string()))?,
                    body,
                    attempts,
                    last_status_code,
                    age_from: Timestamp::from_unix_ms(age_from),
                    trace_id,
                    agent_name,
                })
            },
        )
        .collect()
}

fn record_attempt_in(
    conn: &Connection,
    id: &DeliveryId,
    attempt: DeliveryAttempt,
    outcome: AttemptOutcome,
) -> StoreResult<()> {
    let n: u32 = conn
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL, last_status_code = ?2, last_error = ?3 \
             WHERE delivery_id = ?1 RETURNING attempts",
        )?
        .query_row(params![id.as_str(), attempt.status_code, attempt.error], |r| r.get(0))?;
    conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, error, latency_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id.as_str(),
        n,
        attempt.at.unix_ms(),
        attempt.status_code,
        attempt.error,
        attempt.latency_ms as i64,
    ])?;
    let (state, next, delivered) = outcome.columns(attempt.at);
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, next_attempt_at = ?3, delivered_at = ?4 WHERE delivery_id = ?1",
    )?
    .execute(params![id.as_str(), state, next, delivered])?;
    Ok(())
}

/// `WHERE` clause and arguments of a delivery filter (`d` is deliveries, `j` jobs).
fn filter_sql(f: &DeliveryFilter, job_id: Option<JobId>) -> (String, Vec<rusqlite::types::Value>) {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    for (comparison, value) in f.conditions(job_id) {
        clauses.push(format!("{comparison} ?"));
        args.push(match value {
            FilterValue::Text(t) => t.into(),
            FilterValue::Millis(ms) => ms.into(),
        });
    }
    (clauses.join(" AND "), args)
}

fn deliveries_in(
    conn: &Connection,
    f: &DeliveryFilter,
    job_id: Option<JobId>,
) -> StoreResult<Vec<DeliveryStatus>> {
    let (filter, mut args) = filter_sql(f, job_id);
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    let sql = format!(
        "SELECT d.delivery_id, d.job_id, j.job_name, d.destination, d.state, d.attempts, d.created_at, \
                d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at \
         FROM deliveries d JOIN jobs j ON j.job_id = d.job_id WHERE {filter} \
         ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT ?"
    );
    let mut found = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| {
            let state: DeliveryState = parsed(r, 4)?;
            Ok(DeliveryStatus {
                delivery_id: parsed(r, 0)?,
                job_id: parsed(r, 1)?,
                job_name: parsed(r, 2)?,
                destination: r.get(3)?,
                state,
                attempts: r.get(5)?,
                created_at: Timestamp::from_unix_ms(r.get(6)?),
                last_status_code: r.get(7)?,
                last_error: r.get(8)?,
                next_attempt_at: ts(r, 9)?.filter(|_| state == DeliveryState::Pending),
                delivered_at: ts(r, 10)?,
                history: Vec::new(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for delivery in &mut found {
        delivery.history = history_in(conn, &delivery.delivery_id)?;
    }
    Ok(found)
}

fn history_in(conn: &Connection, id: &DeliveryId) -> StoreResult<Vec<DeliveryAttempt>> {
    Ok(conn
        .prepare_cached(
            "SELECT at, status_code, error, latency_ms FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY attempt",
        )?
        .query_map([id.as_str()], |r| {
            Ok(DeliveryAttempt {
                at: Timestamp::from_unix_ms(r.get(0)?),
                status_code: r.get(1)?,
                error: r.get(2)?,
                latency_ms: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?)
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
    let sql = format!(
        "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, redriven_at = next_attempt_at, lease_until = NULL \
         WHERE delivery_id IN (SELECT d.delivery_id FROM deliveries d JOIN jobs j ON j.job_id = d.job_id \
                               WHERE {filter} ORDER BY d.created_at LIMIT ?) \
         RETURNING delivery_id"
    );
    let ids = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| parsed(r, 0))?
        .collect::<Result<Vec<DeliveryId>, _>>()?;
    Ok(ids)
}

fn event_from_row(job_id: JobId, row: &Row<'_>) -> rusqlite::Result<JobEvent> {
    let kind: String = row.get(3)?;
    let text: String = row.get(4)?;
    let data = stored_event_data(&kind, &text).map_err(|e| conversion(4, e))?;
    Ok(JobEvent {
        version: PAYLOAD_VERSION,
        job_id,
        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        at: Timestamp::from_unix_ms(row.get(1)?),
        attempt: row.get(2)?,
        data,
    })
}

fn events_in(
    conn: &Connection,
    job_id: JobId,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<JobEvent>> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, at, attempt, kind, data FROM job_events WHERE job_id = ?1 AND seq > ?2 \
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(
            params![
                job_id.to_string(),
                i64::try_from(after).unwrap_or(i64::MAX),
                limit as i64
            ],
            |r| event_from_row(job_id, r),
        )?
        .collect::<Result<Vec<_>, _>>()?)
}

fn jobs_where(
    conn: &Connection,
    clause: &str,
    args: Vec<rusqlite::types::Value>,
) -> StoreResult<Vec<JobRecord>> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {clause}");
    Ok(conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(args), job_from_row)?
        .collect::<Result<Vec<_>, _>>()?)
}

fn list_jobs_in(conn: &Connection, f: &JobFilter) -> StoreResult<Vec<JobRecord>> {
    let mut clauses = vec!["1 = 1"];
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(state) = f.state {
        clauses.push("state = ?");
        args.push(state.as_str().to_owned().into());
    }
    if let Some(agent) = &f.agent {
        clauses.push("agent_name = ?");
        args.push(agent.as_str().to_owned().into());
    }
    args.push(i64::try_from(f.limit).unwrap_or(i64::MAX).into());
    let clause = format!(
        "{} ORDER BY created_at DESC, job_id DESC LIMIT ?",
        clauses.join(" AND ")
    );
    jobs_where(conn, &clause, args)
}

fn requeue_in(conn: &Connection, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
    fenced(conn, job_id, JobState::InProgress, attempt)?;
    conn.prepare_cached(
        "UPDATE jobs SET state = 'queued', started_at = NULL, queued_at = ?2, updated_at = ?2 WHERE job_id = ?1",
    )?
    .execute(params![job_id.to_string(), at.unix_ms()])?;
    append_state(conn, job_id, attempt, JobState::Queued, at)?;
    Ok(())
}

fn heartbeat_in(conn: &Connection, node: &Node, beat: &Beat) -> StoreResult<BeatAnswer> {
    let agents: Vec<&str> = beat.agents.iter().map(AgentName::as_str).collect();
    conn.prepare_cached(
        "INSERT INTO nodes (node_id, incarnation, agents, running, max_concurrent, started_at, heartbeat_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (node_id) DO UPDATE SET \
         started_at = CASE WHEN incarnation = excluded.incarnation THEN started_at ELSE excluded.started_at END, \
         incarnation = excluded.incarnation, agents = excluded.agents, running = excluded.running, \
         max_concurrent = excluded.max_concurrent, heartbeat_at = excluded.heartbeat_at",
    )?
    .execute(params![
        node.id,
        node.incarnation,
        to_json(&agents),
        beat.running.len() as i64,
        beat.max_concurrent as i64,
        beat.at.unix_ms(),
    ])?;
    let mut renew = conn.prepare_cached(
        "UPDATE jobs SET lease_until = ?3 WHERE job_id = ?1 AND attempt = ?2 AND state = 'in_progress' \
         AND incarnation = ?4 RETURNING cancel_requested_at IS NOT NULL",
    )?;
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
    let ids = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE job_id IN ( \
                 SELECT j.job_id FROM jobs j WHERE j.finished_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.job_id AND d.state = 'pending') \
                 ORDER BY j.finished_at LIMIT ?2) \
             RETURNING job_id, job_name, agent_name, trace_id",
        )?
        .query_map(params![before.unix_ms(), limit as i64], |r| {
            Ok(Pruned {
                job_id: parsed(r, 0)?,
                job_name: r.get(1)?,
                agent_name: r.get(2)?,
                trace_id: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ids)
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
        slots: Vec<(AgentName, usize)>,
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

    async fn in_progress(&self) -> StoreResult<Vec<JobRecord>> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'in_progress' ORDER BY started_at"
            );
            Ok(conn
                .prepare_cached(&sql)?
                .query_map([], job_from_row)?
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn orphans(&self, now: Timestamp) -> StoreResult<Vec<JobRecord>> {
        let node = Arc::clone(&self.node);
        self.read(move |conn| {
            jobs_where(
                conn,
                "state = 'in_progress' AND (lease_until IS NULL OR lease_until < ? \
                 OR (node_id = ? AND incarnation <> ?)) ORDER BY started_at",
                vec![
                    now.unix_ms().into(),
                    node.id.clone().into(),
                    node.incarnation.clone().into(),
                ],
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
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT node_id, agents, running, max_concurrent, started_at, heartbeat_at \
                     FROM nodes WHERE heartbeat_at >= ?1 ORDER BY node_id",
                )?
                .query_map([since.unix_ms()], |r| {
                    Ok(crate::contract::NodeStatus {
                        node_id: r.get(0)?,
                        agents: json_col(r, 1)?.unwrap_or_default(),
                        running: r.get(2)?,
                        max_concurrent: r.get(3)?,
                        started_at: Timestamp::from_unix_ms(r.get(4)?),
                        last_heartbeat: Timestamp::from_unix_ms(r.get(5)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?)
        })
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
            jobs_where(
                conn,
                "state = 'queued' AND queued_at < ? ORDER BY queued_at LIMIT ?",
                vec![before.unix_ms().into(), (limit as i64).into()],
            )
        })
        .await
    }

    async fn request_cancel(&self, job_id: JobId, attempt: u32, at: Timestamp) -> StoreResult<()> {
        self.write(move |conn| {
            fenced(conn, job_id, JobState::InProgress, attempt)?;
            conn.prepare_cached(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, ?2) WHERE job_id = ?1",
            )?
            .execute(params![job_id.to_string(), at.unix_ms()])?;
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

    async fn gauges(&self) -> StoreResult<crate::telemetry::StoreGauges> {
        self.read(|conn| {
            let queued = conn
                .prepare_cached(
                    "SELECT agent_name, count(*) FROM jobs WHERE state = 'queued' GROUP BY agent_name",
                )?
                .query_map([], |r| {
                    Ok((parsed(r, 0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let dead_letters: i64 = conn
                .prepare_cached("SELECT count(*) FROM deliveries WHERE state = 'dead'")?
                .query_row([], |r| r.get(0))?;
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
            conn.prepare_cached(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )?
            .execute([now])?;
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
            let next: Option<i64> = conn
                .prepare_cached("SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) FROM deliveries WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?;
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
            conn.prepare_cached(
                "UPDATE deliveries SET next_attempt_at = ?2, lease_until = NULL WHERE delivery_id = ?1 AND state = 'pending'",
            )?
            .execute(params![id.as_str(), until.unix_ms()])?;
            Ok(())
        })
        .await
    }

    async fn release_leases(&self) -> StoreResult<usize> {
        // One process owns an SQLite file, so every lease in it belonged to a dead process.
        self.write(|conn| {
            Ok(conn
                .prepare_cached("UPDATE deliveries SET lease_until = NULL WHERE state = 'pending' AND lease_until IS NOT NULL")?
                .execute([])?)
        })
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
        let filter = DeliveryFilter {
            id: Some(id),
            limit: 1,
            ..DeliveryFilter::default()
        };
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
            (NEXT_QUEUED, "jobs_agent_queue"),
            (NEXT_ACCEPTED, "jobs_accepted"),
            (CLAIM_DUE_DELIVERIES, "deliveries_due"),
        ] {
            let plan = plan(&conn, sql);
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
    }
}
