//! Group commit on PostgreSQL: the writer task takes every request queued
//! (up to `max_group`) and commits them in one transaction.
//!
//! In that transaction, in order (two round trips, `BEGIN` and `COMMIT`
//! pipelined with the statements around them):
//! 1. a transaction-scoped advisory lock per stream appended to, in key
//!    order, taken before the transaction has an id, then its id (the base
//!    of its positions): appenders of one stream go one at a time, and a
//!    later one gets a larger id;
//! 2. the heads of the streams, the unique keys inserted, and the leases
//!    fenced or written (`FOR SHARE`: a take-over waits until this
//!    commit), in one statement;
//! 3. each request checked as on redb (fencing, optimistic concurrency by
//!    expected seq, unique keys, a stream once per request), in queue
//!    order and seeing the group's earlier requests; a refused request gets
//!    its error and writes nothing, the others go on;
//! 4. events, heads, index rows, snapshots and leases written in one
//!    statement (arrays through `unnest`), the events at positions
//!    `(transaction id << 24) + 1, 2, …`;
//! 5. `COMMIT` with `synchronous_commit = on` (a caller is acknowledged
//!    only after the commit is durable), then a `pg_notify` for the other
//!    processes, on the channel the commit concerns
//!    (`writes::notify_channel`).
//!
//! The statements are in [`super::txn`] and [`super::writes`].
//!
//! No lock is shared by every writer: commits of many processes overlap,
//! and PostgreSQL merges their WAL flushes. Positions therefore grow along
//! each stream and are unique, but are not gapless nor in commit order;
//! readers of the whole log read below the horizon (see [`super::listen`]
//! and `migrations/V3__positions.sql`).
//!
//! Should the database refuse the transaction (a unique key or a new
//! stream taken by another process meanwhile, a deadlock), the group's
//! requests are committed one by one, and each gets its own answer.
//!
//! Should the connection be lost (the server ended it, the network cut
//! it, or none can be had), the group is tried again on another
//! connection, over about 3 s ([`CUT_RETRY_DELAYS_MS`]), when nothing of
//! it was written: the transaction ended before its
//! `COMMIT` went out, or the server says it aborted. When the `COMMIT` went
//! out, whether it took effect is asked on another connection
//! (`pg_xact_status` of the transaction's id, which every group that
//! appends has): committed, the callers are answered as if nothing
//! happened (the other processes learn of the commit by their next
//! notification or their poll); unknown after 2 s, they get the error.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::listen::Published;
use super::rules::Attempt;
use super::{PgStore, pg_error};
use crate::clock::Clock;
use crate::envelope::RawEnvelope;
use crate::error::StoreError;
use crate::request::{Committed, WriteRequest};

/// A queued request and where to answer.
pub(crate) struct Job {
    pub request: WriteRequest,
    pub reply: oneshot::Sender<Result<Committed, StoreError>>,
}

pub(crate) struct Writer {
    pub pool: deadpool_postgres::Pool,
    pub target: String,
    pub clock: Arc<dyn Clock>,
    pub max_group: usize,
    pub events: broadcast::Sender<Arc<[RawEnvelope]>>,
    pub published: Published,
    /// The live workers an offer names one of.
    pub workers: Arc<super::workers::Directory>,
}

/// Groups committing at once per process. Measured with `chronicle bench
/// workers` (one worker, 2026-11-30, when every commit took one log-wide
/// lock): one at a time 656–711 runs/s, two 464, four 341 — groups
/// committing at once are smaller, so one at a time, which batches the
/// most, is kept.
const CONCURRENT_GROUPS: usize = 1;

/// Delays before each new try of a group that was not committed because
/// its connection was lost or none could be had, ms: 3.2 s in all, well
/// within the default 10 s lease, so that a restart of the server or a
/// short network cut costs the runs some latency, not their attempts (a
/// caller that got the error would stop its run, and the run's next holder
/// would record its attempts abandoned).
const CUT_RETRY_DELAYS_MS: [u64; 8] = [0, 25, 50, 100, 200, 400, 800, 1600];

