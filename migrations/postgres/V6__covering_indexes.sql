-- Dashboard reads as index-only scans (measured with benches/pages on 100,000 jobs): the
-- deliveries list newest first with or without a state, a job count per agent, each agent's
-- queue depth and oldest queued time, and the finished jobs' times for the overview.
CREATE INDEX deliveries_created ON deliveries (created_at, delivery_id);
DROP INDEX deliveries_state_created;
CREATE INDEX deliveries_state_created ON deliveries (state, created_at, delivery_id);
DROP INDEX jobs_state_agent;
CREATE INDEX jobs_state_agent ON jobs (state, agent_name, queued_at);
CREATE INDEX jobs_agent_state ON jobs (agent_name, state);
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (finished_at, started_at, queued_at, state)
    WHERE finished_at IS NOT NULL;
