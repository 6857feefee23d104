//! Every statement of the PostgreSQL store, by name; `../sqlite/sql.rs` has the same names for
//! the same work, so a change to one dialect is made next to the other. What only a fleet
//! needs (`FOR UPDATE SKIP LOCKED`, leases taken by `leased_by`, `pg_notify`, advisory locks)
//! is here alone.
//!
//! Placeholders are `$N`. A `SELECT` of a job lists [`job_columns!`], read by `row::job`; the
//! other `SELECT`s and `RETURNING`s list their columns in the order `row.rs` reads them.
//! `{filter}` in a template is the `WHERE` clause a filter builds at run time, `{limit}` the
//! number of the placeholder after its arguments.

use crate::store::row::job_columns;

/// The `NOTIFY` channel of the fleet.
macro_rules! channel {
    () => {
        "agent_sidecar"
    };
}

/// The `NOTIFY` channel of the fleet.
pub const CHANNEL: &str = channel!();

/// Subscribes the listening connection to [`CHANNEL`].
pub const LISTEN: &str = concat!("LISTEN ", channel!());

/// Sends each note of a transaction (`$2`) on the channel `$1`, at commit.
pub const NOTIFY: &str = "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n";

/// Waits for an advisory lock (migrations).
pub const LOCK: &str = "SELECT pg_advisory_lock($1)";

/// Releases an advisory lock.
pub const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// Takes an advisory lock if it is free (the leader's).
pub const TRY_LOCK: &str = "SELECT pg_try_advisory_lock($1)";

/// Proves a session still works.
pub const PING: &str = "SELECT 1";

/// The leader's session ends after this many milliseconds idle (`{ms}`).
pub const IDLE_SESSION_TIMEOUT: &str = "SET idle_session_timeout = {ms}";

// ---- jobs ----

/// One job by id.
pub const JOB: &str = concat!("SELECT ", job_columns!(), " FROM jobs WHERE job_id = $1");

/// A new job in state $11 (`queued`, or `scheduled` until $12 = `run_at`, which is then its
/// `queued_at` too); nothing if the id exists.
pub const INSERT_JOB: &str = "INSERT INTO jobs (job_id, user_id, agent_name, job_name, priority, state, request, request_sha256, \
     trace_id, created_at, queued_at, updated_at, schedule_key, run_at, concurrency_key) \
     VALUES ($1, $2, $3, $4, $5, $11, $6, $7, $8, $9, coalesce($12::bigint, $9::bigint), $9, $10, $12, $13) ON CONFLICT (job_id) DO NOTHING";

/// Locks the oldest queued rows of the agents `$1`, skipping rows other nodes are claiming and
/// rows whose concurrency key already has its agent's per-key limit (`$3`, by position in
/// `$1`; NULL for none) running; with each, its key and how many of the key run. A key at its
/// limit is walked past, so the jobs of other keys behind it are still claimed.
pub const NEXT_QUEUED: &str = "SELECT job_id, agent_name, concurrency_key, running FROM jobs q \
     CROSS JOIN LATERAL (SELECT count(*) AS running FROM jobs r WHERE r.state = 'in_progress' \
         AND r.agent_name = q.agent_name AND r.concurrency_key = q.concurrency_key) k \
     WHERE state = 'queued' AND agent_name = ANY($1) AND (concurrency_key IS NULL \
         OR ($3::int[])[array_position($1::text[], agent_name)] IS NULL \
         OR running < ($3::int[])[array_position($1::text[], agent_name)]) \
     ORDER BY schedule_key, accepted_seq LIMIT $2 FOR UPDATE OF q SKIP LOCKED";

/// Taken (shared) by every claim before it reads the pauses, and (exclusive) by a pause before
/// it is written: a pause waits for the claims in flight, so once it commits no node starts a
/// job it pauses.
pub const LOCK_CLAIMS_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// A pause's side of [`LOCK_CLAIMS_SHARED`].
pub const LOCK_CLAIMS_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock($1)";

/// Serialises the claims of agents with a per-key limit across the fleet until commit, so two
/// nodes never both count a key below its limit and both start one more.
pub const LOCK_PER_KEY_CLAIMS: &str = "SELECT pg_advisory_xact_lock($1)";

/// Moves the locked jobs `$1` to `in_progress`, leased to this process.
pub const CLAIM_JOBS: &str = concat!(
    "UPDATE jobs SET state = 'in_progress', attempt = attempt + 1, started_at = $2, updated_at = $2, \
     node_id = $3, incarnation = $4, lease_until = $5 WHERE job_id = ANY($1) \
     RETURNING ",
    job_columns!()
);

