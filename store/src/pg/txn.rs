//! One group's transaction on PostgreSQL, in two round trips and five
//! statements (the order is given in [`super::write`]):
//!
//! 1. `BEGIN`; the streams' advisory locks and the transaction's id
//!    ([`LOCK`]); then everything the checks read, in one statement
//!    ([`READ`]: heads, unique keys, leases `FOR SHARE`);
//! 2. every write in one statement (the clauses with something to write,
//!    as data-modifying `WITH` clauses: [`super::writes`]); `COMMIT`; then
//!    the notification, on the channel the commit concerns.
//!
//! Fewer statements per transaction is what the throughput of many
//! workers turns on: each worker's groups are smaller than one worker's,
//! so the cost of a transaction, not of an event, sets the rate (see the
//! README's "Scaling out" for the figures).

use std::collections::{HashMap, HashSet};

use super::rules::{Attempt, Lease, check, fence};
use super::write::Writer;
use super::writes::{Writes, notify_channel};
use super::{PgStore, pg_error};
use crate::envelope::{GENESIS_HASH, Hash, RawEnvelope, next_link};
use crate::error::StoreError;
use crate::ids::Position;
use crate::request::{Committed, IndexOp, LeaseOp, WriteRequest};

/// Appenders of a stream one at a time: an advisory lock per stream (in
/// key order), taken before the transaction has an id — so a later
/// appender of a stream gets a larger id, and positions grow with seq
/// along each stream; then the id, the base of the group's positions.
/// `$1`: the stream keys.
const LOCK: &str = "SELECT count(pg_advisory_xact_lock(k)), \
       (pg_current_xact_id()::text::bigint << 24) FROM \
     (SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest($1::text[]) AS s \
      ORDER BY k) AS t";

/// What the checks read, after the locks (a statement of its own: its own
/// snapshot, so the heads are the latest committed). Rows tagged by
/// `kind`: 0 a stream's head `(stream, -, last_seq, head)`, 1 a unique
/// key present `(name, key, -, value)`, 2 a lease `(run, owner, epoch,
/// -, live)`, locked `FOR SHARE`: a take-over waits until this commit.
/// `$1` stream keys, `$2`/`$3` the unique keys' names and keys, `$4` the
/// runs whose leases are fenced or written.
const READ: &str = "WITH l AS ( \
       SELECT run, owner, epoch, expires_at > now() AS live FROM chronicle_leases \
       WHERE run = ANY($4) ORDER BY run FOR SHARE) \
     SELECT 0::int2 AS kind, s.stream::text AS a, NULL::text AS b, s.last_seq AS n, \
            s.head AS v, NULL::bool AS live \
       FROM chronicle_streams s WHERE s.stream = ANY($1) \
     UNION ALL \
     SELECT 1::int2, i.name::text, i.key::text, NULL, i.value, NULL FROM chronicle_index i \
       JOIN unnest($2::text[], $3::text[]) AS k(name, key) \
       ON i.name = k.name AND i.key = k.key \
       WHERE i.name = ANY($2) AND i.key = ANY($3) \
     UNION ALL \
     SELECT 2::int2, l.run::text, l.owner, l.epoch, NULL, l.live FROM l";

/// The keys a group's checks read.
struct Asked {
    /// Streams appended to, sorted.
    streams: Vec<String>,
    /// Unique keys inserted: index names and keys, pairwise.
    names: Vec<String>,
    inserted: Vec<String>,
    /// Runs whose leases are fenced or written, sorted.
    lease_runs: Vec<String>,
}

