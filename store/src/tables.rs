//! The redb tables and the binary layout of stored records.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `events` | `(stream, seq)` | [`encode_record`]: position, time, schema, hash, payload |
//! | `positions` | global position | `(stream, seq)` |
//! | `heads` | stream | `u64be(last seq) ‖ head hash` (40 bytes) |
//! | `index` | `(index name, key)` | opaque bytes (projections, unique keys) |
//! | `snapshots` | `(stream, seq)` | opaque bytes (a fold result) |
//! | `meta` | name | bytes (`format_version`) |

use chrono::DateTime;
use redb::TableDefinition;

use crate::envelope::{Hash, RawEnvelope, time_to_nanos};
use crate::ids::{Position, Seq, StreamId};

pub(crate) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(crate) const POSITIONS: TableDefinition<u64, (&str, u64)> = TableDefinition::new("positions");
pub(crate) const HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("heads");
pub(crate) const INDEX: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("index");
pub(crate) const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const RECORD_HEADER: usize = 8 + 8 + 4 + 32;

/// `u64be(position) ‖ i64be(recorded_at ns) ‖ u32be(schema) ‖ hash ‖ payload`.
pub(crate) fn encode_record(env: &RawEnvelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + env.payload.len());
    out.extend_from_slice(&env.position.0.to_be_bytes());
    out.extend_from_slice(&time_to_nanos(env.recorded_at).to_be_bytes());
    out.extend_from_slice(&env.schema_version.to_be_bytes());
    out.extend_from_slice(&env.hash);
    out.extend_from_slice(&env.payload);
    out
}

/// Decode a record stored under `(stream, seq)`; `None` if it is too short.
pub(crate) fn decode_record(stream: &StreamId, seq: u64, bytes: &[u8]) -> Option<RawEnvelope> {
    if bytes.len() < RECORD_HEADER {
        return None;
    }
    let position = u64::from_be_bytes(bytes[0..8].try_into().ok()?);
    let nanos = i64::from_be_bytes(bytes[8..16].try_into().ok()?);
    let schema_version = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let hash: Hash = bytes[20..52].try_into().ok()?;
    Some(RawEnvelope {
        stream: stream.clone(),
        seq: Seq(seq),
        position: Position(position),
        recorded_at: DateTime::from_timestamp_nanos(nanos),
        schema_version,
        payload: bytes[RECORD_HEADER..].to_vec(),
        hash,
    })
}

/// A stream's head as stored: 40 bytes.
pub(crate) fn encode_head(seq: u64, hash: &Hash) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..8].copy_from_slice(&seq.to_be_bytes());
    out[8..].copy_from_slice(hash);
    out
}

pub(crate) fn decode_head(bytes: &[u8]) -> Option<(u64, Hash)> {
    if bytes.len() != 40 {
        return None;
    }
    Some((
        u64::from_be_bytes(bytes[..8].try_into().ok()?),
        bytes[8..].try_into().ok()?,
    ))
}

/// A stored record read in place, without copying the payload.
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// Global position.
    pub position: u64,
    /// `recorded_at`, Unix nanoseconds.
    pub recorded_at_ns: i64,
    /// Payload schema version.
    pub schema_version: u32,
    /// Stored hash.
    pub hash: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// `recorded_at` as a time.
    pub fn recorded_at(&self) -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp_nanos(self.recorded_at_ns)
    }
}

/// View a stored record (as passed to [`crate::Store::scan_all`] and
/// [`crate::Store::for_each_view`]); `None` if it is too short.
pub fn view_record(bytes: &[u8]) -> Option<RecordView<'_>> {
    if bytes.len() < RECORD_HEADER {
        return None;
    }
    Some(RecordView {
        position: u64::from_be_bytes(bytes[0..8].try_into().ok()?),
        recorded_at_ns: i64::from_be_bytes(bytes[8..16].try_into().ok()?),
        schema_version: u32::from_be_bytes(bytes[16..20].try_into().ok()?),
        hash: &bytes[20..52],
        payload: &bytes[RECORD_HEADER..],
    })
}
