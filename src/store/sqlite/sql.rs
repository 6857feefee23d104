//! Every statement of the SQLite store, by name; `../postgres/sql.rs` has the same names for
//! the same work, so a change to one dialect is made next to the other.
//!
//! Placeholders are `?N`. A `SELECT` of a job lists [`job_columns!`], read by `row::job`; the
//! other `SELECT`s and `RETURNING`s list their columns in the order `row.rs` reads them.
//! `{filter}` in a template is the `WHERE` clause a filter builds at run time.

use crate::store::row::job_columns;

// ---- jobs ----

/// One job by id.
pub const JOB: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE job_id = ?1");

/// The fingerprint of an existing job's request (idempotent replays).
pub const JOB_SHA: &str = "SELECT request_sha256 FROM jobs WHERE job_id = ?1";

macro_rules! next_accepted {
    () => {
        "SELECT coalesce(max(accepted_seq), 0) + 1 FROM jobs"
    };
}

/// The next acceptance number: ties of `schedule_key` are broken by it (one index step). Part
/// of [`INSERT_JOB`]; alone, only the plan test reads it.
#[cfg(test)]
pub const NEXT_ACCEPTED: &str = next_accepted!();

/// A new job, in state ?11 (`queued`, or `scheduled` until ?12 = `run_at`, which is then its
/// `queued_at` too), with concurrency key ?13.
pub const INSERT_JOB: &str = concat!(
    "INSERT INTO jobs (job_id, user_id, agent_name, job_name, priority, state, request, request_sha256, \
     trace_id, created_at, queued_at, updated_at, schedule_key, concurrency_key, accepted_seq, run_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?11, ?6, ?7, ?8, ?9, coalesce(?12, ?9), ?9, ?10, ?13, (",
    next_accepted!(),
    "), ?12)"
);

/// An agent's next queued job in claim order whose concurrency key has fewer than ?2 jobs of
/// the agent running (?2 NULL: no per-key limit). A key at its limit is walked past, so the
/// jobs of other keys behind it are still claimed: no head-of-line blocking.
pub const NEXT_QUEUED: &str = "SELECT schedule_key, accepted_seq, job_id FROM jobs q \
     WHERE state = 'queued' AND agent_name = ?1 AND (?2 IS NULL OR concurrency_key IS NULL \
     OR (SELECT count(*) FROM jobs r WHERE r.state = 'in_progress' AND r.agent_name = ?1 \
         AND r.concurrency_key = q.concurrency_key) < ?2) \
     ORDER BY schedule_key, accepted_seq LIMIT 1";

/// Moves one queued job to `in_progress`, leased to this process.
pub const CLAIM_JOB: &str = concat!(
    "UPDATE jobs SET state = 'in_progress', attempt = attempt + 1, started_at = ?1, updated_at = ?1, \
     node_id = ?2, incarnation = ?3, lease_until = ?4 WHERE job_id = ?5 AND state = 'queued' \
     RETURNING ",
    job_columns!()
);

/// Where a job is (fencing).
pub const FENCE: &str = "SELECT state, attempt FROM jobs WHERE job_id = ?1";

/// Ends an attempt.
pub const FINISH_JOB: &str = "UPDATE jobs SET state = ?2, finished_at = ?3, updated_at = ?3, \
     exit_code = ?4, error = ?5, output_index = ?6 WHERE job_id = ?1";

/// Puts an interrupted attempt back in the queue, in its old place.
pub const REQUEUE: &str = "UPDATE jobs SET state = 'queued', started_at = NULL, queued_at = ?2, \
     updated_at = ?2 WHERE job_id = ?1";

/// Queues an ended job again as a newly accepted one (its end cleared, a fresh acceptance
/// number, key ?3).
pub const RERUN: &str = concat!(
    "UPDATE jobs SET state = 'queued', queued_at = ?2, updated_at = ?2, started_at = NULL, \
     finished_at = NULL, exit_code = NULL, error = NULL, output_index = NULL, \
     cancel_requested_at = NULL, node_id = NULL, incarnation = NULL, lease_until = NULL, \
     schedule_key = ?3, accepted_seq = (",
    next_accepted!(),
    ") WHERE job_id = ?1"
);