/// Locks a job's row and says where it is (fencing) and which node runs it.
pub const FENCE: &str = "SELECT state, attempt, node_id FROM jobs WHERE job_id = $1 FOR UPDATE";

/// Ends an attempt and its lease.
pub const FINISH_JOB: &str = "UPDATE jobs SET state = $2, finished_at = $3, updated_at = $3, \
     exit_code = $4, error = $5, output_index = $6, lease_until = NULL WHERE job_id = $1";

/// Puts an interrupted attempt back in the queue, in its old place, unleased.
pub const REQUEUE: &str = "UPDATE jobs SET state = 'queued', started_at = NULL, queued_at = $2, updated_at = $2, \
     node_id = NULL, incarnation = NULL, lease_until = NULL WHERE job_id = $1";

/// Queues an ended job again as a newly accepted one (its end cleared, a fresh acceptance
/// number, key $3).
pub const RERUN: &str = "UPDATE jobs SET state = 'queued', queued_at = $2, updated_at = $2, started_at = NULL, \
     finished_at = NULL, exit_code = NULL, error = NULL, output_index = NULL, \
     cancel_requested_at = NULL, node_id = NULL, incarnation = NULL, lease_until = NULL, \
     schedule_key = $3, accepted_seq = DEFAULT WHERE job_id = $1";

/// Ends an attempt for a retry: `scheduled` until $2 (also its `queued_at`, so the queue age
/// counts from there), key $4 and a fresh acceptance number, unleased.
pub const RETRY_LATER: &str = "UPDATE jobs SET state = 'scheduled', run_at = $2, queued_at = $2, updated_at = $3, \
     started_at = NULL, node_id = NULL, incarnation = NULL, lease_until = NULL, \
     schedule_key = $4, accepted_seq = DEFAULT WHERE job_id = $1";

/// Moves the scheduled jobs due at $1 (at most $2, earliest first) to `queued`; rows another
/// node is promoting are skipped.
pub const PROMOTE_DUE: &str = "UPDATE jobs SET state = 'queued', updated_at = $1 WHERE job_id IN ( \
     SELECT job_id FROM jobs WHERE state = 'scheduled' AND run_at <= $1 ORDER BY run_at LIMIT $2 \
     FOR UPDATE SKIP LOCKED) RETURNING job_id, attempt";

/// When the earliest scheduled job is due.
pub const NEXT_RUN_AT: &str = "SELECT min(run_at) FROM jobs WHERE state = 'scheduled'";

/// Records how the job's current attempt (if it ran) ended: state $3 at $2, exit code $4,
/// error $5, retried from $6; the first record of an attempt stays.
pub const RECORD_JOB_ATTEMPT: &str = "INSERT INTO job_attempts (job_id, attempt, started_at, ended_at, state, exit_code, error, retry_at) \
     SELECT job_id, attempt, started_at, $2::bigint, $3::text, $4::integer, $5::text, $6::bigint FROM jobs WHERE job_id = $1 AND attempt > 0 \
     ON CONFLICT (job_id, attempt) DO NOTHING";

/// A job's ended attempts, oldest first.
pub const JOB_ATTEMPTS: &str = "SELECT attempt, started_at, ended_at, state, exit_code, error, retry_at \
     FROM job_attempts WHERE job_id = $1 ORDER BY attempt";

/// Remembers that a cancel was asked for (the first time counts).
pub const REQUEST_CANCEL: &str =
    "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, $2) WHERE job_id = $1";

/// Jobs running anywhere.
pub const IN_PROGRESS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'in_progress' ORDER BY started_at"
);

/// Running jobs whose runner is gone: lease lapsed at $1, or claimed by an earlier process of
/// node $2 (this one is $3).
pub const ORPHANS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'in_progress' AND (lease_until < $1 \
     OR (node_id = $2 AND incarnation IS DISTINCT FROM $3)) ORDER BY started_at"
);

/// Jobs queued before $1, longest waiting first.
pub const QUEUED_BEFORE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE state = 'queued' AND queued_at < $1 ORDER BY queued_at LIMIT $2"
);

/// Jobs in state $1 of agent $2 (either NULL for any), newest first.
pub const LIST_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM jobs WHERE {filter} ORDER BY created_at DESC, job_id DESC LIMIT ${limit}"
);

