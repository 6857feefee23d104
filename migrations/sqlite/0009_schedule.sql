-- Jobs that start later (issue 21): a trigger's run_at or delay, and an attempt waiting for
-- its retry, are `scheduled` until run_at, then promoted to `queued`. The index keeps the
-- promoter's "due now" scan and the scheduler's "next wake-up" read to one index step.
ALTER TABLE jobs ADD COLUMN run_at INTEGER;
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
-- Every attempt that ended (or was interrupted by a restart), for `attempts` in a job's status.
CREATE TABLE job_attempts (
    job_id     TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt    INTEGER NOT NULL,
    started_at INTEGER,
    ended_at   INTEGER NOT NULL,
    state      TEXT NOT NULL,
    exit_code  INTEGER,
    error      TEXT,
    retry_at   INTEGER,
    PRIMARY KEY (job_id, attempt)
);
