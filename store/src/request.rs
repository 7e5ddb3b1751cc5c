//! Write requests: what a caller asks the writer to commit atomically.

use crate::envelope::{NewEvent, RawEnvelope};
use crate::ids::{Seq, StreamId};

/// Events to append to one stream, with optimistic concurrency.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream.
    pub stream: StreamId,
    /// The seq the caller believes is last (`Seq(0)` for a new stream).
    pub expected: Seq,
    /// The events, in order; they get seqs `expected+1 ..`. None: a
    /// check — the request commits only while the stream's head is
    /// `expected` (else [`crate::StoreError::Conflict`]), and nothing is
    /// written to the stream (on PostgreSQL its appenders wait for the
    /// request's commit, as for an append).
    pub events: Vec<NewEvent>,
}

/// A write to a named index (a projection or a unique key), made in the
/// same transaction as the appends of its request.
#[derive(Clone, Debug)]
pub enum IndexOp {
    /// Set `index[key] = value`.
    Put {
        /// Index name, e.g. `runs`.
        index: String,
        /// Key inside the index.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Set `index[key] = value`, failing the whole request with
    /// [`StoreError::IndexConflict`](crate::StoreError::IndexConflict) when the key is already present.
    Insert {
        /// Index name, e.g. `idempotency`.
        index: String,
        /// Key inside the index.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove `index[key]`.
    Delete {
        /// Index name.
        index: String,
        /// Key inside the index.
        key: String,
    },
}

/// A lease operation made in the same transaction as a request's appends
/// (PostgreSQL: the `chronicle_leases` table; a redb file is held by one
/// process, which holds every lease, so there they are no-ops).
///
/// A run's lease says which worker executes it: `owner` (a worker id),
/// `epoch` (grows at every take-over) and an expiry renewed by heartbeat
/// ([`crate::Store::renew_leases`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseOp {
    /// A new run no worker holds yet: any worker may claim it at once
    /// ([`crate::Store::claim_leases`]).
    Offer {
        /// The run's stream key.
        run: String,
    },
    /// A new run held by `owner` from the start (epoch 1), for `ttl_ms`
    /// milliseconds unless renewed.
    Grant {
        /// The run's stream key.
        run: String,
        /// The worker id.
        owner: String,
        /// Lease duration, milliseconds.
        ttl_ms: u64,
    },
    /// Fencing: the whole request fails with
    /// [`StoreError::Fenced`](crate::StoreError::Fenced) unless `owner`
    /// holds `run`'s lease at `epoch` and it has not expired (by the
    /// database's clock).
    Hold {
        /// The run's stream key.
        run: String,
        /// The worker id.
        owner: String,
        /// The epoch the worker claimed.
        epoch: u64,
    },
    /// The run has ended: its lease is removed.
    End {
        /// The run's stream key.
        run: String,
    },
}

/// One atomic write: every append, index operation and snapshot in it
/// commits together or not at all.
#[derive(Clone, Debug, Default)]
pub struct WriteRequest {
    /// Appends, at most one per stream.
    pub appends: Vec<Append>,
    /// Index operations (projections updated with the appends).
    pub index: Vec<IndexOp>,
    /// Snapshots `(stream, seq, bytes)` to store.
    pub snapshots: Vec<(StreamId, Seq, Vec<u8>)>,
    /// Lease operations (fencing and the leases of new and ended runs).
    pub leases: Vec<LeaseOp>,
}

impl WriteRequest {
    /// A request with one append.
    pub fn append(stream: StreamId, expected: Seq, events: Vec<NewEvent>) -> Self {
        Self {
            appends: vec![Append {
                stream,
                expected,
                events,
            }],
            ..Self::default()
        }
    }

    /// Add an index operation.
    pub fn with_index(mut self, op: IndexOp) -> Self {
        self.index.push(op);
        self
    }
}

/// What a committed request wrote: the envelopes of its appends, in the
/// order of the request's appends and events.
pub type Committed = Vec<RawEnvelope>;
