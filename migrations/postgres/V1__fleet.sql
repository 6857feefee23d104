-- The fleet store: jobs, their event history, the callback outbox and the live nodes.
-- Times are milliseconds since the Unix epoch (UTC); JSON columns hold the contract's types as
-- text, byte for byte as the SQLite store keeps them.

CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL,
    agent_name          TEXT NOT NULL,
    job_name            TEXT NOT NULL,
    priority            BIGINT NOT NULL,         -- 0 high, 1 normal, 2 low
    state               TEXT NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    request             TEXT NOT NULL,           -- the accepted TriggerRequest
    request_sha256      TEXT NOT NULL,
    trace_id            TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    queued_at           BIGINT NOT NULL,
    started_at          BIGINT,
    finished_at         BIGINT,
    updated_at          BIGINT NOT NULL,
    exit_code           INTEGER,
    error               TEXT,
    output_index        TEXT,
    last_progress       TEXT,
    last_seq            BIGINT NOT NULL DEFAULT 0,
    schedule_key        BIGINT NOT NULL,
    cancel_requested_at BIGINT,
    -- The lease of the running attempt: which node (and which process of it) runs it, until when.
    node_id             TEXT,
    incarnation         TEXT,
    lease_until         BIGINT
);

-- The queue, in claim order, per agent (a node claims only the agents it offers).
CREATE INDEX jobs_queue ON jobs (schedule_key, job_id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (node_id, lease_until) WHERE state = 'in_progress';
CREATE INDEX jobs_state_agent ON jobs (state, agent_name);
CREATE INDEX jobs_created ON jobs (created_at, job_id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE job_events (
    job_id  TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    kind    TEXT NOT NULL,                       -- 'state' | 'progress'
    data    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE deliveries (
    delivery_id      TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,              -- 'completion'
    url              TEXT NOT NULL,
    destination      TEXT NOT NULL,              -- origin of url, for filtering
    body             BYTEA NOT NULL,
    state            TEXT NOT NULL,              -- 'pending' | 'delivered' | 'dead'
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    next_attempt_at  BIGINT,
    lease_until      BIGINT,
    leased_by        TEXT,                       -- the process making the current attempt
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     BIGINT,
    redriven_at      BIGINT
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_job ON deliveries (job_id);
CREATE INDEX deliveries_state_created ON deliveries (state, created_at);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    status_code INTEGER,
    error       TEXT,
    latency_ms  BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- One row per node, rewritten by its heartbeat: what it offers and that it is alive.
CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY,
    incarnation    TEXT NOT NULL,
    agents         TEXT NOT NULL,                -- JSON array of agent names
    running        INTEGER NOT NULL,
    max_concurrent INTEGER NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL
);
