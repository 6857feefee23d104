-- Jobs, their event history and the callback outbox.
-- Times are milliseconds since the Unix epoch (UTC). JSON columns hold the contract's types.

CREATE TABLE jobs (
    job_id         TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    agent_name     TEXT NOT NULL,
    job_name       TEXT NOT NULL,
    priority       INTEGER NOT NULL,         -- 0 high, 1 normal, 2 low
    state          TEXT NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    request        TEXT NOT NULL,            -- the accepted TriggerRequest
    request_sha256 TEXT NOT NULL,
    trace_id       TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    queued_at      INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    updated_at     INTEGER NOT NULL,
    exit_code      INTEGER,
    error          TEXT,                     -- JobError
    output_index   TEXT,
    last_progress  TEXT,                     -- ProgressSnapshot
    last_seq       INTEGER NOT NULL DEFAULT 0
) STRICT;

-- The queue: what claim_next scans, in the order it scans it.
CREATE INDEX jobs_queue ON jobs (priority, queued_at, job_id) WHERE state = 'queued';
CREATE INDEX jobs_state_agent ON jobs (state, agent_name);

CREATE TABLE job_events (
    job_id  TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    kind    TEXT NOT NULL,                   -- 'state' | 'progress'
    data    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE deliveries (
    delivery_id      TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,          -- 'completion'
    url              TEXT NOT NULL,
    destination      TEXT NOT NULL,          -- origin of url, for filtering
    body             BLOB NOT NULL,
    state            TEXT NOT NULL,          -- 'pending' | 'delivered' | 'dead'
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    lease_until      INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER,
    redriven_at      INTEGER                 -- age limit counts from here after a redrive
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id);
CREATE INDEX deliveries_state_created ON deliveries (state, created_at);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    latency_ms  INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
) STRICT;
