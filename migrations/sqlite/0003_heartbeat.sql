-- One row rewritten by readiness and watchdog checks: proves the store really takes a write.
CREATE TABLE heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
) STRICT;
