-- Leases and nodes, as the fleet store keeps them: the embedded store is a fleet of one.
ALTER TABLE jobs ADD COLUMN node_id TEXT;
ALTER TABLE jobs ADD COLUMN incarnation TEXT;
ALTER TABLE jobs ADD COLUMN lease_until INTEGER;

CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY,
    incarnation    TEXT NOT NULL,
    agents         TEXT NOT NULL,                -- JSON array of agent names
    running        INTEGER NOT NULL,
    max_concurrent INTEGER NOT NULL,
    started_at     INTEGER NOT NULL,
    heartbeat_at   INTEGER NOT NULL
) STRICT;
