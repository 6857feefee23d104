-- Jobs keep the order they were accepted in: ties of schedule_key (two triggers in the same
-- millisecond) are broken by this sequence, not by the random job_id. Existing jobs take
-- their rowid, which grew with each insert.
ALTER TABLE jobs ADD COLUMN accepted_seq INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET accepted_seq = rowid;
CREATE INDEX jobs_accepted ON jobs (accepted_seq);
DROP INDEX jobs_agent_queue;
CREATE INDEX jobs_agent_queue ON jobs (agent_name, schedule_key, accepted_seq) WHERE state = 'queued';
DROP INDEX jobs_queue;
CREATE INDEX jobs_queue ON jobs (schedule_key, accepted_seq) WHERE state = 'queued';
