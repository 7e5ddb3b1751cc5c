//! Reads on PostgreSQL: the same answers, checks and errors as the redb
//! reads (`store/read.rs`). Long reads are paged (`PAGE` rows a query), so
//! a stream of 100,000 events is not one result set in memory twice.

use std::collections::HashMap;

use tokio_postgres::Row;

use super::{PgStore, pg_error, prefix_end};
use crate::envelope::{Hash, RawEnvelope};
use crate::error::StoreError;
use crate::ids::{Position, Seq, StreamId};
use crate::store::StreamHead;
use crate::tables::RecordView;

/// The columns [`envelope_of`] reads, in its order.
pub(crate) const EVENT_COLUMNS: &str =
    "position, stream, seq, recorded_at_ns, schema_version, payload, hash";

/// Rows per query of a paged read.
const PAGE: i64 = 10_000;

fn corrupt(target: &str, message: String) -> StoreError {
    StoreError::Corruption {
        path: target.into(),
        message,
    }
}

fn hash_of(bytes: &[u8], target: &str, what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(target, format!("{what}: a hash is not 32 bytes")))
}

/// The envelope of a row of [`EVENT_COLUMNS`].
pub(crate) fn envelope_of(row: &Row, target: &str) -> Result<RawEnvelope, StoreError> {
    envelope_of_at(row, 0, target)
}

/// [`envelope_of`] for a row whose [`EVENT_COLUMNS`] start at column `at`.
pub(crate) fn envelope_of_at(
    row: &Row,
    at: usize,
    target: &str,
) -> Result<RawEnvelope, StoreError> {
    let position: i64 = row.get(at);
    let key: &str = row.get(at + 1);
    let seq: i64 = row.get(at + 2);
    let stream: StreamId = key.parse().map_err(|_| {
        corrupt(
            target,
            format!("position {position}: bad stream key {key:?}"),
        )
    })?;
    Ok(RawEnvelope {
        stream,
        seq: Seq(seq as u64),
        position: Position(position as u64),
        recorded_at: chrono::DateTime::from_timestamp_nanos(row.get(at + 3)),
        schema_version: row.get::<_, i32>(at + 4) as u32,
        payload: row.get(at + 5),
        hash: hash_of(row.get(at + 6), target, &format!("{key}#{seq}"))?,
    })
}

impl PgStore {
    /// [`crate::Store::for_each_in_stream`]: pages of `PAGE` events,
    /// checking that seqs run on from `from` with no gap.
    pub fn for_each_in_stream(
        &self,
        stream: &StreamId,
        from: Seq,
        to: Option<Seq>,
        mut f: impl FnMut(RawEnvelope) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let key = stream.key();
        let to = to.map_or(i64::MAX, |s| s.0.min(i64::MAX as u64) as i64);
        let mut next = from.0.max(1) as i64;
        loop {
            let k = key.clone();
            let rows = self.rows(
                format!(
                    "SELECT {EVENT_COLUMNS} FROM chronicle_events \
                         WHERE stream = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4"
                ),
                vec![
                    Box::new(k.clone()),
                    Box::new(next),
                    Box::new(to),
                    Box::new(PAGE),
                ],
            )?;
            let n = rows.len();
            for row in &rows {
                let env = envelope_of(row, &self.target)?;
                if env.seq.0 as i64 != next {
                    return Err(corrupt(
                        &self.target,
                        format!(
                            "stream {key}: expected seq {next}, found seq {}: the log has a gap from seq {next}",
                            env.seq.0
                        ),
                    ));
                }
                next += 1;
                f(env)?;
            }
            if (n as i64) < PAGE || next > to {
                return Ok(());
            }
        }
    }

    /// [`crate::Store::read_stream_and_head`]: the two queries pipelined
    /// on one connection, then the same gap check as a paged read.
    #[allow(clippy::type_complexity)]
    pub fn read_stream_and_head(
        &self,
        stream: &StreamId,
    ) -> Result<(Vec<RawEnvelope>, Option<StreamHead>), StoreError> {
        let (pool, target, key) = (self.pool.clone(), self.target.clone(), stream.key());
        let (rows, head) = self.block(async move {
            let conn = PgStore::conn(&pool, &target).await?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM chronicle_events WHERE stream = $1 ORDER BY seq"
            );
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
            let e = |e| pg_error(&target, e);
            let events_st = conn.prepare_cached(&sql).await.map_err(e)?;
            let head_st = conn
                .prepare_cached("SELECT last_seq, head FROM chronicle_streams WHERE stream = $1")
                .await
                .map_err(e)?;
            let events = conn.query(&events_st, &params);
            let head = conn.query_opt(&head_st, &params);
            futures_util::future::try_join(events, head)
                .await
                .map_err(|e| pg_error(&target, e))
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let env = envelope_of(row, &self.target)?;
            if env.seq.0 != i as u64 + 1 {
                return Err(corrupt(
                    &self.target,
                    format!(
                        "stream {}: expected seq {}, found seq {}: the log has a gap from seq {}",
                        stream.key(),
                        i + 1,
                        env.seq.0,
                        i + 1
                    ),
                ));
            }
            out.push(env);
        }
        let head = head
            .map(|r| {
                Ok::<_, StoreError>(StreamHead {
                    stream: stream.clone(),
                    last_seq: Seq(r.get::<_, i64>(0) as u64),
                    hash: hash_of(r.get(1), &self.target, "a stream head")?,
                })
            })
            .transpose()?;
        Ok((out, head))
    }