/// Deletes terminal jobs that ended before $1 and have no pending callback (their events and
/// deliveries go by cascade), skipping rows another node is pruning.
pub const PRUNE: &str = "DELETE FROM jobs WHERE job_id IN ( \
         SELECT j.job_id FROM jobs j WHERE j.finished_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.job_id = j.job_id AND d.state = 'pending') \
         ORDER BY j.finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
     RETURNING job_id, job_name, agent_name, trace_id";

/// Queued and running jobs per agent.
pub const AGENT_LOADS: &str = "SELECT agent_name, count(*) FILTER (WHERE state = 'queued'), \
     count(*) FILTER (WHERE state = 'in_progress') FROM jobs \
     WHERE state IN ('queued', 'in_progress') GROUP BY agent_name";

// ---- pauses ----

/// What is paused: agent names, `*` for every agent.
pub const PAUSED: &str = "SELECT scope FROM paused";

/// Pauses scope $1 (an earlier pause keeps its time).
pub const PAUSE: &str =
    "INSERT INTO paused (scope, paused_at) VALUES ($1, $2) ON CONFLICT (scope) DO NOTHING";

/// Resumes scope $1.
pub const RESUME: &str = "DELETE FROM paused WHERE scope = $1";

// ---- events ----

/// Draws the job's next seq and appends the event under it (one round trip).
pub const INSERT_EVENT: &str = "WITH j AS (UPDATE jobs SET last_seq = last_seq + 1, updated_at = $2 WHERE job_id = $1 RETURNING last_seq) \
     INSERT INTO job_events (job_id, seq, at, attempt, kind, data) \
     SELECT $1, last_seq, $2, $3, $4, $5 FROM j RETURNING seq";

/// Fills in a progress event's data once its seq is known, and makes it the job's latest.
pub const SET_PROGRESS: &str = "WITH e AS (UPDATE job_events SET data = $3 WHERE job_id = $1 AND seq = $2) \
     UPDATE jobs SET last_progress = $3 WHERE job_id = $1";

/// Bounded history: progress events up to seq $2 go; states stay.
pub const TRIM_PROGRESS: &str =
    "DELETE FROM job_events WHERE job_id = $1 AND kind = 'progress' AND seq <= $2";

/// The job's events after seq $2, oldest first.
pub const EVENTS_AFTER: &str = "SELECT seq, at, attempt, kind, data FROM job_events \
     WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// The job's state changes, oldest first.
pub const TRANSITIONS: &str = "SELECT data, at, attempt FROM job_events \
     WHERE job_id = $1 AND kind = 'state' ORDER BY seq";

// ---- nodes ----

/// This node's heartbeat row (its start time kept while the process is the same).
pub const UPSERT_NODE: &str = "INSERT INTO nodes (node_id, incarnation, agents, running, max_concurrent, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (node_id) DO UPDATE SET \
     started_at = CASE WHEN nodes.incarnation = excluded.incarnation THEN nodes.started_at ELSE excluded.started_at END, \
     incarnation = excluded.incarnation, agents = excluded.agents, running = excluded.running, \
     max_concurrent = excluded.max_concurrent, heartbeat_at = excluded.heartbeat_at";

/// Renews the leases of the attempts `($1, $2)` this process still owns; says of each whether
/// a cancel was asked.
pub const RENEW_LEASES: &str = "UPDATE jobs j SET lease_until = $3 FROM unnest($1::text[], $2::int[]) AS r(job_id, attempt) \
     WHERE j.job_id = r.job_id AND j.attempt = r.attempt AND j.state = 'in_progress' AND j.incarnation = $4 \
     RETURNING j.job_id, j.cancel_requested_at IS NOT NULL";

/// Nodes heard from since $1.
pub const NODES: &str = "SELECT node_id, agents, running, max_concurrent, started_at, heartbeat_at \
     FROM nodes WHERE heartbeat_at >= $1 ORDER BY node_id";

/// Proves the database takes writes (this node's row, never moved back).
pub const TOUCH_HEARTBEAT: &str =
    "UPDATE nodes SET heartbeat_at = greatest(heartbeat_at, $2) WHERE node_id = $1";

// ---- deliveries ----

/// A job's completion, leased to its writer (node $8) for the first attempt.
pub const INSERT_COMPLETION: &str = "INSERT INTO deliveries (delivery_id, job_id, kind, url, destination, body, state, created_at, \
     next_attempt_at, lease_until, leased_by) VALUES ($1, $2, 'completion', $3, $4, $5, 'pending', $6, $6, $7, $8)";

