//! The rules a group's transaction applies to each request — the same
//! checks and errors as the redb writer's, with fencing — and the shapes
//! it writes.

use std::collections::{HashMap, HashSet};

use super::{nanos, pg_error};
use crate::envelope::{Hash, RawEnvelope};
use crate::error::StoreError;
use crate::request::{IndexOp, LeaseOp, WriteRequest};

/// Why a transaction did not commit.
pub(super) enum Attempt {
    /// A race with another process (a unique key, a new stream, a
    /// deadlock): try the requests again, one by one.
    Lost(String),
    /// The connection was lost and the transaction is known not to have
    /// committed (it ended before its `COMMIT` was sent, or the server
    /// says it aborted): the whole group may be tried again on another
    /// connection.
    Cut(StoreError),
    /// Anything else: every request of the group gets the error.
    Failed(StoreError),
}

impl Attempt {
    pub(super) fn of(target: &str, e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                Self::Lost(e.to_string())
            }
            _ if connection_lost(&e) => Self::Cut(pg_error(target, e)),
            _ => Self::Failed(pg_error(target, e)),
        }
    }
}

/// Whether `e` is the loss of the connection (closed, or ended by the
/// server: `pg_terminate_backend`, a shutdown) rather than the refusal of
/// a statement.
pub(super) fn connection_lost(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.is_closed()
        || e.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::CONNECTION_FAILURE
        })
        || (e.code().is_none()
            && std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()))
}

/// Check `req` against the heads and index as the group sees them: the
/// redb writer's rules, with the same errors.
pub(super) fn check(
    req: &WriteRequest,
    heads: &HashMap<String, (u64, Hash)>,
    index: &HashMap<(String, String), Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    for a in &req.appends {
        let key = a.stream.key();
        if !seen.insert(key.clone()) {
            return Err(StoreError::InvalidRequest(format!(
                "stream {key} appears twice in one request"
            )));
        }
        let last = heads.get(&key).map_or(0, |h| h.0);
        if last != a.expected.0 {
            return Err(StoreError::Conflict {
                stream: key,
                expected: a.expected.0,
                actual: last,
            });
        }
    }
    for op in &req.index {
        if let IndexOp::Insert {
            index: name, key, ..
        } = op
            && let Some(Some(existing)) = index.get(&(name.clone(), key.clone()))
        {
            return Err(StoreError::IndexConflict {
                index: name.clone(),
                key: key.clone(),
                existing: existing.clone(),
            });
        }
    }
    Ok(())
}

/// A run's lease as the group sees it.
pub(super) struct Lease {
    pub(super) owner: Option<String>,
    pub(super) epoch: u64,
    /// Not expired (by the database's clock).
    pub(super) live: bool,
}

/// Fencing: every [`LeaseOp::Hold`] of `req` must name a live lease of
/// its owner at its epoch.
pub(super) fn fence(req: &WriteRequest, leases: &HashMap<String, Lease>) -> Result<(), StoreError> {
    for op in &req.leases {
        let LeaseOp::Hold { run, owner, epoch } = op else {
            continue;
        };
        let message = match leases.get(run) {
            None => "the run has no lease".to_string(),
            Some(l) if l.owner.as_deref() != Some(owner) || l.epoch != *epoch => format!(
                "held by {} at epoch {}, not by {owner} at epoch {epoch}",
                l.owner.as_deref().unwrap_or("no one"),
                l.epoch
            ),
            Some(l) if !l.live => format!("the lease of {owner} at epoch {epoch} expired"),
            Some(_) => continue,
        };
        return Err(StoreError::Fenced {
            run: run.clone(),
            message,
        });
    }
    Ok(())
}

/// The columns of the events a group inserts (their positions are given
/// by the statement that inserts them).
#[derive(Default)]
pub(super) struct EventRows {
    pub(super) stream: Vec<String>,
    pub(super) seq: Vec<i64>,
    pub(super) recorded_at_ns: Vec<i64>,
    pub(super) schema_version: Vec<i32>,
    pub(super) payload: Vec<Vec<u8>>,
    pub(super) hash: Vec<Vec<u8>>,
}

impl EventRows {
    pub(super) fn push(&mut self, key: &str, env: &RawEnvelope) {
        self.stream.push(key.to_string());
        self.seq.push(env.seq.0 as i64);
        self.recorded_at_ns.push(nanos(env.recorded_at));
        self.schema_version.push(env.schema_version as i32);
        self.payload.push(env.payload.clone());
        self.hash.push(env.hash.to_vec());
    }
}
