//! What a group's transaction writes (see [`super::txn`]): the arrays of
//! its one write statement, gathered from the requests that commit, and
//! the statement built from the clauses that have something to write; and
//! the channel its notification goes to.

use std::collections::{HashMap, HashSet};

use super::rules::EventRows;
use super::txn::Seen;
use crate::error::StoreError;
use crate::request::{Committed, LeaseOp, WriteRequest};

/// The clauses of a group's write statement, each a data-modifying
/// `WITH` clause over arrays (`?1`, `?2`, … its parameters). The
/// statement has the clauses whose arrays are not empty (an empty clause
/// still costs the server the opening of its table and indexes), in this
/// order; they touch disjoint rows (the caller folds a group's operations
/// on one row into one), so that their order does not matter.
mod clause {
    /// Events at `?7 + 1, 2, …` (`?1`–`?6` their columns).
    pub const EVENTS: &str = "INSERT INTO chronicle_events \
         (position, stream, seq, recorded_at_ns, schema_version, payload, hash) \
       SELECT ?7 + u.ord, u.stream, u.seq, u.rec, u.sv, u.payload, u.hash \
       FROM unnest(?1::text[], ?2::int8[], ?3::int8[], ?4::int4[], ?5::bytea[], ?6::bytea[]) \
         WITH ORDINALITY AS u(stream, seq, rec, sv, payload, hash, ord)";
    /// Heads of new streams.
    pub const NEW_STREAMS: &str = "INSERT INTO chronicle_streams (stream, last_seq, head) \
       SELECT * FROM unnest(?1::text[], ?2::int8[], ?3::bytea[])";
    /// Heads that moved.
    pub const MOVED_STREAMS: &str = "UPDATE chronicle_streams s SET last_seq = u.l, head = u.h \
       FROM unnest(?1::text[], ?2::int8[], ?3::bytea[]) AS u(s, l, h) \
       WHERE s.stream = ANY(?1) AND s.stream = u.s";
    /// Unique keys, without overwriting: a concurrent insert of the same
    /// key fails the transaction.
    pub const FRESH_KEYS: &str = "INSERT INTO chronicle_index (name, key, value) \
       SELECT * FROM unnest(?1::text[], ?2::text[], ?3::bytea[])";
    /// Index rows put.
    pub const PUT_ROWS: &str = "INSERT INTO chronicle_index (name, key, value) \
       SELECT * FROM unnest(?1::text[], ?2::text[], ?3::bytea[]) \
       ON CONFLICT (name, key) DO UPDATE SET value = EXCLUDED.value";
    /// Index rows deleted.
    pub const DELETED_ROWS: &str = "DELETE FROM chronicle_index i \
       USING unnest(?1::text[], ?2::text[]) AS k(name, key) \
       WHERE i.name = ANY(?1) AND i.key = ANY(?2) AND i.name = k.name AND i.key = k.key";
    /// Snapshots (the last write of a `(stream, seq)` wins).
    pub const SNAPSHOTS: &str = "INSERT INTO chronicle_snapshots (stream, seq, bytes) \
       SELECT * FROM unnest(?1::text[], ?2::int8[], ?3::bytea[]) \
       ON CONFLICT (stream, seq) DO UPDATE SET bytes = EXCLUDED.bytes";
    /// Runs offered to any worker.
    pub const OFFERED: &str = "INSERT INTO chronicle_leases (run) SELECT * FROM unnest(?1::text[]) \
       ON CONFLICT (run) DO NOTHING";
    /// Runs granted to their creator (`?3`: the lease in milliseconds).
    pub const GRANTED: &str = "INSERT INTO chronicle_leases (run, owner, epoch, expires_at) \
       SELECT r, o, 1, now() + t * interval '1 millisecond' \
       FROM unnest(?1::text[], ?2::text[], ?3::float8[]) AS g(r, o, t) \
       ON CONFLICT (run) DO NOTHING";
    /// Leases of runs that ended.
    pub const ENDED: &str = "DELETE FROM chronicle_leases WHERE run = ANY(?1)";
}

/// The channel every process's listener hears: commits that offer runs,
/// or that append to a run without holding its lease (a command from the
/// CLI or an API node, a child's end written to its parent) — what a
/// worker must learn of at once.
pub(crate) const CHANNEL_CONTROL: &str = "chronicle_events";
/// The channel heard only by processes with a reader of the live feed:
/// commits whose every append is to a run the writer holds the lease of
/// (a worker executing its runs) — of no use to the other workers.
pub(crate) const CHANNEL_FEED: &str = "chronicle_feed";