    /// [`crate::Store::head`].
    pub fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let key = stream.key();
        let row = self
            .rows(
                "SELECT last_seq, head FROM chronicle_streams WHERE stream = $1".to_string(),
                vec![Box::new(key.clone())],
            )
            .map(|rows| rows.into_iter().next())?;
        row.map(|r| {
            Ok(StreamHead {
                stream: stream.clone(),
                last_seq: Seq(r.get::<_, i64>(0) as u64),
                hash: hash_of(r.get(1), &self.target, "a stream head")?,
            })
        })
        .transpose()
    }

    /// [`crate::Store::streams_with_prefix`].
    pub fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<StreamHead>, StoreError> {
        let (from, end) = (prefix.to_string(), prefix_end(prefix));
        let rows = self.rows(
            "SELECT stream, last_seq, head FROM chronicle_streams \
                 WHERE stream >= $1 AND ($2::text IS NULL OR stream < $2) ORDER BY stream"
                .to_string(),
            vec![Box::new(from), Box::new(end.clone())],
        )?;
        rows.iter()
            .map(|r| {
                let key: &str = r.get(0);
                Ok(StreamHead {
                    stream: key
                        .parse()
                        .map_err(|_| corrupt(&self.target, format!("bad stream key {key:?}")))?,
                    last_seq: Seq(r.get::<_, i64>(1) as u64),
                    hash: hash_of(r.get(2), &self.target, key)?,
                })
            })
            .collect()
    }

    /// [`crate::Store::read_all`]: what is committed now, in position
    /// order. Positions are not given out in commit order here (see
    /// `migrations/V3__positions.sql`): a later commit may take a smaller
    /// position than one returned, so a tail follows the live feed
    /// ([`crate::Store::subscribe`]), which reads below the horizon.
    pub fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RawEnvelope>, StoreError> {
        let (from, limit) = (from.0 as i64, limit.min(i64::MAX as usize) as i64);
        let rows = self.rows(
            format!(
                "SELECT {EVENT_COLUMNS} FROM chronicle_events WHERE position >= $1 \
                     ORDER BY position LIMIT $2"
            ),
            vec![Box::new(from), Box::new(limit)],
        )?;
        rows.iter().map(|r| envelope_of(r, &self.target)).collect()
    }

    /// [`crate::Store::scan_all`]: every event in position order, checking
    /// that each stream's seqs run 1, 2, … with no gap and end at its head.
    pub fn scan_all(
        &self,
        mut f: impl FnMut(RecordView<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut after = 0i64;
        let mut n = 0u64;
        loop {
            let rows = self.rows(
                format!(
                    "SELECT {EVENT_COLUMNS} FROM chronicle_events WHERE position > $1 \
                         ORDER BY position LIMIT $2"
                ),
                vec![Box::new(after), Box::new(PAGE)],
            )?;
            for row in &rows {
                let position: i64 = row.get(0);
                let stream: &str = row.get(1);
                let seq = row.get::<_, i64>(2) as u64;
                let prev = last.entry(stream.to_string()).or_insert(0);
                if seq != *prev + 1 {
                    return Err(corrupt(
                        &self.target,
                        format!(
                            "position {position} holds {stream}#{seq} after seq {prev} of its stream: the log has a gap"
                        ),
                    ));
                }
                *prev = seq;
                let hash: &[u8] = row.get(6);
                if hash.len() != 32 {
                    return Err(corrupt(
                        &self.target,
                        format!("the record at position {position} has a malformed hash"),
                    ));
                }
                f(RecordView {
                    position: position as u64,
                    stream,
                    seq,
                    recorded_at_ns: row.get(3),
                    schema_version: row.get::<_, i32>(4) as u32,
                    hash,
                    payload: row.get(5),
                })?;
                n += 1;
                after = position;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(n);
            }
        }
    }

    /// [`crate::Store::index_get`].
    pub fn index_get(&self, index: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (index, key) = (index.to_string(), key.to_string());
        let row = self
            .rows(
                "SELECT value FROM chronicle_index WHERE name = $1 AND key = $2".to_string(),
                vec![Box::new(index.clone()), Box::new(key.clone())],
            )
            .map(|rows| rows.into_iter().next())?;
        Ok(row.map(|r| r.get(0)))
    }

    /// [`crate::Store::index_scan`].
    pub fn index_scan(
        &self,
        index: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (index, from, end) = (index.to_string(), prefix.to_string(), prefix_end(prefix));
        let rows = self.rows(
            "SELECT key, value FROM chronicle_index WHERE name = $1 AND key >= $2 \
                 AND ($3::text IS NULL OR key < $3) ORDER BY key"
                .to_string(),
            vec![
                Box::new(index.clone()),
                Box::new(from),
                Box::new(end.clone()),
            ],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// [`crate::Store::load_snapshot`].
    pub fn load_snapshot(
        &self,
        stream: &StreamId,
        at: Option<Seq>,
    ) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        let key = stream.key();
        let at = at.map_or(i64::MAX, |s| s.0.min(i64::MAX as u64) as i64);
        let row = self
            .rows(
                "SELECT seq, bytes FROM chronicle_snapshots WHERE stream = $1 AND seq <= $2 \
                 ORDER BY seq DESC LIMIT 1"
                    .to_string(),
                vec![Box::new(key.clone()), Box::new(at)],
            )
            .map(|rows| rows.into_iter().next())?;
        Ok(row.map(|r| (Seq(r.get::<_, i64>(0) as u64), r.get(1))))
    }

    /// [`crate::Store::snapshot_seqs`].
    pub fn snapshot_seqs(&self, stream: &StreamId) -> Result<Vec<Seq>, StoreError> {
        let key = stream.key();
        let rows = self.rows(
            "SELECT seq FROM chronicle_snapshots WHERE stream = $1 ORDER BY seq".to_string(),
            vec![Box::new(key.clone())],
        )?;
        Ok(rows
            .iter()
            .map(|r| Seq(r.get::<_, i64>(0) as u64))
            .collect())
    }
}