impl Asked {
    fn of(requests: &[WriteRequest]) -> Self {
        let mut streams: Vec<String> = requests
            .iter()
            .flat_map(|r| r.appends.iter().map(|a| a.stream.key()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        streams.sort();
        let (names, inserted) = requests
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
        Self {
            streams,
            names,
            inserted,
            lease_runs,
        }
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.names.is_empty() && self.lease_runs.is_empty()
    }
}

/// What the group's checks see: the stored state read by [`READ`], then
/// the group's earlier requests applied to it.
#[derive(Default)]
pub(super) struct Seen {
    pub(super) heads: HashMap<String, (u64, Hash)>,
    /// Streams that exist in the database (their heads are updated, the
    /// others inserted).
    pub(super) stored_streams: HashSet<String>,
    /// `(name, key)` → value as this group sees it (`None`: deleted).
    pub(super) index: HashMap<(String, String), Option<Vec<u8>>>,
    /// Unique keys absent when read (inserted without overwriting).
    pub(super) absent: HashSet<(String, String)>,
    pub(super) leases: HashMap<String, Lease>,
}

impl Seen {
    fn of(rows: Vec<tokio_postgres::Row>, asked: &Asked, target: &str) -> Result<Self, Attempt> {
        let mut seen = Self::default();
        for row in rows {
            match row.get::<_, i16>(0) {
                0 => {
                    let head: Vec<u8> = row.get(4);
                    let head: Hash = head.try_into().map_err(|_| {
                        Attempt::Failed(pg_error(target, "a stream head is not 32 bytes"))
                    })?;
                    seen.heads
                        .insert(row.get(1), (row.get::<_, i64>(3) as u64, head));
                }
                1 => {
                    seen.index
                        .insert((row.get(1), row.get(2)), Some(row.get(4)));
                }
                _ => {
                    seen.leases.insert(
                        row.get(1),
                        Lease {
                            owner: row.get(2),
                            epoch: row.get::<_, i64>(3) as u64,
                            live: row.get(5),
                        },
                    );
                }
            }
        }
        seen.stored_streams = seen.heads.keys().cloned().collect();
        seen.absent = asked
            .names
            .iter()
            .cloned()
            .zip(asked.inserted.iter().cloned())
            .filter(|k| !seen.index.contains_key(k))
            .collect();
        Ok(seen)
    }
}

impl Writer {
    /// The transaction of a group on `txn`, a connection of the pool, as
    /// the module says; one result per request (a refused request writes
    /// nothing, the others go on).
    pub(super) async fn transaction(
        &self,
        txn: &deadpool_postgres::Object,
        requests: &[WriteRequest],
    ) -> Result<Vec<Result<Committed, StoreError>>, Attempt> {
        let t = &self.target;
        let e = |e: tokio_postgres::Error| Attempt::of(t, e);
        let asked = Asked::of(requests);
        // Prepared first (cached per connection: no round trip after the
        // first group), so that the statements go out in this order.
        let (lock_st, read_st) =
            futures_util::future::try_join(txn.prepare_cached(LOCK), txn.prepare_cached(READ))
                .await
                .map_err(e)?;
        let begin = txn.batch_execute("BEGIN");
        let lock_q = async {
            if asked.streams.is_empty() {
                return Ok(0); // no events: no positions
            }
            txn.query_one(&lock_st, &[&asked.streams])
                .await
                .map(|row| row.get::<_, i64>(1))
        };
        let read_q = async {
            if asked.is_empty() {
                return Ok(Vec::new());
            }
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                &asked.streams,
                &asked.names,
                &asked.inserted,
                &asked.lease_runs,
            ];
            txn.query(&read_st, &params).await
        };
        let ((_, base), rows) =
            futures_util::future::try_join(futures_util::future::try_join(begin, lock_q), read_q)
                .await
                .map_err(e)?;
        let mut seen = Seen::of(rows, &asked, t)?;

        // Check each request and build its envelopes (positions later).
        let mut lease_ops: Vec<LeaseOp> = Vec::new();
        let mut results: Vec<Result<Committed, StoreError>> = Vec::with_capacity(requests.len());
        let mut snapshots: HashMap<(String, i64), Vec<u8>> = HashMap::new();
        let mut index_written: Vec<(String, String)> = Vec::new();
        for req in requests {
            // The fence first: a writer that lost its lease learns that,
            // not that the stream moved (which it would refold and retry).
            if let Err(refused) =
                fence(req, &seen.leases).and_then(|()| check(req, &seen.heads, &seen.index))
            {
                results.push(Err(refused));
                continue;
            }
            results.push(Ok(self.envelopes(req, &mut seen.heads)));
            for op in &req.index {
                let (name, key, value) = match op {
                    IndexOp::Put { index, key, value } | IndexOp::Insert { index, key, value } => {
                        (index, key, Some(value.clone()))
                    }
                    IndexOp::Delete { index, key } => (index, key, None),
                };
                seen.index.insert((name.clone(), key.clone()), value);
                index_written.push((name.clone(), key.clone()));
            }
            for op in &req.leases {
                match op {
                    LeaseOp::Grant { run, owner, .. } => {
                        seen.leases.entry(run.clone()).or_insert(Lease {
                            owner: Some(owner.clone()),
                            epoch: 1,
                            live: true,
                        });
                    }
                    LeaseOp::End { run } => {
                        seen.leases.remove(run);
                    }
                    LeaseOp::Offer { .. } | LeaseOp::Hold { .. } => {}
                }
                if !matches!(op, LeaseOp::Hold { .. }) {
                    lease_ops.push(op.clone());
                }
            }
            for (stream, seq, bytes) in &req.snapshots {
                // Last write of a (stream, seq) wins, as on redb.
                snapshots.insert((stream.key(), seq.0 as i64), bytes.clone());
            }
        }
        if results.iter().all(|r| r.is_err()) {
            txn.batch_execute("ROLLBACK").await.map_err(e)?;
            return Ok(results);
        }
        let w = Writes::of(&results, &seen, index_written, lease_ops, snapshots);
        let n_events = w.events.stream.len() as i64;
        let (write_sql, params) = w.statement(&base);
        // The other processes learn of the commit after it (a notify in
        // the transaction would serialize every commit of the database
        // until its flush), pipelined after the COMMIT:
        // FIRST:THROUGH:WRITER:FLAGS:STREAMS, flag `o` when the group
        // offers runs to the workers (`o>OWNER` when it names the worker to
        // claim them: see `super::workers`), the streams appended to (`*` when too
        // many for a notification's 8,000 bytes). Lost with a crash right
        // there: the listeners' poll (every second) covers it.
        let offers = !w.offered.is_empty();
        // One live worker is named (woken) per offering commit.
        let offered_to = match offers {
            true => self.workers.pick(&self.pool, t),
            false => None,
        };
        let mut streams: Vec<&str> = w.events.stream.iter().map(String::as_str).collect();
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
            match (offers, &offered_to) {
                (true, Some(owner)) => format!("o>{owner}"),
                (true, None) => "o".to_string(),
                (false, _) => "-".to_string(),
            }
        );
        let channel = notify_channel(requests, &results);
        let (write_st, notify_st) = futures_util::future::try_join(
            async {
                match &write_sql {
                    Some(sql) => txn.prepare_cached(sql).await.map(Some),
                    None => Ok(None),
                }
            },
            txn.prepare_cached("SELECT pg_notify($1, $2)"),
        )
        .await
        .map_err(e)?;
        // Marked before the commit (its notification may reach this
        // process's listener first), with positions once known.
        let hashes: Vec<Hash> = w
            .events
            .hash
            .iter()
            .map(|h| h.as_slice().try_into().expect("32 bytes"))
            .collect();
        self.published
            .mark(hashes.iter().copied().zip(base as u64 + 1..));
        let write_q = async {
            match &write_st {
                Some(st) => txn.execute(st, &params).await,
                None => Ok(0),
            }
        };
        let commit = txn.batch_execute("COMMIT");
        let committed = futures_util::future::try_join(write_q, commit);
        let done = if n_events > 0 {
            let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&channel, &payload];
            let notify = txn.execute(&notify_st, &notify_params);
            // The notification is sent after the COMMIT; its own failure
            // does not undo the commit.
            let (r, n) = futures_util::future::join(committed, notify).await;
            if let (Ok(_), Err(err)) = (&r, n) {
                tracing::debug!(target = %t, error = %err, "a commit's notification was not sent");
            }
            r.map(|_| ())
        } else {
            committed.await.map(|_| ())
        };
        if let Err(err) = done {
            // The COMMIT went out: when the connection was lost, the
            // transaction may have committed. Its id says which.
            let committed = match super::rules::connection_lost(&err) && n_events > 0 {
                true => self.outcome(base >> 24).await,
                false => Some(false),
            };
            match committed {
                Some(true) => {
                    tracing::info!(target = %t, error = %err, "the connection was lost after a COMMIT that took effect");
                }
                Some(false) => {
                    self.published.unmark(hashes.into_iter());
                    return Err(e(err));
                }
                None => {
                    self.published.unmark(hashes.into_iter());
                    return Err(Attempt::Failed(pg_error(
                        t,
                        format!("{err}; whether the commit took effect is unknown"),
                    )));
                }
            }
        }
        let envs = results.iter_mut().filter_map(|r| r.as_mut().ok()).flatten();
        for (position, env) in (base as u64 + 1..).zip(envs) {
            env.position = Position(position);
        }
        Ok(results)
    }

    /// Whether transaction `xid` committed, asked on another connection
    /// (`pg_xact_status`): `Some(true)` committed, `Some(false)` aborted,
    /// `None` unknown (no connection, or still in progress after 2 s — the
    /// server has not yet ended the lost connection's backend).
    async fn outcome(&self, xid: i64) -> Option<bool> {
        let started = std::time::Instant::now();
        loop {
            let status = async {
                let conn = PgStore::conn(&self.pool, &self.target).await.ok()?;
                let row = conn
                    .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid.to_string()])
                    .await
                    .ok()?;
                row.get::<_, Option<String>>(0)
            }
            .await;
            match status.as_deref() {
                Some("committed") => return Some(true),
                Some("aborted") => return Some(false),
                _ if started.elapsed() >= std::time::Duration::from_secs(2) => return None,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// The envelopes of `req`'s appends, chained from `heads` (moved on to
    /// them); positions are given later.
    fn envelopes(&self, req: &WriteRequest, heads: &mut HashMap<String, (u64, Hash)>) -> Committed {
        let mut committed = Vec::new();
        for a in &req.appends {
            let key = a.stream.key();
            let mut last = heads.get(&key).copied().unwrap_or((0, GENESIS_HASH));
            for ev in &a.events {
                let (seq, recorded_at, hash) = next_link(&key, last, ev, self.clock.as_ref());
                last = (seq.0, hash);
                committed.push(RawEnvelope {
                    stream: a.stream.clone(),
                    seq,
                    position: Position(0),
                    recorded_at,
                    schema_version: ev.schema_version,
                    payload: ev.payload.clone(),
                    hash,
                });
            }
            heads.insert(key, last);
        }
        committed
    }
}
