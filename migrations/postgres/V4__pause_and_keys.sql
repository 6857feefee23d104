-- Concurrency keys (issue 21): the trigger's key, copied here so a claim can count the running
-- jobs of an agent with the key in one index lookup.
ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
CREATE INDEX jobs_running_key ON jobs (agent_name, concurrency_key)
    WHERE state = 'in_progress' AND concurrency_key IS NOT NULL;
-- Paused agents (issue 21), seen by every node: one row per paused agent, '*' for every agent.
-- Claims skip them.
CREATE TABLE paused (
    scope TEXT PRIMARY KEY,
    paused_at BIGINT NOT NULL
);
