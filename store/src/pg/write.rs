//! Group commit on PostgreSQL: the writer task takes every request queued
//! (up to `max_group`) and commits them in one transaction.
//!
//! In that transaction, in order:
//! 1. `SELECT … FROM chronicle_log_head … FOR UPDATE` — the one lock every
//!    writer of every process takes first, held to commit: commits are
//!    serialized, so the heads read next are the latest committed, and
//!    the positions given out are gapless and in commit order;
//! 2. the heads of the streams appended to, and the unique keys inserted;
//! 3. each request checked as on redb (optimistic concurrency by expected
//!    seq, unique keys, a stream once per request), in queue order and
//!    seeing the group's earlier requests; a refused request gets its
//!    error and writes nothing, the others go on;
//! 4. events, heads, index rows and snapshots written with one statement
//!    each (arrays through `unnest`); the head row advanced; a
//!    `pg_notify('chronicle_events', …)` for the other processes;
//! 5. `COMMIT` with `synchronous_commit = on`: a caller is acknowledged
//!    only after the commit is durable.
//!
//! Should the database refuse the transaction (a lost connection, a
//! unique violation from a writer that skipped the lock), every request of
//! the group gets the error; none of them was committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::listen::Published;
use super::{PgStore, nanos, pg_error};
use crate::clock::Clock;
use crate::envelope::{GENESIS_HASH, Hash, RawEnvelope, chain_hash_of};
use crate::error::StoreError;
use crate::ids::{Position, Seq};
use crate::request::{Committed, IndexOp, LeaseOp, WriteRequest};

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
}

impl Writer {
    pub async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut group = Vec::new();
        while let Some(first) = rx.recv().await {
            group.push(first);
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let jobs = std::mem::take(&mut group);
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
    }

