-- The dashboard's lists and overview read from indexes: jobs newest first within a state, an
-- agent or a user (keyset pages on `(created_at, job_id)`), and callback attempts by time.
CREATE INDEX jobs_state_created ON jobs (state, created_at, job_id);
CREATE INDEX jobs_agent_created ON jobs (agent_name, created_at, job_id);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at, job_id);
CREATE INDEX delivery_attempts_at ON delivery_attempts (at);
