//! The redb tables and the binary layout of stored records.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `log` | global position | [`encode_record`]: stream, seq, time, schema, hash, payload |
//! | `stream_index` | `(stream, first seq)` | a segment: [`encode_segment`] |
//! | `index` | `(index name, key)` | opaque bytes (projections, unique keys) |
//! | `snapshots` | `(stream, seq)` | opaque bytes (a fold result) |
//! | `meta` | name | bytes: `format_version`, `journal_salt`, `journal_open`, `journal_lsn`, `indexed_through` (u64 LE) |
//!
//! Events are keyed by global position, so a group commit appends to the
//! right edge of one B-tree whatever streams it touches. Which positions
//! hold a stream's seqs is kept in memory ([`crate::index`]) and written to
//! `stream_index` at checkpoints as segments (the positions of a run of
//! seqs, with the hash of the last): `meta.indexed_through` is the last
//! position the segments cover; the log after it is read at open.

use std::path::Path;

use chrono::DateTime;
use redb::TableDefinition;

use crate::envelope::{Hash, RawEnvelope, time_to_nanos};
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::journal::Op;
use crate::memtable::Memtable;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const STREAM_INDEX: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("stream_index");
pub(crate) const INDEX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("index");
pub(crate) const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// `u16be(stream len) ‖ stream ‖ u64be(seq) ‖ i64be(recorded_at ns) ‖
/// u32be(schema) ‖ hash ‖ payload`.
pub(crate) fn encode_record(env: &RawEnvelope, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + 52 + env.payload.len());
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&env.seq.0.to_be_bytes());
    out.extend_from_slice(&time_to_nanos(env.recorded_at).to_be_bytes());
    out.extend_from_slice(&env.schema_version.to_be_bytes());
    out.extend_from_slice(&env.hash);
    out.extend_from_slice(&env.payload);
    out
}

/// Decode the record stored at `position`; `None` if it is malformed.
pub(crate) fn decode_record(position: u64, bytes: &[u8]) -> Option<RawEnvelope> {
    let v = view_record(position, bytes)?;
    let stream = v.stream_id()?;
    Some(v.to_envelope(stream))
}

/// A segment of `stream_index`: `hash of its last seq ‖ u64le positions`.
pub(crate) fn encode_segment(last_hash: &Hash, positions: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 8 * positions.len());
    out.extend_from_slice(last_hash);
    for p in positions {
        out.extend_from_slice(&p.to_le_bytes());
    }
    out
}

/// `(hash of the last seq, positions)` of a segment; `None` if malformed.
pub(crate) fn decode_segment(bytes: &[u8]) -> Option<(Hash, Vec<u64>)> {
    if bytes.len() < 40 || !(bytes.len() - 32).is_multiple_of(8) {
        return None;
    }
    let hash: Hash = bytes[..32].try_into().ok()?;
    let positions = bytes[32..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some((hash, positions))
}

/// A stored record read in place, without copying the payload.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// Global position.
    pub position: u64,
    /// The stream's key (as [`StreamId::key`]).
    pub stream: &'a str,
    /// Seq within the stream.
    pub seq: u64,
    /// `recorded_at`, Unix nanoseconds.
    pub recorded_at_ns: i64,
    /// Payload schema version.
    pub schema_version: u32,
    /// Stored hash (32 bytes).
    pub hash: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// `recorded_at` as a time.
    pub fn recorded_at(&self) -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp_nanos(self.recorded_at_ns)
    }

    /// The stream as a [`StreamId`]; `None` if the key is not a valid id.
    pub fn stream_id(&self) -> Option<StreamId> {
        self.stream.parse().ok()
    }

    /// An owned envelope of this record, whose stream is `stream` (the
    /// caller's id for [`RecordView::stream`]).
    pub fn to_envelope(&self, stream: StreamId) -> RawEnvelope {
        RawEnvelope {
            stream,
            seq: Seq(self.seq),
            position: Position(self.position),
            recorded_at: DateTime::from_timestamp_nanos(self.recorded_at_ns),
            schema_version: self.schema_version,
            payload: self.payload.to_vec(),
            hash: self.hash.try_into().expect("view_record checks 32 bytes"),
        }
    }
}

/// View the record stored at `position` (as passed to
/// [`crate::Store::scan_all`]); `None` if it is malformed.
pub fn view_record(position: u64, bytes: &[u8]) -> Option<RecordView<'_>> {
    let n = u16::from_be_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
    let stream = std::str::from_utf8(bytes.get(2..2 + n)?).ok()?;
    let rest = bytes.get(2 + n..)?;
    if rest.len() < 52 {
        return None;
    }
    Some(RecordView {
        position,
        stream,
        seq: u64::from_be_bytes(rest[0..8].try_into().ok()?),
        recorded_at_ns: i64::from_be_bytes(rest[8..16].try_into().ok()?),
        schema_version: u32::from_be_bytes(rest[16..20].try_into().ok()?),
        hash: &rest[20..52],
        payload: &rest[52..],
    })
}

/// The tables of one write transaction, opened once per group.
pub(crate) struct Tables<'txn> {
    pub log: redb::Table<'txn, u64, &'static [u8]>,
    pub index: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub snapshots: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// Open the tables a group writes in `txn`.
    pub(crate) fn open(txn: &'txn redb::WriteTransaction, path: &Path) -> Result<Self, StoreError> {
        let re = |e: redb::TableError| from_redb(path, e);
        Ok(Self {
            log: txn.open_table(LOG).map_err(re)?,
            index: txn.open_table(INDEX).map_err(re)?,
            snapshots: txn.open_table(SNAPSHOTS).map_err(re)?,
        })
    }

    /// Apply every write of `mem` (a flush).
    pub(crate) fn apply_memtable(&mut self, path: &Path, mem: &Memtable) -> Result<(), StoreError> {
        for (position, record) in mem.records_from(0) {
            self.apply(path, &Op::Event { position, record }, None)?;
        }
        for ((name, key), value) in &mem.kv {
            let op = match value {
                Some(value) => Op::IndexPut { name, key, value },
                None => Op::IndexDelete { name, key },
            };
            self.apply(path, &op, None)?;
        }
        for ((stream, seq), bytes) in &mem.snapshots {
            let op = Op::Snapshot {
                stream,
                seq: *seq,
                bytes,
            };
            self.apply(path, &op, None)?;
        }
        Ok(())
    }

    /// Apply one write — the same code for a live group and for a
    /// journal frame replayed at open — and, when `body` is given, add it
    /// to the group's journal frame.
    ///
    /// Errors: `Corruption` when an event's position is already taken;
    /// storage errors.
    pub(crate) fn apply(
        &mut self,
        path: &Path,
        op: &Op<'_>,
        body: Option<&mut Vec<u8>>,
    ) -> Result<(), StoreError> {
        let re = |e: redb::StorageError| from_redb(path, e);
        match *op {
            Op::Event { position, record } => {
                // Invariant: a position is written once.
                if self.log.insert(position, record).map_err(re)?.is_some() {
                    return Err(StoreError::Corruption {
                        path: path.to_path_buf(),
                        message: format!("log position {position} is already taken"),
                    });
                }
            }
            Op::IndexPut { name, key, value } => {
                self.index.insert((name, key), value).map_err(re)?;
            }
            Op::IndexDelete { name, key } => {
                self.index.remove((name, key)).map_err(re)?;
            }
            Op::Snapshot { stream, seq, bytes } => {
                self.snapshots.insert((stream, seq), bytes).map_err(re)?;
            }
        }
        if let Some(body) = body {
            op.encode(body);
        }
        Ok(())
    }
}
