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
//!    commit);
//! 3. each request checked as on redb (fencing, optimistic concurrency by
//!    expected seq, unique keys, a stream once per request), in queue
//!    order and seeing the group's earlier requests; a refused request gets
//!    its error and writes nothing, the others go on;
//! 4. events, heads, index rows, snapshots and leases written with one
//!    statement each (arrays through `unnest`), the events at positions
//!    `(transaction id << 24) + 1, 2, …`;
//! 5. `COMMIT` with `synchronous_commit = on` (a caller is acknowledged
//!    only after the commit is durable), then a
//!    `pg_notify('chronicle_events', …)` for the other processes.
//!
//! No lock is shared by every writer: commits of many processes overlap,
//! and PostgreSQL merges their WAL flushes. Positions therefore grow along
//! each stream and are unique, but are not gapless nor in commit order;
//! readers of the whole log read below the horizon (see [`super::listen`]
//! and `migrations/V3__positions.sql`).
//!
//! Should the database refuse the transaction (a lost connection, a
//! unique key or a new stream taken by another process meanwhile, a
//! deadlock), the group's requests are committed one by one, and each gets
//! its own answer.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::listen::Published;
use super::rules::{Attempt, EventRows, Lease, check, fence};
use super::{PgStore, pg_error};
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

/// Groups committing at once per process. Measured with `chronicle bench
/// workers` (one worker, 2026-11-30, when every commit took one log-wide
/// lock): one at a time 656–711 runs/s, two 464, four 341 — groups
/// committing at once are smaller, so one at a time, which batches the
/// most, is kept.
const CONCURRENT_GROUPS: usize = 1;

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
                            Err(Attempt::Failed(e)) => break Err(e),
                        }
                    };
                    out.push(r);
                }
                Ok(out)
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
        let conn = PgStore::conn(&self.pool, &self.target)
            .await
            .map_err(Attempt::Failed)?;
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

    /// The transaction of [`Self::try_commit`] on `txn`, a connection of
    /// the pool (`BEGIN` and `COMMIT` are sent pipelined with the
    /// statements around them).
    async fn transaction(
        &self,
        txn: &deadpool_postgres::Object,
        requests: &[WriteRequest],
    ) -> Result<Vec<Result<Committed, StoreError>>, Attempt> {
        let t = &self.target;
        let e = |e: tokio_postgres::Error| Attempt::of(t, e);

        // What the group reads, in one round trip.
        let mut keys: Vec<String> = requests
            .iter()
            .flat_map(|r| r.appends.iter().map(|a| a.stream.key()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        keys.sort();
        let (names, inserted): (Vec<String>, Vec<String>) = requests
            .iter()
            .flat_map(|r| r.index.iter())
            .filter_map(|op| match op {
                IndexOp::Insert { index, key, .. } => Some((index.clone(), key.clone())),
                _ => None,
            })
            .unzip();
        let mut lease_runs: Vec<String> = requests
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
        lease_runs.sort();
        // Prepared first (cached per connection: no round trip after the
        // first group), so that the statements go out in this order.
        let (lock_st, heads_st, index_st, leases_st) = futures_util::future::try_join4(
            // Appenders of a stream one at a time: an advisory lock per
            // stream (in key order), taken before this transaction has an
            // id — so a later appender of a stream gets a larger id, and
            // positions grow with seq along each stream. The heads read
            // next (a statement of its own: its own snapshot) are then the
            // latest committed.
            // With the transaction's id, given once the locks are held:
            // the base of its events' positions.
            txn.prepare_cached(
                "SELECT count(pg_advisory_xact_lock(k)), \
                   (pg_current_xact_id()::text::bigint << 24) FROM \
                 (SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest($1::text[]) AS s \
                  ORDER BY k) AS t",
            ),
            txn.prepare_cached(
                "SELECT stream, last_seq, head FROM chronicle_streams WHERE stream = ANY($1)",
            ),
            txn.prepare_cached(
                "SELECT i.name, i.key, i.value FROM chronicle_index i \
                 JOIN unnest($1::text[], $2::text[]) AS k(name, key) \
                 ON i.name = k.name AND i.key = k.key \
                 WHERE i.name = ANY($1) AND i.key = ANY($2)",
            ),
            // Leases fenced or written: `FOR SHARE`, a take-over waits until
            // this commit (this gives the transaction its id: after the
            // streams' locks).
            txn.prepare_cached(
                "SELECT run, owner, epoch, expires_at > now() FROM chronicle_leases \
                 WHERE run = ANY($1) ORDER BY run FOR SHARE",
            ),
        )
        .await
        .map_err(e)?;
        let begin = txn.batch_execute("BEGIN");
        let lock_q = async {
            if keys.is_empty() {
                return Ok(0); // no events: no positions
            }
            txn.query_one(&lock_st, &[&keys])
                .await
                .map(|row| row.get::<_, i64>(1))
        };
        let heads_q = async {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            txn.query(&heads_st, &[&keys]).await
        };
        let index_q = async {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            txn.query(&index_st, &[&names, &inserted]).await
        };
        let leases_q = async {
            if lease_runs.is_empty() {
                return Ok(Vec::new());
            }
            txn.query(&leases_st, &[&lease_runs]).await
        };
        let begin = async { futures_util::future::try_join(begin, lock_q).await };
        let ((_, base), head_rows, index_rows, lease_rows) =
            futures_util::future::try_join4(begin, heads_q, index_q, leases_q)
                .await
                .map_err(e)?;
        let mut heads: HashMap<String, (u64, Hash)> = HashMap::new();
        for row in head_rows {
            let head: Vec<u8> = row.get(2);
            let head: Hash = head
                .try_into()
                .map_err(|_| Attempt::Failed(pg_error(t, "a stream head is not 32 bytes")))?;
            heads.insert(row.get(0), (row.get::<_, i64>(1) as u64, head));
        }
        let existing_streams: HashSet<String> = heads.keys().cloned().collect();
        // (name, key) -> value as this group sees it (None: absent).
        let mut index: HashMap<(String, String), Option<Vec<u8>>> = HashMap::new();
        for row in index_rows {
            index.insert((row.get(0), row.get(1)), Some(row.get(2)));
        }
        // Unique keys absent when checked: inserted without overwriting, so
        // a concurrent insert of the same key fails this transaction.
        let absent: HashSet<(String, String)> = names
            .iter()
            .cloned()
            .zip(inserted.iter().cloned())
            .filter(|k| !index.contains_key(k))
            .collect();
        let mut leases: HashMap<String, Lease> = HashMap::new();
        for row in lease_rows {
            leases.insert(
                row.get(0),
                Lease {
                    owner: row.get(1),
                    epoch: row.get::<_, i64>(2) as u64,
                    live: row.get(3),
                },
            );
        }

        // Check each request and build its envelopes (positions later).
        let mut lease_writes: Vec<LeaseOp> = Vec::new();
        let mut results: Vec<Result<Committed, StoreError>> = Vec::with_capacity(requests.len());
        let mut snapshots: HashMap<(String, i64), Vec<u8>> = HashMap::new();
        let mut written: Vec<(String, String)> = Vec::new();
        for req in requests {
            // The fence first: a writer that lost its lease learns that,
            // not that the stream moved (which it would refold and retry).
            if let Err(refused) = fence(req, &leases).and_then(|()| check(req, &heads, &index)) {
                results.push(Err(refused));
                continue;
            }
            let mut committed = Vec::new();
            for a in &req.appends {
                let key = a.stream.key();
                let (mut seq, mut hash) = heads.get(&key).copied().unwrap_or((0, GENESIS_HASH));
                for ev in &a.events {
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
                    committed.push(RawEnvelope {
                        stream: a.stream.clone(),
                        seq: Seq(seq),
                        position: Position(0),
                        recorded_at,
                        schema_version: ev.schema_version,
                        payload: ev.payload.clone(),
                        hash,
                    });
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
                written.push((name.clone(), key.clone()));
            }
            for op in &req.leases {
                match op {
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
                    lease_writes.push(op.clone());
                }
            }
            for (stream, seq, bytes) in &req.snapshots {
                // Last write of a (stream, seq) wins, as on redb.
                snapshots.insert((stream.key(), seq.0 as i64), bytes.clone());
            }
            results.push(Ok(committed));
        }
        if results.iter().all(|r| r.is_err()) {
            txn.batch_execute("ROLLBACK").await.map_err(e)?;
            return Ok(results);
        }
        let n_events: i64 = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |c| c.len() as i64))
            .sum();

        // The writes, in one round trip.
        let touched: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .flat_map(|c| c.iter().map(|e| e.stream.key()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (mut new_s, mut new_l, mut new_h) = (Vec::new(), Vec::new(), Vec::new());
        let (mut old_s, mut old_l, mut old_h) = (Vec::new(), Vec::new(), Vec::new());
        for key in touched {
            let (seq, hash) = heads[&key];
            if existing_streams.contains(&key) {
                old_s.push(key);
                old_l.push(seq as i64);
                old_h.push(hash.to_vec());
            } else {
                new_s.push(key);
                new_l.push(seq as i64);
                new_h.push(hash.to_vec());
            }
        }
        let (mut fresh_n, mut fresh_k, mut fresh_v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut put_n, mut put_k, mut put_v) = (Vec::new(), Vec::new(), Vec::new());
        let (mut del_n, mut del_k) = (Vec::new(), Vec::new());
        for k in written.into_iter().collect::<HashSet<_>>() {
            match index.get(&k) {
                Some(Some(v)) if absent.contains(&k) => {
                    fresh_n.push(k.0);
                    fresh_k.push(k.1);
                    fresh_v.push(v.clone());
                }
                Some(Some(v)) => {
                    put_n.push(k.0);
                    put_k.push(k.1);
                    put_v.push(v.clone());
                }
                _ => {
                    del_n.push(k.0);
                    del_k.push(k.1);
                }
            }
        }
        let (mut snap_s, mut snap_q, mut snap_b) = (Vec::new(), Vec::new(), Vec::new());
        for ((stream, seq), bytes) in snapshots {
            snap_s.push(stream);
            snap_q.push(seq);
            snap_b.push(bytes);
        }
        let (mut offer, mut grant_r, mut grant_o, mut grant_t, mut end) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for op in lease_writes {
            match op {
                LeaseOp::Offer { run } => offer.push(run),
                LeaseOp::Grant { run, owner, ttl_ms } => {
                    grant_r.push(run);
                    grant_o.push(owner);
                    grant_t.push(ttl_ms as f64);
                }
                LeaseOp::End { run } => end.push(run),
                LeaseOp::Hold { .. } => {}
            }
        }
        type Params<'p> = Vec<&'p (dyn tokio_postgres::types::ToSql + Sync)>;
        let mut stmts: Vec<(&str, Params<'_>)> = Vec::new();
        if !new_s.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_streams (stream, last_seq, head) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])",
                vec![&new_s, &new_l, &new_h],
            ));
        }
        if !old_s.is_empty() {
            stmts.push((
                "UPDATE chronicle_streams s SET last_seq = u.l, head = u.h \
                 FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS u(s, l, h) \
                 WHERE s.stream = ANY($1) AND s.stream = u.s",
                vec![&old_s, &old_l, &old_h],
            ));
        }
        if !fresh_n.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_index (name, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
                vec![&fresh_n, &fresh_k, &fresh_v],
            ));
        }
        if !put_n.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_index (name, key, value) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value",
                vec![&put_n, &put_k, &put_v],
            ));
        }
        if !del_n.is_empty() {
            stmts.push((
                "DELETE FROM chronicle_index i USING unnest($1::text[], $2::text[]) AS k(name, key) \
                 WHERE i.name = ANY($1) AND i.key = ANY($2) AND i.name = k.name AND i.key = k.key",
                vec![&del_n, &del_k],
            ));
        }
        if !snap_s.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_snapshots (stream, seq, bytes) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (stream, seq) DO UPDATE SET bytes = EXCLUDED.bytes",
                vec![&snap_s, &snap_q, &snap_b],
            ));
        }
        if !offer.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_leases (run) SELECT * FROM unnest($1::text[]) \
                 ON CONFLICT (run) DO NOTHING",
                vec![&offer],
            ));
        }
        if !grant_r.is_empty() {
            stmts.push((
                "INSERT INTO chronicle_leases (run, owner, epoch, expires_at) \
                 SELECT r, o, 1, now() + t * interval '1 millisecond' \
                 FROM unnest($1::text[], $2::text[], $3::float8[]) AS g(r, o, t) \
                 ON CONFLICT (run) DO NOTHING",
                vec![&grant_r, &grant_o, &grant_t],
            ));
        }
        if !end.is_empty() {
            stmts.push((
                "DELETE FROM chronicle_leases WHERE run = ANY($1)",
                vec![&end],
            ));
        }
        let mut prepared = Vec::with_capacity(stmts.len());
        for (sql, _) in &stmts {
            prepared.push(txn.prepare_cached(sql).await.map_err(e)?);
        }
        let writes = stmts
            .iter()
            .zip(&prepared)
            .map(|((_, params), st)| txn.execute(st, params.as_slice()));
        // The events are numbered from this transaction's id (see
        // migrations/V3): no lock shared by every writer, so commits of
        // many processes overlap and their flushes merge.
        let mut rows = EventRows::default();
        for env in results.iter().filter_map(|r| r.as_ref().ok()).flatten() {
            rows.push(&env.stream.key(), env);
        }
        let event_params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &rows.stream,
            &rows.seq,
            &rows.recorded_at_ns,
            &rows.schema_version,
            &rows.payload,
            &rows.hash,
            &base,
        ];
        let events_st = txn
            .prepare_cached(
                "INSERT INTO chronicle_events \
                 (position, stream, seq, recorded_at_ns, schema_version, payload, hash) \
                 SELECT $7 + u.ord, u.stream, u.seq, u.rec, u.sv, u.payload, u.hash \
                 FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::bytea[], \
                   $6::bytea[]) WITH ORDINALITY AS u(stream, seq, rec, sv, payload, hash, ord)",
            )
            .await
            .map_err(e)?;
        // The other processes learn of the commit after it (a notify in
        // the transaction would serialize every commit of the database
        // until its flush), pipelined after the COMMIT:
        // FIRST:THROUGH:WRITER:FLAGS:STREAMS, flag `o` when the group
        // offers runs to the workers, the streams appended to (`*` when too
        // many for a notification's 8,000 bytes). Lost with a crash right
        // there: the listeners' poll (every second) covers it.
        let offers = requests.iter().zip(&results).any(|(r, ok)| {
            ok.is_ok() && r.leases.iter().any(|l| matches!(l, LeaseOp::Offer { .. }))
        });
        let mut streams: Vec<&str> = rows.stream.iter().map(String::as_str).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut streams = streams.join(",");
        if streams.len() > 7000 {
            streams = "*".into();
        }
        let payload = format!(
            "{}:{}:{}:{}:{streams}",
            base + 1,
            base + n_events,
            self.published.writer(),
            if offers { "o" } else { "-" }
        );
        let notify_st = txn
            .prepare_cached("SELECT pg_notify('chronicle_events', $1)")
            .await
            .map_err(e)?;
        // Marked before the commit (its notification may reach this
        // process's listener first), with positions once known.
        let hashes: Vec<Hash> = rows
            .hash
            .iter()
            .map(|h| h.as_slice().try_into().expect("32 bytes"))
            .collect();
        self.published
            .mark(hashes.iter().copied().zip(base as u64 + 1..));
        let commit = txn.batch_execute("COMMIT");
        let done = if n_events > 0 {
            let events_q = txn.execute(&events_st, &event_params);
            let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&payload];
            let notify = txn.execute(&notify_st, &notify_params);
            let r = futures_util::future::try_join3(
                futures_util::future::try_join_all(writes),
                events_q,
                commit,
            );
            // The notification is sent after the COMMIT; its own failure
            // does not undo the commit.
            let (r, n) = futures_util::future::join(r, notify).await;
            if let (Ok(_), Err(err)) = (&r, n) {
                tracing::debug!(target = %t, error = %err, "a commit's notification was not sent");
            }
            r.map(|_| ())
        } else {
            futures_util::future::try_join(futures_util::future::try_join_all(writes), commit)
                .await
                .map(|_| ())
        };
        if let Err(err) = done {
            self.published.unmark(hashes.into_iter());
            return Err(e(err));
        }
        let envs = results.iter_mut().filter_map(|r| r.as_mut().ok()).flatten();
        for (position, env) in (base as u64 + 1..).zip(envs) {
            env.position = Position(position);
        }
        Ok(results)
    }
}
