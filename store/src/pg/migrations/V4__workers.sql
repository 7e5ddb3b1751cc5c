-- Live workers (schema version 4): each process that claims runs keeps a
-- row here, renewed with its leases' heartbeat and removed when it stops.
-- A process that offers runs wakes one live worker with spare capacity
-- (its notification names it) instead of every worker: the others would
-- only claim nothing. `spare` is how many more runs the worker would hold
-- (0: full), as of its last renewal. Times are the database's.
CREATE TABLE chronicle_workers (
    owner text COLLATE "C" PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    spare integer NOT NULL
);