/// Ends an attempt for a retry: `scheduled` until ?2 (also its `queued_at`, so the queue age
/// counts from there), key ?4 and a fresh acceptance number, unleased.
pub const RETRY_LATER: &str = concat!(
    "UPDATE jobs SET state = 'scheduled', run_at = ?2, queued_at = ?2, updated_at = ?3, \
     started_at = NULL, node_id = NULL, incarnation = NULL, lease_until = NULL, \
     schedule_key = ?4, accepted_seq = (",
    next_accepted!(),
    ") WHERE job_id = ?1"
);

/// Moves the scheduled jobs due at ?1 (at most ?2, earliest first) to `queued`.
pub const PROMOTE_DUE: &str = "UPDATE jobs SET state = 'queued', updated_at = ?1 WHERE job_id IN ( \
     SELECT job_id FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 ORDER BY run_at LIMIT ?2) \
     RETURNING job_id, attempt";

/// When the earliest scheduled job is due (one step of the partial index, which the planner
/// would otherwise pass over for `jobs_state_agent`).
pub const NEXT_RUN_AT: &str =
    "SELECT min(run_at) FROM jobs INDEXED BY jobs_scheduled WHERE state = 'scheduled'";

/// Records how the job's current attempt (if it ran) ended: state ?3 at ?2, exit code ?4,
/// error ?5, retried from ?6; the first record of an attempt stays.
pub const RECORD_JOB_ATTEMPT: &str = "INSERT INTO job_attempts (job_id, attempt, started_at, ended_at, state, exit_code, error, retry_at) \
     SELECT job_id, attempt, started_at, ?2, ?3, ?4, ?5, ?6 FROM jobs WHERE job_id = ?1 AND attempt > 0 \
     ON CONFLICT (job_id, attempt) DO NOTHING";

/// A job's ended attempts, oldest first.
pub const JOB_ATTEMPTS: &str = "SELECT attempt, started_at, ended_at, state, exit_code, error, retry_at \
     FROM job_attempts WHERE job_id = ?1 ORDER BY attempt";

/// Remembers that a cancel was asked for (the first time counts).
pub const REQUEST_CANCEL: &str =
    "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, ?2) WHERE job_id = ?1";

/// Jobs running anywhere.
pub const IN_PROGRESS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'in_progress' ORDER BY started_at"
);

/// Running jobs whose runner is gone: lease lapsed at ?1, or claimed by an earlier process of
/// node ?2 (this one is ?3).
pub const ORPHANS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'in_progress' AND (lease_until IS NULL OR lease_until < ?1 \
     OR (node_id = ?2 AND incarnation <> ?3)) ORDER BY started_at"
);

/// Jobs queued before ?1, longest waiting first.
pub const QUEUED_BEFORE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'queued' AND queued_at < ?1 ORDER BY queued_at LIMIT ?2"
);

/// Jobs matching `{filter}` (`state = ?`, `agent_name = ?`), newest first.
pub const LIST_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE {filter} ORDER BY created_at DESC, job_id DESC LIMIT ?"
);

/// Deletes terminal jobs that ended before ?1 and have no pending callback (their events and
/// deliveries go by cascade).
pub const PRUNE: &str = "DELETE FROM jobs WHERE job_id IN ( \
         SELECT j.job_id FROM jobs j WHERE j.finished_at < ?1 \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.job_id AND d.state = 'pending') \
         ORDER BY j.finished_at LIMIT ?2) \
     RETURNING job_id, job_name, agent_name, trace_id";

/// Queued and running jobs per agent.
pub const AGENT_LOADS: &str = "SELECT agent_name, count(*) FILTER (WHERE state = 'queued'), \
     count(*) FILTER (WHERE state = 'in_progress') FROM jobs \
     WHERE state IN ('queued', 'in_progress') GROUP BY agent_name";

// ---- pauses ----

/// What is paused: agent names, `*` for every agent.
pub const PAUSED: &str = "SELECT scope FROM paused";

/// Pauses scope ?1 (an earlier pause keeps its time).
pub const PAUSE: &str =
    "INSERT INTO paused (scope, paused_at) VALUES (?1, ?2) ON CONFLICT (scope) DO NOTHING";

