-- Jobs keep the order they were accepted in: ties of schedule_key (two triggers in the same
-- millisecond, on one node or several) are broken by this sequence, drawn inside the trigger's
-- transaction, not by the random job_id.
ALTER TABLE jobs ADD COLUMN accepted_seq BIGINT GENERATED ALWAYS AS IDENTITY;
DROP INDEX jobs_queue;
CREATE INDEX jobs_queue ON jobs (schedule_key, accepted_seq) WHERE state = 'queued';
