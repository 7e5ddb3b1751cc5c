//! The stream index: for each stream, the global positions of its seqs
//! 1..n and the hash of its head, kept in memory.
//!
//! The log is keyed by global position (see [`crate::tables`]), so that a
//! group commit writes to one place of one B-tree; what a stream consists
//! of is this index. It is built when the store opens — from the
//! `stream_index` segments written at the last checkpoint, then from the
//! log after `meta.indexed_through`, then from the commit journal — and
//! updated by the writer after each commit, before any caller is
//! acknowledged. Memory: 8 bytes per event plus one entry per stream.
//!
//! Building it checks the read side of the log's invariants: a stream's
//! seqs are contiguous from 1, and a segment names positions whose records
//! say the same stream and seq (checked on every read of a stream).

use std::collections::BTreeMap;
use std::path::Path;

use redb::ReadableTable;

use crate::envelope::{GENESIS_HASH, Hash};
use crate::error::{StoreError, from_redb};
use crate::memtable::Unflushed;
use crate::tables::{decode_segment, encode_segment, view_record};

/// One stream: the positions of seqs 1..=n and the hash of seq n.
#[derive(Debug)]
pub(crate) struct Entry {
    pub positions: Vec<u64>,
    pub hash: Hash,
    /// Seqs already written to `stream_index` segments.
    saved: usize,
}

impl Entry {
    fn empty() -> Self {
        Self {
            positions: Vec::new(),
            hash: GENESIS_HASH,
            saved: 0,
        }
    }
}

/// Every stream of the database, ordered by key, and the writes not yet
/// in redb (kept together under one lock: see [`crate::memtable`]).
#[derive(Debug, Default)]
pub(crate) struct StreamIndex {
    pub streams: BTreeMap<String, Entry>,
    /// The last position indexed (0: none).
    pub through: u64,
    /// Streams with seqs not yet in segments.
    dirty: Vec<String>,
    /// Acknowledged writes not yet committed to redb.
    pub memtable: Unflushed,
}

impl StreamIndex {
    /// `(last seq, head hash)` of `key`; `(0, h_0)` for a stream with no
    /// events.
    pub fn head(&self, key: &str) -> (u64, Hash) {
        self.streams
            .get(key)
            .map_or((0, GENESIS_HASH), |e| (e.positions.len() as u64, e.hash))
    }

    /// Record that `key`'s `seq` is at `position` with `hash`. `Err` (a
    /// message) when `seq` does not follow the stream's last seq.
    pub fn push(&mut self, key: &str, seq: u64, position: u64, hash: Hash) -> Result<(), String> {
        let entry = match self.streams.get_mut(key) {
            Some(e) => e,
            None => self
                .streams
                .entry(key.to_string())
                .or_insert_with(Entry::empty),
        };
        let last = entry.positions.len() as u64;
        if seq != last + 1 {
            return Err(format!(
                "stream {key}: expected seq {}, found seq {seq} at position {position}: the log has a gap",
                last + 1
            ));
        }
        if entry.saved == entry.positions.len() {
            self.dirty.push(key.to_string());
        }
        entry.positions.push(position);
        entry.hash = hash;
        self.through = self.through.max(position);
        Ok(())
    }

    /// Record the stored record `bytes` at `position` (its stream, seq and
    /// hash read from it). `Err` (a message) for a malformed record or a
    /// seq that does not follow its stream's last.
    pub fn push_record(&mut self, position: u64, bytes: &[u8]) -> Result<(), String> {
        let rec = view_record(position, bytes)
            .ok_or_else(|| format!("the record at position {position} is malformed"))?;
        let hash: Hash = rec.hash.try_into().expect("view_record checks 32 bytes");
        self.push(rec.stream, rec.seq, position, hash)
    }

    /// True when some stream has seqs not yet written to segments.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Add the log's records after `self.through` (a tail the segments do
    /// not cover), checking contiguity.
    pub fn add_log_tail(
        &mut self,
        log: &impl ReadableTable<u64, &'static [u8]>,
        path: &Path,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        let from = self.through + 1;
        for item in log.range(from..).map_err(|e| from_redb(path, e))? {
            let (k, v) = item.map_err(|e| from_redb(path, e))?;
            self.push_record(k.value(), v.value())
                .map_err(|m| corrupt(path, m))?;
            n += 1;
        }
        Ok(n)
    }

    /// Load the segments of `stream_index`, then the log after
    /// `indexed_through`.
    ///
    /// Errors: `Corruption` for a malformed segment, segments that do not
    /// continue each other, a log shorter than `indexed_through`, or a gap.
    pub fn load(
        segments: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
        log: &impl ReadableTable<u64, &'static [u8]>,
        indexed_through: u64,
        path: &Path,
    ) -> Result<Self, StoreError> {
        let mut index = Self::default();
        for item in segments.iter().map_err(|e| from_redb(path, e))? {
            let (k, v) = item.map_err(|e| from_redb(path, e))?;
            let (key, first) = k.value();
            let (hash, positions) = decode_segment(v.value()).ok_or_else(|| {
                corrupt(
                    path,
                    format!("stream index segment {key}#{first} is malformed"),
                )
            })?;
            let entry = index
                .streams
                .entry(key.to_string())
                .or_insert_with(Entry::empty);
            if first != entry.positions.len() as u64 + 1 {
                return Err(corrupt(
                    path,
                    format!(
                        "stream index of {key}: a segment starts at seq {first} after seq {}",
                        entry.positions.len()
                    ),
                ));
            }
            entry.positions.extend_from_slice(&positions);
            entry.hash = hash;
            entry.saved = entry.positions.len();
        }
        let log_end = log
            .last()
            .map_err(|e| from_redb(path, e))?
            .map_or(0, |(k, _)| k.value());
        if log_end < indexed_through {
            return Err(corrupt(
                path,
                format!(
                    "the log ends at position {log_end} but its index covers {indexed_through}"
                ),
            ));
        }
        index.through = indexed_through;
        index.add_log_tail(log, path)?;
        Ok(index)
    }

    /// Write a segment for every stream with unsaved seqs; afterwards the
    /// segments cover every position through `self.through`.
    pub fn write_segments(
        &mut self,
        table: &mut redb::Table<'_, (&'static str, u64), &'static [u8]>,
        path: &Path,
    ) -> Result<(), StoreError> {
        for key in std::mem::take(&mut self.dirty) {
            let Some(entry) = self.streams.get_mut(&key) else {
                continue;
            };
            if entry.saved == entry.positions.len() {
                continue;
            }
            let value = encode_segment(&entry.hash, &entry.positions[entry.saved..]);
            table
                .insert((key.as_str(), entry.saved as u64 + 1), value.as_slice())
                .map_err(|e| from_redb(path, e))?;
            entry.saved = entry.positions.len();
        }
        Ok(())
    }
}

fn corrupt(path: &Path, message: String) -> StoreError {
    StoreError::Corruption {
        path: path.to_path_buf(),
        message,
    }
}