/// Resumes scope ?1.
pub const RESUME: &str = "DELETE FROM paused WHERE scope = ?1";

// ---- events ----

/// Draws the job's next seq.
pub const NEXT_SEQ: &str = "UPDATE jobs SET last_seq = last_seq + 1, updated_at = ?2 \
     WHERE job_id = ?1 RETURNING last_seq";

/// One event.
pub const INSERT_EVENT: &str = "INSERT INTO job_events (job_id, seq, at, attempt, kind, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Fills in a progress event's data once its seq is known.
pub const SET_EVENT_DATA: &str = "UPDATE job_events SET data = ?3 WHERE job_id = ?1 AND seq = ?2";

/// The job's latest progress.
pub const SET_LAST_PROGRESS: &str = "UPDATE jobs SET last_progress = ?2 WHERE job_id = ?1";

/// Bounded history: progress events up to seq ?2 go; states stay.
pub const TRIM_PROGRESS: &str =
    "DELETE FROM job_events WHERE job_id = ?1 AND kind = 'progress' AND seq <= ?2";

/// The job's events after seq ?2, oldest first.
pub const EVENTS_AFTER: &str = "SELECT seq, at, attempt, kind, data FROM job_events \
     WHERE job_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3";

/// The job's state changes, oldest first.
pub const TRANSITIONS: &str = "SELECT data, at, attempt FROM job_events \
     WHERE job_id = ?1 AND kind = 'state' ORDER BY seq";

// ---- nodes ----

/// This node's heartbeat row (its start time kept while the process is the same).
pub const UPSERT_NODE: &str = "INSERT INTO nodes (node_id, incarnation, agents, running, max_concurrent, started_at, heartbeat_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT (node_id) DO UPDATE SET \
     started_at = CASE WHEN incarnation = excluded.incarnation THEN started_at ELSE excluded.started_at END, \
     incarnation = excluded.incarnation, agents = excluded.agents, running = excluded.running, \
     max_concurrent = excluded.max_concurrent, heartbeat_at = excluded.heartbeat_at";

/// Renews one attempt's lease, if this process still owns it; says whether a cancel was asked.
pub const RENEW_LEASE: &str = "UPDATE jobs SET lease_until = ?3 WHERE job_id = ?1 AND attempt = ?2 \
     AND state = 'in_progress' AND incarnation = ?4 RETURNING cancel_requested_at IS NOT NULL";

/// Nodes heard from since ?1.
pub const NODES: &str = "SELECT node_id, agents, running, max_concurrent, started_at, heartbeat_at \
     FROM nodes WHERE heartbeat_at >= ?1 ORDER BY node_id";

/// Proves the file takes writes.
pub const TOUCH_HEARTBEAT: &str =
    "INSERT INTO heartbeat (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at";

// ---- deliveries ----

/// A job's completion, leased to its writer for the first attempt.
pub const INSERT_COMPLETION: &str = "INSERT INTO deliveries (delivery_id, job_id, kind, url, destination, body, state, created_at, \
     next_attempt_at, lease_until) VALUES (?1, ?2, 'completion', ?3, ?4, ?5, 'pending', ?6, ?6, ?7)";

/// Leases the due completions, earliest first; the partial index walks them in that order
/// (the planner would otherwise sort every pending one).
pub const CLAIM_DUE_DELIVERIES: &str = "UPDATE deliveries SET lease_until = ?2 WHERE delivery_id IN ( \
     SELECT delivery_id FROM deliveries INDEXED BY deliveries_due WHERE state = 'pending' AND next_attempt_at <= ?1 \
     AND (lease_until IS NULL OR lease_until <= ?1) ORDER BY next_attempt_at LIMIT ?3) \
     RETURNING delivery_id, job_id, url, body, attempts, coalesce(redriven_at, created_at), last_status_code";

/// What a due delivery needs of its job: the two JWT claims and the log fields.
pub const DUE_JOB: &str =
    "SELECT job_name, state, trace_id, agent_name FROM jobs WHERE job_id = ?1";

