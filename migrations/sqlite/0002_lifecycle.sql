-- Lifecycle: priority aging, durable cancel requests, lists and pruning.

-- The claim order: acceptance time pushed back by priority rank x priority_aging, so FIFO holds
-- within a priority and a low job is overtaken only for a bounded time.
ALTER TABLE jobs ADD COLUMN schedule_key INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET schedule_key = queued_at + priority * 60000;
DROP INDEX jobs_queue;
CREATE INDEX jobs_queue ON jobs (schedule_key, job_id) WHERE state = 'queued';

-- Set when a cancel is accepted for a running job; a restart ends such a job canceled.
ALTER TABLE jobs ADD COLUMN cancel_requested_at INTEGER;

CREATE INDEX jobs_created ON jobs (created_at, job_id);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
