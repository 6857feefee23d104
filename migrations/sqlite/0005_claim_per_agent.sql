-- The claim picks each offered agent's next job and takes the earliest of them: one index
-- step per agent, where (state, agent_name) made every claim sort the agent's whole queue.
CREATE INDEX jobs_agent_queue ON jobs (agent_name, schedule_key, job_id) WHERE state = 'queued';