/// Counts an attempt and releases the lease.
pub const COUNT_ATTEMPT: &str = "UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL, \
     last_status_code = ?2, last_error = ?3 WHERE delivery_id = ?1 RETURNING attempts";

/// One attempt.
pub const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, error, latency_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// What follows from an attempt.
pub const SETTLE_DELIVERY: &str = "UPDATE deliveries SET state = ?2, next_attempt_at = ?3, \
     delivered_at = ?4 WHERE delivery_id = ?1";

/// Pushes a pending delivery back without counting an attempt.
pub const DEFER: &str = "UPDATE deliveries SET next_attempt_at = ?2, lease_until = NULL \
     WHERE delivery_id = ?1 AND state = 'pending'";

/// Makes a pending delivery due now (or keeps it earlier); its lease, if any, stays.
pub const DELIVER_NOW: &str = "UPDATE deliveries SET next_attempt_at = min(next_attempt_at, ?2) \
     WHERE delivery_id = ?1 AND state = 'pending'";

/// Releases every lease (one process owns the file: they were a dead process's).
pub const RELEASE_LEASES: &str =
    "UPDATE deliveries SET lease_until = NULL WHERE state = 'pending' AND lease_until IS NOT NULL";

/// When the next pending delivery is due.
pub const NEXT_DUE: &str = "SELECT min(max(next_attempt_at, coalesce(lease_until, 0))) \
     FROM deliveries WHERE state = 'pending'";

/// Dead-lettered deliveries.
pub const DEAD_LETTERS: &str = "SELECT count(*) FROM deliveries WHERE state = 'dead'";

/// Deliveries matching `{filter}` (`d` is deliveries, `j` jobs), newest first.
pub const DELIVERIES: &str = "SELECT d.delivery_id, d.job_id, j.job_name, d.destination, d.state, \
            d.attempts, d.created_at, d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at \
     FROM deliveries d JOIN jobs j ON j.job_id = d.job_id WHERE {filter} \
     ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT ?";

/// A delivery's attempts, oldest first.
pub const ATTEMPTS: &str = "SELECT at, status_code, error, latency_ms FROM delivery_attempts \
     WHERE delivery_id = ?1 ORDER BY attempt";

/// Puts the dead deliveries matching `{filter}` back in the outbox, due (and redriven) at `?1`;
/// the filter's `?` follow it.
pub const REDRIVE: &str = "UPDATE deliveries SET state = 'pending', next_attempt_at = ?1, \
     redriven_at = ?1, lease_until = NULL \
     WHERE delivery_id IN (SELECT d.delivery_id FROM deliveries d JOIN jobs j ON j.job_id = d.job_id \
                           WHERE {filter} ORDER BY d.created_at LIMIT ?) \
     RETURNING delivery_id";

// ---- the dashboard ----

/// Jobs matching `{filter}`, per state.
pub const COUNT_JOBS: &str = "SELECT state, count(*) FROM jobs WHERE {filter} GROUP BY state";

/// Jobs accepted since ?1, per agent and state.
pub const COUNTS_SINCE: &str = "SELECT agent_name, state, count(*) FROM jobs WHERE created_at >= ?1 \
     GROUP BY agent_name, state";

/// Each agent's queue: depth and the oldest `queued_at`.
pub const QUEUES: &str = "SELECT agent_name, count(*), min(queued_at) FROM jobs \
     WHERE state = 'queued' GROUP BY agent_name";

/// Running jobs per agent.
pub const RUNNING_PER_AGENT: &str =
    "SELECT agent_name, count(*) FROM jobs WHERE state = 'in_progress' GROUP BY agent_name";

/// Pending and dead deliveries.
pub const OUTBOX_STATES: &str = "SELECT state, count(*) FROM deliveries \
     WHERE state IN ('pending', 'dead') GROUP BY state";

/// Jobs that ended since ?1.
pub const FINISHED_SINCE: &str =
    "SELECT finished_at, started_at, queued_at, state FROM jobs WHERE finished_at >= ?1";

/// Callback attempts made since ?1.
pub const ATTEMPTS_SINCE: &str =
    "SELECT at, latency_ms, status_code, error FROM delivery_attempts WHERE at >= ?1";
