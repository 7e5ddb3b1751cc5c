//! Leases of runs ([`crate::LeaseOp`]): which worker executes a run, on a
//! database many workers share. On PostgreSQL they are rows claimed,
//! renewed and fenced in the database; a redb file is held by one process
//! only, which holds every lease: there claims find nothing, renewals keep
//! everything and releases do nothing.

use super::Store;
use crate::error::StoreError;
pub use crate::pg::lease::LeaseInfo;

impl Store {
    /// Claim up to `max` runs whose lease is free (offered, released or
    /// expired), for worker `owner`, for `ttl_ms` milliseconds; only among
    /// `only` (stream keys) when given. Returns `(run, epoch)` of each:
    /// the epoch to fence this worker's writes with ([`crate::LeaseOp::Hold`]).
    /// Two workers claiming at once never get the same run.
    ///
    /// Errors: storage errors. On redb: always empty.
    pub fn claim_leases(
        &self,
        owner: &str,
        max: usize,
        ttl_ms: u64,
        only: Option<Vec<String>>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        match self.pg() {
            Some(pg) => pg.claim_leases(owner, max, ttl_ms, only),
            None => Ok(Vec::new()),
        }
    }

    /// The heartbeat: extend `owner`'s leases `(run, epoch)` by `ttl_ms`
    /// from now. Returns the runs renewed; a run missing from the answer
    /// is lost (its lease expired or another worker took it over) and its
    /// attempts must be stopped.
    ///
    /// Errors: storage errors (then nothing is known to be renewed). On
    /// redb: every run, renewed.
    pub fn renew_leases(
        &self,
        owner: &str,
        held: Vec<(String, u64)>,
        ttl_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        match self.pg() {
            Some(pg) => pg.renew_leases(owner, held, ttl_ms),
            None => Ok(held.into_iter().map(|(r, _)| r).collect()),
        }
    }

    /// Give `run`'s lease up (held by `owner` at `epoch`) so that another
    /// worker takes it at once. Errors: storage errors.
    pub fn release_lease(&self, run: &str, owner: &str, epoch: u64) -> Result<(), StoreError> {
        match self.pg() {
            Some(pg) => pg.release_lease(run, owner, epoch),
            None => Ok(()),
        }
    }

    /// Register worker `owner` (a process that claims runs) as live for
    /// `ttl_ms` milliseconds, able to hold `spare` more runs: offers name
    /// live workers with spare capacity in turn, each waking only the
    /// worker it names (see `chronicle_workers`, schema version 4).
    ///
    /// Errors: storage errors. On redb: nothing to do.
    pub fn register_worker(
        &self,
        owner: &str,
        ttl_ms: u64,
        spare: usize,
    ) -> Result<(), StoreError> {
        match self.pg() {
            Some(pg) => pg.register_worker(owner, ttl_ms, spare),
            None => Ok(()),
        }
    }

    /// Remove worker `owner`'s registration (it stops).
    ///
    /// Errors: storage errors. On redb: nothing to do.
    pub fn unregister_worker(&self, owner: &str) -> Result<(), StoreError> {
        match self.pg() {
            Some(pg) => pg.unregister_worker(owner),
            None => Ok(()),
        }
    }

    /// Wake every worker to claim offered runs: what a worker named by an
    /// offer does when it is full. Other processes see a
    /// [`crate::Change`] with `offers` and no `offered_to`.
    ///
    /// Errors: storage errors. On redb: nothing to do.
    pub fn announce_offers(&self) -> Result<(), StoreError> {
        match self.pg() {
            Some(pg) => pg.announce_offers(),
            None => Ok(()),
        }
    }

    /// `run`'s lease (`None`: it has none — ended, or on redb).
    /// Errors: storage errors.
    pub fn lease(&self, run: &str) -> Result<Option<LeaseInfo>, StoreError> {
        match self.pg() {
            Some(pg) => pg.lease(run),
            None => Ok(None),
        }
    }
}
