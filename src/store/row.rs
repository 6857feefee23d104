//! Row mapping shared by both stores: one place turns a row's column values into a
//! [`JobRecord`], a [`JobEvent`], a delivery, a node.
//!
//! Each backend implements [`Cols`] for its row type (`rusqlite::Row`, `tokio_postgres::Row`),
//! which only says how to read a column of each SQL type; the mapping functions here are
//! written once against it. The column lists they expect are the `SELECT`s of each dialect's
//! `sql.rs`, kept in the same order on both sides ([`job_columns!`] is shared outright).

use std::str::FromStr;

use serde::de::DeserializeOwned;

use super::{JobRecord, Pruned, StoreError, StoreResult};
use crate::contract::{
    AgentName, DeliveryAttempt, DeliveryState, DeliveryStatus, EventData, JobAttempt, JobEvent,
    JobId, JobState, NodeStatus, PAYLOAD_VERSION, Priority, ProgressSnapshot, Timestamp,
    Transition,
};

/// The columns of a job, in the order [`job`] reads them (a macro so that each dialect's
/// statements can `concat!` it into a constant).
macro_rules! job_columns {
    () => {
        "job_id, user_id, agent_name, job_name, priority, state, attempt, request, \
         trace_id, created_at, started_at, finished_at, exit_code, error, output_index, \
         last_progress, request_sha256, cancel_requested_at, queued_at, run_at"
    };
}
pub(super) use job_columns;

/// A value as JSON text, for a `TEXT` column.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Our own types always serialize; a failure here is a programming error caught by tests.
    serde_json::to_string(value).unwrap_or_default()
}

/// A stored value that does not parse (`what` names the job or the value).
pub(super) fn corrupt(what: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        job_id: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// How a backend's row reads a column of each type both schemas use.
pub(super) trait Cols {
    /// `TEXT NOT NULL`.
    fn text(&self, col: usize) -> StoreResult<String>;
    /// `TEXT`.
    fn opt_text(&self, col: usize) -> StoreResult<Option<String>>;
    /// `BIGINT NOT NULL` (milliseconds, ranks, counts of `count(*)`).
    fn int(&self, col: usize) -> StoreResult<i64>;
    /// `BIGINT`.
    fn opt_int(&self, col: usize) -> StoreResult<Option<i64>>;
    /// `INTEGER NOT NULL` holding a count (an attempt, attempts made, jobs running).
    fn count(&self, col: usize) -> StoreResult<u32>;
    /// `INTEGER` (an exit code).
    fn opt_i32(&self, col: usize) -> StoreResult<Option<i32>>;
    /// `INTEGER` holding an HTTP status.
    fn opt_status(&self, col: usize) -> StoreResult<Option<u16>>;
    /// `BLOB` / `BYTEA NOT NULL`.
    fn bytes(&self, col: usize) -> StoreResult<Vec<u8>>;

    /// A `TEXT` column parsed with `FromStr`.
    fn parsed<T: FromStr>(&self, col: usize) -> StoreResult<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.text(col)?;
        text.parse().map_err(|e| corrupt(&text, e))
    }

    /// A `TEXT` column holding JSON, if not NULL.
    fn json<T: DeserializeOwned>(&self, col: usize) -> StoreResult<Option<T>> {
        self.opt_text(col)?
            .map(|text| serde_json::from_str(&text).map_err(|e| corrupt("", e)))
            .transpose()
    }

    /// A `BIGINT NOT NULL` of Unix milliseconds.
    fn ts(&self, col: usize) -> StoreResult<Timestamp> {
        Ok(Timestamp::from_unix_ms(self.int(col)?))
    }

    /// A `BIGINT` of Unix milliseconds, if not NULL.
    fn opt_ts(&self, col: usize) -> StoreResult<Option<Timestamp>> {
        Ok(self.opt_int(col)?.map(Timestamp::from_unix_ms))
    }
}