/// Which channel announces a commit of `requests` (`results`: which of
/// them commit): [`CHANNEL_FEED`] when every committing request only
/// appends to runs it holds (a `Hold` of each stream it appends to) and
/// offers nothing, [`CHANNEL_CONTROL`] otherwise.
pub(crate) fn notify_channel(
    requests: &[WriteRequest],
    results: &[Result<Committed, StoreError>],
) -> &'static str {
    let own = requests.iter().zip(results).all(|(r, ok)| {
        ok.is_err()
            || (r.leases.iter().all(|l| !matches!(l, LeaseOp::Offer { .. }))
                && r.appends.iter().all(|a| {
                    let key = a.stream.key();
                    r.leases
                        .iter()
                        .any(|l| matches!(l, LeaseOp::Hold { run, .. } if *run == key))
                }))
    });
    if own { CHANNEL_FEED } else { CHANNEL_CONTROL }
}

/// The arrays of the write statement, gathered from the requests that
/// commit.
#[derive(Default)]
pub(super) struct Writes {
    pub(super) events: EventRows,
    new_streams: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    moved_streams: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    fresh: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    put: (Vec<String>, Vec<String>, Vec<Vec<u8>>),
    deleted: (Vec<String>, Vec<String>),
    snapshots: (Vec<String>, Vec<i64>, Vec<Vec<u8>>),
    pub(super) offered: Vec<String>,
    granted: (Vec<String>, Vec<String>, Vec<f64>),
    ended: Vec<String>,
}

impl Writes {
    /// The writes of the committing `results`, as `seen` ends up after
    /// them; `index_written`, `lease_ops` and `snapshots` in queue order.
    pub(super) fn of(
        results: &[Result<Committed, StoreError>],
        seen: &Seen,
        index_written: Vec<(String, String)>,
        lease_ops: Vec<LeaseOp>,
        snapshots: HashMap<(String, i64), Vec<u8>>,
    ) -> Self {
        let mut w = Self::default();
        for env in results.iter().filter_map(|r| r.as_ref().ok()).flatten() {
            w.events.push(&env.stream.key(), env);
        }
        let touched: HashSet<&String> = w.events.stream.iter().collect();
        for key in touched {
            let (seq, hash) = seen.heads[key];
            let to = match seen.stored_streams.contains(key) {
                true => &mut w.moved_streams,
                false => &mut w.new_streams,
            };
            to.0.push(key.clone());
            to.1.push(seq as i64);
            to.2.push(hash.to_vec());
        }
        for k in index_written.into_iter().collect::<HashSet<_>>() {
            match seen.index.get(&k) {
                Some(Some(v)) if seen.absent.contains(&k) => {
                    w.fresh.0.push(k.0);
                    w.fresh.1.push(k.1);
                    w.fresh.2.push(v.clone());
                }
                Some(Some(v)) => {
                    w.put.0.push(k.0);
                    w.put.1.push(k.1);
                    w.put.2.push(v.clone());
                }
                _ => {
                    w.deleted.0.push(k.0);
                    w.deleted.1.push(k.1);
                }
            }
        }
        for ((stream, seq), bytes) in snapshots {
            w.snapshots.0.push(stream);
            w.snapshots.1.push(seq);
            w.snapshots.2.push(bytes);
        }
        // A lease both written and ended in one group (created and ended
        // by two of its requests): no row, as the two in order would leave.
        let ended: HashSet<String> = lease_ops
            .iter()
            .filter_map(|op| match op {
                LeaseOp::End { run } => Some(run.clone()),
                _ => None,
            })
            .collect();
        for op in lease_ops {
            match op {
                LeaseOp::Offer { run } if !ended.contains(&run) => w.offered.push(run),
                LeaseOp::Grant { run, owner, ttl_ms } if !ended.contains(&run) => {
                    w.granted.0.push(run);
                    w.granted.1.push(owner);
                    w.granted.2.push(ttl_ms as f64);
                }
                LeaseOp::End { run } => w.ended.push(run),
                _ => {}
            }
        }
        w
    }