    /// Commit `requests` in one transaction; one result per request.
    async fn commit(
        &self,
        mut requests: Vec<WriteRequest>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let t = &self.target;
        let e = |e: tokio_postgres::Error| pg_error(t, e);
        let mut conn = PgStore::conn(&self.pool, t).await?;
        let txn = conn.transaction().await.map_err(e)?;
        txn.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(e)?;
        let last: i64 = txn
            .query_one(
                "SELECT position FROM chronicle_log_head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(e)?
            .get(0);
        // The heads and taken keys this group needs, in two queries.
        let keys: Vec<String> = requests
            .iter()
            .flat_map(|r| r.appends.iter().map(|a| a.stream.key()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut heads: HashMap<String, (u64, Hash)> = HashMap::new();
        for row in txn
            .query(
                "SELECT stream, last_seq, head FROM chronicle_streams WHERE stream = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(e)?
        {
            let head: Vec<u8> = row.get(2);
            let head: Hash = head
                .try_into()
                .map_err(|_| pg_error(t, "a stream head is not 32 bytes"))?;
            heads.insert(row.get(0), (row.get::<_, i64>(1) as u64, head));
        }
        let (names, inserted): (Vec<String>, Vec<String>) = requests
            .iter()
            .flat_map(|r| r.index.iter())
            .filter_map(|op| match op {
                IndexOp::Insert { index, key, .. } => Some((index.clone(), key.clone())),
                _ => None,
            })
            .unzip();
        // (name, key) -> value as this group sees it (None: absent).
        let mut index: HashMap<(String, String), Option<Vec<u8>>> = HashMap::new();
        if !names.is_empty() {
            for row in txn
                .query(
                    "SELECT i.name, i.key, i.value FROM chronicle_index i \
                     JOIN unnest($1::text[], $2::text[]) AS k(name, key) \
                     ON i.name = k.name AND i.key = k.key",
                    &[&names, &inserted],
                )
                .await
                .map_err(e)?
            {
                index.insert((row.get(0), row.get(1)), Some(row.get(2)));
            }
        }

        // The leases fenced or created: run -> (owner, epoch, live).
        let lease_runs: Vec<String> = requests
            .iter()
            .flat_map(|r| r.leases.iter())
            .map(|op| match op {
                LeaseOp::Offer { run }
                | LeaseOp::Grant { run, .. }
                | LeaseOp::Hold { run, .. }
                | LeaseOp::End { run } => run.clone(),
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut leases: HashMap<String, Lease> = HashMap::new();
        if !lease_runs.is_empty() {
            for row in txn
                .query(
                    "SELECT run, owner, epoch, expires_at > now() FROM chronicle_leases \
                     WHERE run = ANY($1)",
                    &[&lease_runs],
                )
                .await
                .map_err(e)?
            {
                leases.insert(
                    row.get(0),
                    Lease {
                        owner: row.get(1),
                        epoch: row.get::<_, i64>(2) as u64,
                        live: row.get(3),
                    },
                );
            }
        }
        let mut lease_writes: Vec<LeaseOp> = Vec::new();

        // Check each request and build its envelopes.
        let mut next = last as u64 + 1;
        let mut rows = EventRows::default();
        let mut results = Vec::with_capacity(requests.len());
        let mut snapshots: Vec<(String, i64, Vec<u8>)> = Vec::new();
        for req in &mut requests {
            // The fence first: a writer that lost its lease learns that,
            // not that the stream moved (which it would refold and retry).
            if let Err(refused) = fence(req, &leases).and_then(|()| check(req, &heads, &index)) {
                results.push(Err(refused));
                continue;
            }
            let mut committed = Vec::new();
            for a in &mut req.appends {
                let key = a.stream.key();
                let (mut seq, mut hash) = heads.get(&key).copied().unwrap_or((0, GENESIS_HASH));
                for ev in a.events.drain(..) {
                    seq += 1;
                    let recorded_at = ev.recorded_at.unwrap_or_else(|| self.clock.now());
                    hash = chain_hash_of(
                        &hash,
                        &key,
                        Seq(seq),
                        recorded_at,
                        ev.schema_version,
                        &ev.payload,
                    );
                    let env = RawEnvelope {
                        stream: a.stream.clone(),
                        seq: Seq(seq),
                        position: Position(next),
                        recorded_at,
                        schema_version: ev.schema_version,
                        payload: ev.payload,
                        hash,
                    };
                    next += 1;
                    rows.push(&key, &env);
                    committed.push(env);
                }
                heads.insert(key, (seq, hash));
            }
            for op in &req.index {
                let (name, key, value) = match op {
                    IndexOp::Put { index, key, value } | IndexOp::Insert { index, key, value } => {
                        (index, key, Some(value.clone()))
                    }
                    IndexOp::Delete { index, key } => (index, key, None),
                };
                index.insert((name.clone(), key.clone()), value);
            }
            for op in req.leases.drain(..) {
                match &op {
                    LeaseOp::Grant { run, owner, .. } => {
                        leases.entry(run.clone()).or_insert(Lease {
                            owner: Some(owner.clone()),
                            epoch: 1,
                            live: true,
                        });
                    }
                    LeaseOp::End { run } => {
                        leases.remove(run);
                    }
                    LeaseOp::Offer { .. } | LeaseOp::Hold { .. } => {}
                }
                if !matches!(op, LeaseOp::Hold { .. }) {
                    lease_writes.push(op);
                }
            }
            for (stream, seq, bytes) in req.snapshots.drain(..) {
                snapshots.push((stream.key(), seq.0 as i64, bytes));
            }
            results.push(Ok(committed));
        }
        if results.iter().all(|r| r.is_err()) {
            txn.rollback().await.map_err(e)?;
            return Ok(results);
        }

        if !rows.position.is_empty() {
            txn.execute(
                "INSERT INTO chronicle_events \
                 (position, stream, seq, recorded_at_ns, schema_version, payload, hash) \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], \
                 $5::int4[], $6::bytea[], $7::bytea[])",
                &[
                    &rows.position,
                    &rows.stream,
                    &rows.seq,
                    &rows.recorded_at_ns,
                    &rows.schema_version,
                    &rows.payload,
                    &rows.hash,
                ],
            )
            .await
            .map_err(e)?;
            let touched: HashSet<&str> = rows.stream.iter().map(String::as_str).collect();
            let (mut s, mut l, mut h) = (Vec::new(), Vec::new(), Vec::new());
            for key in touched {
                let (seq, hash) = heads[key];
                s.push(key.to_string());
                l.push(seq as i64);
                h.push(hash.to_vec());
            }
            txn.execute(
                "INSERT INTO chronicle_streams (stream, last_seq, head) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (stream) DO UPDATE SET last_seq = EXCLUDED.last_seq, head = EXCLUDED.head",
                &[&s, &l, &h],
            )
            .await
            .map_err(e)?;
        }
        // The index rows written by the accepted requests, last write wins.
        let written: HashSet<(String, String)> = requests
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .flat_map(|(req, _)| req.index.iter())
            .map(|op| match op {
                IndexOp::Put { index, key, .. }
                | IndexOp::Insert { index, key, .. }
                | IndexOp::Delete { index, key } => (index.clone(), key.clone()),
            })
            .collect();
        let (mut pn, mut pk, mut pv, mut dn, mut dk) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (name, key) in written {
            match index.get(&(name.clone(), key.clone())) {
                Some(Some(value)) => {
                    pn.push(name);
                    pk.push(key);
                    pv.push(value.clone());
                }
                _ => {
                    dn.push(name);
                    dk.push(key);
                }
            }
        }
        if !pn.is_empty() {
            txn.execute(
                "INSERT INTO chronicle_index (name, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value",
                &[&pn, &pk, &pv],
            )
            .await
            .map_err(e)?;
        }
        if !dn.is_empty() {
            txn.execute(
                "DELETE FROM chronicle_index i USING unnest($1::text[], $2::text[]) AS k(name, key) \
                 WHERE i.name = k.name AND i.key = k.key",
                &[&dn, &dk],
            )
            .await
            .map_err(e)?;
        }
        if !snapshots.is_empty() {
            // Last write of a (stream, seq) wins, as on redb.
            let mut last: HashMap<(String, i64), Vec<u8>> = HashMap::new();
            for (s, q, b) in snapshots {
                last.insert((s, q), b);
            }
            let (mut s, mut q, mut b) = (Vec::new(), Vec::new(), Vec::new());
            for ((stream, seq), bytes) in last {
                s.push(stream);
                q.push(seq);
                b.push(bytes);
            }
            txn.execute(
                "INSERT INTO chronicle_snapshots (stream, seq, bytes) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (stream, seq) DO UPDATE SET bytes = EXCLUDED.bytes",
                &[&s, &q, &b],
            )
            .await
            .map_err(e)?;
        }
        for op in &lease_writes {
            match op {
                LeaseOp::Offer { run } => {
                    txn.execute(
                        "INSERT INTO chronicle_leases (run) VALUES ($1) ON CONFLICT (run) DO NOTHING",
                        &[run],
                    )
                    .await
                }
                LeaseOp::Grant { run, owner, ttl_ms } => {
                    let ttl = *ttl_ms as f64;
                    txn.execute(
                        "INSERT INTO chronicle_leases (run, owner, epoch, expires_at) \
                         VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond') \
                         ON CONFLICT (run) DO NOTHING",
                        &[run, owner, &ttl],
                    )
                    .await
                }
                LeaseOp::End { run } => {
                    txn.execute("DELETE FROM chronicle_leases WHERE run = $1", &[run])
                        .await
                }
                LeaseOp::Hold { .. } => continue,
            }
            .map_err(e)?;
        }
        let through = next as i64 - 1;
        if through > last {
            txn.execute(
                "UPDATE chronicle_log_head SET position = $1 WHERE id = 1",
                &[&through],
            )
            .await
            .map_err(e)?;
            txn.execute(
                "SELECT pg_notify('chronicle_events', $1)",
                &[&through.to_string()],
            )
            .await
            .map_err(e)?;
        }
        self.published.mark(
            rows.hash
                .iter()
                .zip(&rows.position)
                .map(|(h, p)| (h.as_slice().try_into().expect("32 bytes"), *p as u64)),
        );
        if let Err(err) = txn.commit().await {
            self.published.unmark(
                rows.hash
                    .iter()
                    .map(|h| h.as_slice().try_into().expect("32 bytes")),
            );
            return Err(e(err));
        }
        Ok(results)
    }
}

/// Check `req` against the heads and index as the group sees them: the
/// redb writer's rules, with the same errors.
fn check(
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
struct Lease {
    owner: Option<String>,
    epoch: u64,
    /// Not expired (by the database's clock).
    live: bool,
}

/// Fencing: every [`LeaseOp::Hold`] of `req` must name a live lease of
/// its owner at its epoch.
fn fence(req: &WriteRequest, leases: &HashMap<String, Lease>) -> Result<(), StoreError> {
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

/// The columns of the events a group inserts.
#[derive(Default)]
struct EventRows {
    position: Vec<i64>,
    stream: Vec<String>,
    seq: Vec<i64>,
    recorded_at_ns: Vec<i64>,
    schema_version: Vec<i32>,
    payload: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl EventRows {
    fn push(&mut self, key: &str, env: &RawEnvelope) {
        self.position.push(env.position.0 as i64);
        self.stream.push(key.to_string());
        self.seq.push(env.seq.0 as i64);
        self.recorded_at_ns.push(nanos(env.recorded_at));
        self.schema_version.push(env.schema_version as i32);
        self.payload.push(env.payload.clone());
        self.hash.push(env.hash.to_vec());
    }
}