/// A job, from [`job_columns!`].
pub(super) fn job(r: &impl Cols) -> StoreResult<JobRecord> {
    Ok(JobRecord {
        job_id: r.parsed(0)?,
        user_id: r.text(1)?,
        agent_name: r.parsed(2)?,
        job_name: r.parsed(3)?,
        priority: Priority::from_rank(r.int(4)?),
        state: r.parsed(5)?,
        attempt: r.count(6)?,
        request: r.json(7)?.ok_or_else(|| corrupt("", "request is NULL"))?,
        trace_id: r.text(8)?,
        created_at: r.ts(9)?,
        started_at: r.opt_ts(10)?,
        finished_at: r.opt_ts(11)?,
        exit_code: r.opt_i32(12)?,
        error: r.json(13)?,
        output_index: r.json(14)?,
        last_progress: r.json(15)?,
        request_sha256: r.text(16)?,
        cancel_requested: r.opt_int(17)?.is_some(),
        queued_at: r.ts(18)?,
        run_at: r.opt_ts(19)?,
    })
}

/// An ended attempt, from `attempt, started_at, ended_at, state, exit_code, error, retry_at`.
pub(super) fn job_attempt(r: &impl Cols) -> StoreResult<JobAttempt> {
    Ok(JobAttempt {
        attempt: r.count(0)?,
        started_at: r.opt_ts(1)?,
        ended_at: r.ts(2)?,
        state: r.parsed(3)?,
        exit_code: r.opt_i32(4)?,
        error: r.json(5)?,
        retry_at: r.opt_ts(6)?,
    })
}

/// An event of `job_id`, from `seq, at, attempt, kind, data`.
pub(super) fn event(job_id: JobId, r: &impl Cols) -> StoreResult<JobEvent> {
    let data = event_data(&r.text(3)?, &r.text(4)?).map_err(|e| corrupt(&job_id.to_string(), e))?;
    Ok(JobEvent {
        version: PAYLOAD_VERSION,
        job_id,
        seq: u64::try_from(r.int(0)?).unwrap_or(0),
        at: r.ts(1)?,
        attempt: r.count(2)?,
        data,
    })
}

/// An event's data as both stores keep it: `kind` (`state` | `progress`) and its JSON text.
fn event_data(kind: &str, text: &str) -> Result<EventData, serde_json::Error> {
    Ok(if kind == "state" {
        EventData::State {
            state: serde_json::from_str(text)?,
        }
    } else {
        let p: ProgressSnapshot = serde_json::from_str(text)?;
        EventData::Progress {
            stage: p.stage,
            message: p.message,
            percent: p.percent,
        }
    })
}

/// A state change of `job_id`, from `data, at, attempt` of a `state` event.
pub(super) fn transition(job_id: JobId, r: &impl Cols) -> StoreResult<Transition> {
    Ok(Transition {
        state: serde_json::from_str(&r.text(0)?).map_err(|e| corrupt(&job_id.to_string(), e))?,
        at: r.ts(1)?,
        attempt: r.count(2)?,
    })
}

/// A delivery without its history, from `d.delivery_id, d.job_id, j.job_name, d.destination,
/// d.state, d.attempts, d.created_at, d.last_status_code, d.last_error, d.next_attempt_at,
/// d.delivered_at`.
pub(super) fn delivery(r: &impl Cols) -> StoreResult<DeliveryStatus> {
    let state: DeliveryState = r.parsed(4)?;
    Ok(DeliveryStatus {
        delivery_id: r.parsed(0)?,
        job_id: r.parsed(1)?,
        job_name: r.parsed(2)?,
        destination: r.text(3)?,
        state,
        attempts: r.count(5)?,
        created_at: r.ts(6)?,
        last_status_code: r.opt_status(7)?,
        last_error: r.opt_text(8)?,
        next_attempt_at: r.opt_ts(9)?.filter(|_| state == DeliveryState::Pending),
        delivered_at: r.opt_ts(10)?,
        history: Vec::new(),
    })
}

/// One attempt of a delivery, from `at, status_code, error, latency_ms`.
pub(super) fn attempt(r: &impl Cols) -> StoreResult<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        at: r.ts(0)?,
        status_code: r.opt_status(1)?,
        error: r.opt_text(2)?,
        latency_ms: u64::try_from(r.int(3)?).unwrap_or(0),
    })
}

