-- Leases of runs (schema version 2): which worker executes a run. A row
-- exists from a run's creation to its end. `owner` is a worker id (NULL:
-- offered to any worker), `epoch` grows at every take-over and fences the
-- writes of an earlier holder (checked in each write's own transaction),
-- `expires_at` is renewed by the holder's heartbeat. Times are the
-- database's, so the workers' clocks need not agree.
CREATE TABLE chronicle_leases (
    run text COLLATE "C" PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL DEFAULT 'epoch'
);
CREATE INDEX chronicle_leases_expiry ON chronicle_leases (expires_at);