    /// The write statement — the [`clause`]s with something to write —
    /// and its parameters (`base`: the group's position base); `None` when
    /// there is nothing to write.
    pub(super) fn statement<'a>(
        &'a self,
        base: &'a i64,
    ) -> (
        Option<String>,
        Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)>,
    ) {
        type P<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let e = &self.events;
        let parts: [(bool, &str, Vec<P<'a>>); 10] = [
            (
                !e.stream.is_empty(),
                clause::EVENTS,
                vec![
                    &e.stream,
                    &e.seq,
                    &e.recorded_at_ns,
                    &e.schema_version,
                    &e.payload,
                    &e.hash,
                    base,
                ],
            ),
            (
                !self.new_streams.0.is_empty(),
                clause::NEW_STREAMS,
                vec![
                    &self.new_streams.0,
                    &self.new_streams.1,
                    &self.new_streams.2,
                ],
            ),
            (
                !self.moved_streams.0.is_empty(),
                clause::MOVED_STREAMS,
                vec![
                    &self.moved_streams.0,
                    &self.moved_streams.1,
                    &self.moved_streams.2,
                ],
            ),
            (
                !self.fresh.0.is_empty(),
                clause::FRESH_KEYS,
                vec![&self.fresh.0, &self.fresh.1, &self.fresh.2],
            ),
            (
                !self.put.0.is_empty(),
                clause::PUT_ROWS,
                vec![&self.put.0, &self.put.1, &self.put.2],
            ),
            (
                !self.deleted.0.is_empty(),
                clause::DELETED_ROWS,
                vec![&self.deleted.0, &self.deleted.1],
            ),
            (
                !self.snapshots.0.is_empty(),
                clause::SNAPSHOTS,
                vec![&self.snapshots.0, &self.snapshots.1, &self.snapshots.2],
            ),
            (
                !self.offered.is_empty(),
                clause::OFFERED,
                vec![&self.offered],
            ),
            (
                !self.granted.0.is_empty(),
                clause::GRANTED,
                vec![&self.granted.0, &self.granted.1, &self.granted.2],
            ),
            (!self.ended.is_empty(), clause::ENDED, vec![&self.ended]),
        ];
        let mut clauses = Vec::new();
        let mut params: Vec<P<'a>> = Vec::new();
        for (n, (_, template, ps)) in parts.into_iter().filter(|p| p.0).enumerate() {
            // `?k` is the clause's k-th parameter (at most 7: one digit).
            let mut sql = template.to_string();
            for k in 1..=ps.len() {
                sql = sql.replace(&format!("?{k}"), &format!("${}", params.len() + k));
            }
            clauses.push(format!("w{n} AS ({sql})"));
            params.extend(ps);
        }
        match clauses.is_empty() {
            true => (None, params),
            false => (
                Some(format!("WITH {} SELECT 1", clauses.join(", "))),
                params,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the clauses with rows, numbered on: the ended leases' array
    /// is the eighth parameter after the seven of the events.
    #[test]
    fn the_statement_has_the_clauses_with_rows_numbered_in_order() {
        let mut w = Writes::default();
        assert_eq!(w.statement(&0).0, None, "nothing to write, no statement");
        w.events.stream.push("s".into());
        w.ended.push("r".into());
        let (sql, params) = w.statement(&0);
        let sql = sql.unwrap();
        assert_eq!(params.len(), 8);
        assert_eq!(sql.matches(" AS (").count(), 2, "{sql}");
        assert!(!sql.contains("?"), "a placeholder left: {sql}");
        assert!(
            sql.contains("$7 + u.ord") && sql.contains("run = ANY($8)"),
            "{sql}"
        );
        assert!(!sql.contains("chronicle_index"), "{sql}");
    }

    /// A lease created and ended by two requests of one group leaves no
    /// row (as the two writes in order would): neither clause has it.
    #[test]
    fn a_lease_created_and_ended_in_one_group_is_not_written() {
        let ops = vec![
            LeaseOp::Offer { run: "r1".into() },
            LeaseOp::Grant {
                run: "r2".into(),
                owner: "w".into(),
                ttl_ms: 10,
            },
            LeaseOp::End { run: "r1".into() },
        ];
        let w = Writes::of(&[], &Seen::default(), Vec::new(), ops, HashMap::new());
        assert!(w.offered.is_empty());
        assert_eq!(w.granted.0, ["r2"]);
        assert_eq!(w.ended, ["r1"]);
    }
}