/// A delivery due for an attempt, from `delivery_id, job_id, url, body, attempts, age_from,
/// last_status_code` of `d` and `job_name, state, trace_id, agent_name` of `j` from column
/// `j_at` (the same row in PostgreSQL, a second one in SQLite).
pub(super) fn due<R: Cols>(d: &R, j: &R, j_at: usize) -> StoreResult<super::DueDelivery> {
    Ok(super::DueDelivery {
        id: d.parsed(0)?,
        job_id: d.parsed(1)?,
        url: d.parsed(2)?,
        body: d.bytes(3)?,
        attempts: d.count(4)?,
        age_from: d.ts(5)?,
        last_status_code: d.opt_status(6)?,
        job_name: j.parsed(j_at)?,
        status: j.parsed(j_at + 1)?,
        trace_id: j.text(j_at + 2)?,
        agent_name: j.text(j_at + 3)?,
    })
}

/// A node, from `node_id, agents, running, max_concurrent, started_at, heartbeat_at`.
pub(super) fn node(r: &impl Cols) -> StoreResult<NodeStatus> {
    Ok(NodeStatus {
        node_id: r.text(0)?,
        agents: r.json(1)?.unwrap_or_default(),
        running: r.count(2)?,
        max_concurrent: r.count(3)?,
        started_at: r.ts(4)?,
        last_heartbeat: r.ts(5)?,
    })
}

/// A pruned job, from `job_id, job_name, agent_name, trace_id`.
pub(super) fn pruned(r: &impl Cols) -> StoreResult<Pruned> {
    Ok(Pruned {
        job_id: r.parsed(0)?,
        job_name: r.text(1)?,
        agent_name: r.text(2)?,
        trace_id: r.text(3)?,
    })
}

/// An agent's queue depth, from `agent_name, count(*)`.
pub(super) fn queued(r: &impl Cols) -> StoreResult<(AgentName, u64)> {
    Ok((r.parsed(0)?, u64::try_from(r.int(1)?).unwrap_or(0)))
}

/// A state's count, from `state, count(*)`.
pub(super) fn state_count(r: &impl Cols) -> StoreResult<(JobState, u64)> {
    Ok((r.parsed(0)?, u64::try_from(r.int(1)?).unwrap_or(0)))
}

/// An agent's count in a state, from `agent_name, state, count(*)`.
pub(super) fn agent_state_count(r: &impl Cols) -> StoreResult<(AgentName, JobState, u64)> {
    Ok((
        r.parsed(0)?,
        r.parsed(1)?,
        u64::try_from(r.int(2)?).unwrap_or(0),
    ))
}

/// An agent's queue, from `agent_name, count(*), min(queued_at)`.
pub(super) fn queue(r: &impl Cols) -> StoreResult<(AgentName, u64, Timestamp)> {
    Ok((
        r.parsed(0)?,
        u64::try_from(r.int(1)?).unwrap_or(0),
        Timestamp::from_unix_ms(r.int(2)?),
    ))
}

/// A job that ended, from `finished_at, started_at, queued_at, state`.
pub(super) fn finished(r: &impl Cols) -> StoreResult<crate::overview::Finished> {
    Ok(crate::overview::Finished {
        finished_at: Timestamp::from_unix_ms(r.int(0)?),
        started_at: r.opt_int(1)?.map(Timestamp::from_unix_ms),
        queued_at: Timestamp::from_unix_ms(r.int(2)?),
        state: r.parsed(3)?,
    })
}

/// A callback attempt, from `at, latency_ms, status_code, error`.
pub(super) fn callback_sample(r: &impl Cols) -> StoreResult<crate::overview::CallbackSample> {
    let status = r.opt_status(2)?;
    Ok(crate::overview::CallbackSample {
        at: Timestamp::from_unix_ms(r.int(0)?),
        latency_ms: u64::try_from(r.int(1)?).unwrap_or(0),
        ok: status.is_some_and(|s| (200..300).contains(&s)) && r.opt_text(3)?.is_none(),
    })
}

/// The outbox's pending and dead counts, from rows of `state, count(*)`.
pub(super) fn outbox_counts(rows: &[(String, u64)]) -> (u64, u64) {
    let count = |state: &str| rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
    (count("pending"), count("dead"))
}

/// An agent's queued and running jobs, from `agent_name, queued, running`.
pub(super) fn load(r: &impl Cols) -> StoreResult<(AgentName, super::AgentLoad)> {
    let count = |col| r.int(col).map(|n| u64::try_from(n).unwrap_or(0));
    Ok((
        r.parsed(0)?,
        super::AgentLoad {
            queued: count(1)?,
            running: count(2)?,
        },
    ))
}
