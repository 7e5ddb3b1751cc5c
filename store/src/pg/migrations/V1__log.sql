-- Chronicle's event log on PostgreSQL (schema version 1). The same model
-- as the redb file: events keyed by (stream, seq) with a global position,
-- each stream's head (last seq and hash of the per-stream SHA-256 chain),
-- the named indexes (projections and unique keys) and fold snapshots.
-- Text keys use the "C" collation so that they order bytewise, as on redb.

-- The last global position given out. Every writer locks this one row
-- first (SELECT ... FOR UPDATE), so commits are serialized and positions
-- are gapless and in commit order.
CREATE TABLE chronicle_log_head (
    id integer PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL
);
INSERT INTO chronicle_log_head (id, position) VALUES (1, 0);

CREATE TABLE chronicle_events (
    position bigint PRIMARY KEY CHECK (position >= 1),
    stream text COLLATE "C" NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    recorded_at_ns bigint NOT NULL,
    schema_version integer NOT NULL,
    payload bytea NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32),
    UNIQUE (stream, seq)
);

CREATE TABLE chronicle_streams (
    stream text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL,
    head bytea NOT NULL CHECK (length(head) = 32)
);

CREATE TABLE chronicle_index (
    name text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE chronicle_snapshots (
    stream text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (stream, seq)
);