/// Leases the due completions to node $4, earliest first, skipping rows other nodes are
/// leasing; returns what an attempt needs of the job too.
pub const CLAIM_DUE_DELIVERIES: &str = "UPDATE deliveries d SET lease_until = $2, leased_by = $4 FROM jobs j \
     WHERE j.job_id = d.job_id AND d.delivery_id IN ( \
         SELECT delivery_id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= $1 \
         AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at LIMIT $3 \
         FOR UPDATE SKIP LOCKED) \
     RETURNING d.delivery_id, d.job_id, d.url, d.body, d.attempts, coalesce(d.redriven_at, d.created_at), \
               d.last_status_code, j.job_name, j.state, j.trace_id, j.agent_name";

/// Counts an attempt, records it and what follows from it, and releases the lease.
pub const RECORD_ATTEMPT: &str = "WITH d AS (UPDATE deliveries SET attempts = attempts + 1, lease_until = NULL, leased_by = NULL, \
         last_status_code = $2, last_error = $3, state = $7, next_attempt_at = $8, delivered_at = $9 \
         WHERE delivery_id = $1 RETURNING attempts) \
     INSERT INTO delivery_attempts (delivery_id, attempt, at, status_code, error, latency_ms) \
     SELECT $1, attempts, $4, $5, $6, $10 FROM d";

/// Pushes a pending delivery back without counting an attempt.
pub const DEFER: &str = "UPDATE deliveries SET next_attempt_at = $2, lease_until = NULL \
     WHERE delivery_id = $1 AND state = 'pending'";

/// Makes a pending delivery due now (or keeps it earlier); its lease, if any, stays.
pub const DELIVER_NOW: &str = "UPDATE deliveries SET next_attempt_at = least(next_attempt_at, $2) \
     WHERE delivery_id = $1 AND state = 'pending'";

/// Releases the leases held in node $1's name (its previous process's, at start).
pub const RELEASE_LEASES: &str = "UPDATE deliveries SET lease_until = NULL, leased_by = NULL \
     WHERE state = 'pending' AND lease_until IS NOT NULL AND leased_by = $1";

/// When the next pending delivery is due.
pub const NEXT_DUE: &str = "SELECT min(greatest(next_attempt_at, coalesce(lease_until, 0))) \
     FROM deliveries WHERE state = 'pending'";

/// Dead-lettered deliveries.
pub const DEAD_LETTERS: &str = "SELECT count(*) FROM deliveries WHERE state = 'dead'";

/// Deliveries matching `{filter}` (`d` is deliveries, `j` jobs), newest first.
pub const DELIVERIES: &str = "SELECT d.delivery_id, d.job_id, j.job_name, d.destination, d.state, \
            d.attempts, d.created_at, d.last_status_code, d.last_error, d.next_attempt_at, d.delivered_at \
     FROM deliveries d JOIN jobs j ON j.job_id = d.job_id WHERE {filter} \
     ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT ${limit}";

/// A delivery's attempts, oldest first.
pub const ATTEMPTS: &str = "SELECT at, status_code, error, latency_ms FROM delivery_attempts \
     WHERE delivery_id = $1 ORDER BY attempt";

/// Puts the dead deliveries matching `{filter}` back in the outbox, due at $1, skipping rows
/// another node is redriving.
pub const REDRIVE: &str = "UPDATE deliveries SET state = 'pending', next_attempt_at = $1, redriven_at = $1, \
     lease_until = NULL, leased_by = NULL \
     WHERE delivery_id IN (SELECT d.delivery_id FROM deliveries d JOIN jobs j ON j.job_id = d.job_id \
                           WHERE {filter} ORDER BY d.created_at LIMIT ${limit} FOR UPDATE OF d SKIP LOCKED) \
     RETURNING delivery_id";

// ---- the dashboard ----

/// Jobs matching `{filter}`, per state.
pub const COUNT_JOBS: &str = "SELECT state, count(*) FROM jobs WHERE {filter} GROUP BY state";

/// Jobs accepted since $1, per agent and state.
pub const COUNTS_SINCE: &str = "SELECT agent_name, state, count(*) FROM jobs WHERE created_at >= $1 \
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

/// Jobs that ended since $1.
pub const FINISHED_SINCE: &str =
    "SELECT finished_at, started_at, queued_at, state FROM jobs WHERE finished_at >= $1";

/// Callback attempts made since $1.
pub const ATTEMPTS_SINCE: &str =
    "SELECT at, latency_ms, status_code, error FROM delivery_attempts WHERE at >= $1";