impl Writer {
    /// Take groups from `rx` and commit them, up to [`CONCURRENT_GROUPS`]
    /// at a time: a group is gathered when a commit slot is free, so that
    /// requests queue into larger groups while every slot is busy. Each
    /// caller is answered after its group's commit; the feed gets a
    /// group's envelopes then (per stream in order: a stream has one
    /// appender at a time; across streams, groups committing at once may
    /// be sent out of position order).
    pub async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let this = Arc::new(self);
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_GROUPS));
        loop {
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let Some(first) = rx.recv().await else {
                break;
            };
            let mut jobs = vec![first];
            while jobs.len() < this.max_group {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.commit_and_answer(jobs).await;
                drop(slot);
            });
        }
        // The queue closed: wait for the groups still committing.
        let _ = slots.acquire_many(CONCURRENT_GROUPS as u32).await;
    }

    async fn commit_and_answer(&self, jobs: Vec<Job>) {
        let (replies, requests): (Vec<_>, Vec<_>) =
            jobs.into_iter().map(|j| (j.reply, j.request)).unzip();
        let results = match self.commit(requests).await {
            Ok(results) => results,
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(target = %self.target, error = %message, "a group commit failed");
                replies
                    .iter()
                    .map(|_| Err(pg_error(&self.target, &message)))
                    .collect()
            }
        };
        let mut published = Vec::new();
        for (reply, result) in replies.into_iter().zip(results) {
            if let Ok(envs) = &result {
                published.extend(envs.iter().cloned());
            }
            let _ = reply.send(result);
        }
        if !published.is_empty() {
            let _ = self.events.send(published.into());
        }
    }

    /// Commit `requests` in one transaction; one result per request. When
    /// the database refuses the group for a race another process won (a
    /// unique key or a new stream taken meanwhile, a deadlock), each
    /// request is tried again alone: its check then sees the winner's
    /// commit and gives the request its own error.
    async fn commit(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        match self.try_commit(&requests).await {
            Err(Attempt::Lost(why)) => {
                tracing::debug!(target = %self.target, %why, "a group lost a race; its requests commit one by one");
                let mut out = Vec::with_capacity(requests.len());
                for req in requests {
                    let one = std::slice::from_ref(&req);
                    let mut tries = 0;
                    let r = loop {
                        match self.try_commit(one).await {
                            Ok(mut r) => break r.pop().expect("one result per request"),
                            Err(Attempt::Lost(why)) if tries < 3 => {
                                tries += 1;
                                tracing::debug!(%why, "a request lost a race; again");
                            }
                            Err(Attempt::Lost(why)) => break Err(pg_error(&self.target, why)),
                            Err(Attempt::Cut(e) | Attempt::Failed(e)) => break Err(e),
                        }
                    };
                    out.push(r);
                }
                Ok(out)
            }
            Err(Attempt::Cut(e)) => {
                // Nothing of the group was written: again, on another
                // connection (the pool drops the lost one), after each of
                // the delays while the database stays out of reach.
                let mut last = e;
                for delay_ms in CUT_RETRY_DELAYS_MS {
                    tracing::info!(target = %self.target, error = %last, delay_ms, "a group was not committed: the connection was lost; again");
                    tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
                    match self.try_commit(&requests).await {
                        Ok(results) => return Ok(results),
                        Err(Attempt::Cut(e)) => last = e,
                        Err(Attempt::Failed(e)) => return Err(e),
                        Err(Attempt::Lost(why)) => return Err(pg_error(&self.target, why)),
                    }
                }
                Err(last)
            }
            Err(Attempt::Failed(e)) => Err(e),
            Ok(results) => Ok(results),
        }
    }

    /// One transaction for `requests`, as the module says: the reads and
    /// locks in one round trip, the checks and hash chains here, the
    /// writes, `COMMIT` and the notification in a second.
    async fn try_commit(
        &self,
        requests: &[WriteRequest],
    ) -> Result<Vec<Result<Committed, StoreError>>, Attempt> {
        // No connection: nothing of the group was written.
        let conn = PgStore::conn(&self.pool, &self.target)
            .await
            .map_err(Attempt::Cut)?;
        let r = self.transaction(&conn, requests).await;
        if r.is_err() {
            // Pipelined: the failure may have come before or after the
            // server ended the transaction. A connection that cannot even
            // roll back leaves the pool.
            if conn.batch_execute("ROLLBACK").await.is_err() {
                let _ = deadpool_postgres::Object::take(conn);
            }
        }
        r
    }
}
