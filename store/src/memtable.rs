//! The memtable: writes that are durable in the commit journal but not yet
//! in redb.
//!
//! A store on a file acknowledges a group once its journal frame is
//! durable; the group's records, index writes and snapshots go into the
//! memtable (readable at once) and reach redb later, many groups in one
//! non-durable transaction (a *flush*) committed by the flush thread while
//! the writer goes on: every
//! [`StoreOptions::memtable_bytes`](crate::StoreOptions) the writer
//! freezes the memtable, hands it to the flush thread and starts a new
//! one; checkpoints commit the rest. So a group's acknowledgement waits
//! for one journal write and nothing of redb — ~20 µs less per commit than
//! a redb commit per group, timed inside the writer — and redb's work runs
//! on another core.
//!
//! The memtables live beside the stream index, under the same lock
//! (`Unflushed`: the active one and the frozen one being flushed). The
//! writer inserts a group's writes and its index entries together (readers
//! see both or neither); the flush thread commits a frozen memtable to
//! redb and only then drops it, under the write lock. A reader takes the
//! read lock, begins its redb read transaction, copies what it needs of
//! the memtables and lets go: whatever flush ends afterwards, the three
//! together hold every acknowledged write exactly once — positions from
//! the memtables' first on are read from them, earlier ones from redb; an
//! index key or snapshot in a memtable overrides redb's, the active
//! memtable's the frozen one's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The writes not yet in redb: the memtable being filled and, while the
/// flush thread commits it, the one before (`frozen`). Positions of
/// `frozen` come before those of `active`; for an index key or snapshot,
/// `active`'s write is the later one.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    /// Filled by the writer.
    pub active: Memtable,
    /// Being committed to redb by the flush thread.
    pub frozen: Option<Arc<Memtable>>,
}

impl Unflushed {
    /// Oldest first.
    fn parts(&self) -> impl Iterator<Item = &Memtable> {
        self.frozen
            .as_deref()
            .into_iter()
            .chain(std::iter::once(&self.active))
    }

    /// Where redb's records end: positions below are read from redb
    /// (`u64::MAX` when no record waits for a flush).
    pub fn split(&self) -> u64 {
        self.parts().map(Memtable::split).min().unwrap_or(u64::MAX)
    }

    /// The record at `position`, if it waits for a flush.
    pub fn record(&self, position: u64) -> Option<&Bytes> {
        self.parts().find_map(|m| m.record(position))
    }

    /// Records from `from` on, with their positions, in position order.
    pub fn records_from(&self, from: u64) -> impl Iterator<Item = (u64, &Bytes)> {
        self.parts().flat_map(move |m| m.records_from(from))
    }

    /// `index[key]` as the unflushed writes know it (see
    /// [`Memtable::index_get`]).
    pub fn index_get(&self, index: &str, key: &str) -> Option<Option<&Bytes>> {
        self.active
            .index_get(index, key)
            .or_else(|| self.frozen.as_ref()?.index_get(index, key))
    }

    /// Index writes of `index` whose key starts with `prefix`, oldest
    /// first (apply them in order).
    pub fn index_range(&self, index: &str, prefix: &str) -> Vec<(String, Option<Bytes>)> {
        self.parts()
            .flat_map(|m| m.index_range(index, prefix))
            .collect()
    }

    /// Snapshots of `stream` with seq ≤ `to`, ascending, the later write
    /// of a seq winning.
    pub fn snapshots_of(&self, stream: &str, to: u64) -> Vec<(u64, Bytes)> {
        let mut all = BTreeMap::new();
        for m in self.parts() {
            all.extend(m.snapshots_of(stream, to));
        }
        all.into_iter().collect()
    }
}

/// Stored bytes shared between the memtable and readers.
pub(crate) type Bytes = Arc<[u8]>;

/// Acknowledged writes not yet committed to redb.
#[derive(Debug, Default)]
pub(crate) struct Memtable {
    /// Global position of `log[0]` (meaningful while `log` is not empty).
    pub base: u64,
    /// Log records at positions `base..base + log.len()`.
    pub log: VecDeque<Bytes>,
    /// Index writes: `Some(value)` put, `None` deleted.
    pub kv: BTreeMap<(String, String), Option<Bytes>>,
    /// Snapshots `(stream key, seq)`.
    pub snapshots: BTreeMap<(String, u64), Bytes>,
    /// Bytes held (records, keys, values), for the flush threshold.
    pub bytes: usize,
}

impl Memtable {
    /// The record at `position`, if it is in the memtable.
    pub fn record(&self, position: u64) -> Option<&Bytes> {
        let i = position.checked_sub(self.base)?;
        self.log.get(usize::try_from(i).ok()?)
    }

    /// The position after the last record (where the next one goes).
    pub fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    /// Records from `from` on, with their positions.
    pub fn records_from(&self, from: u64) -> impl Iterator<Item = (u64, &Bytes)> {
        let skip = from.saturating_sub(self.base) as usize;
        (self.base..).zip(self.log.iter()).skip(skip)
    }

    /// True when nothing waits for a flush.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.log.is_empty() && self.kv.is_empty() && self.snapshots.is_empty()
    }

    /// Where redb's records end and the memtable's begin: positions below
    /// are read from redb (`u64::MAX` when the memtable holds no record).
    pub fn split(&self) -> u64 {
        if self.log.is_empty() {
            u64::MAX
        } else {
            self.base
        }
    }

    /// Add the record written at `position`.
    ///
    /// Panics if `position` does not follow the last record: the writer
    /// hands out positions in order, so anything else is a bug that would
    /// hide a record from readers.
    pub fn push_record(&mut self, position: u64, record: Bytes) {
        if self.log.is_empty() {
            self.base = position;
        }
        assert_eq!(position, self.end(), "memtable records are contiguous");
        self.bytes += record.len() + 16;
        self.log.push_back(record);
    }

    /// Record `index[key] = value` (`None`: deleted).
    pub fn put_index(&mut self, index: String, key: String, value: Option<Bytes>) {
        self.bytes += index.len() + key.len() + value.as_ref().map_or(0, |v| v.len()) + 48;
        self.kv.insert((index, key), value);
    }

    /// Record a snapshot of `stream` at `seq`.
    pub fn put_snapshot(&mut self, stream: String, seq: u64, bytes: Bytes) {
        self.bytes += stream.len() + bytes.len() + 48;
        self.snapshots.insert((stream, seq), bytes);
    }

    /// Add `later`'s writes (a committed group's), which follow this
    /// memtable's: its records come next, its index writes and snapshots
    /// override.
    pub fn absorb(&mut self, later: Memtable) {
        for (position, record) in (later.base..).zip(later.log) {
            self.push_record(position, record);
        }
        for ((index, key), value) in later.kv {
            self.put_index(index, key, value);
        }
        for ((stream, seq), bytes) in later.snapshots {
            self.put_snapshot(stream, seq, bytes);
        }
    }

    /// Forget everything (after a flush committed it to redb).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// `index[key]` as the memtable knows it: `None` if the memtable has
    /// no write of it, `Some(None)` if it deleted it.
    pub fn index_get(&self, index: &str, key: &str) -> Option<Option<&Bytes>> {
        let k = (index.to_string(), key.to_string());
        self.kv.get(&k).map(Option::as_ref)
    }

    /// Index writes of `index` whose key starts with `prefix`, in key order.
    pub fn index_range(&self, index: &str, prefix: &str) -> Vec<(String, Option<Bytes>)> {
        let start = (index.to_string(), prefix.to_string());
        self.kv
            .range(start..)
            .take_while(|((i, k), _)| i == index && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Snapshots of `stream` with seq ≤ `to`, ascending.
    pub fn snapshots_of(&self, stream: &str, to: u64) -> Vec<(u64, Bytes)> {
        let range = (stream.to_string(), 0)..=(stream.to_string(), to);
        self.snapshots
            .range(range)
            .map(|((_, seq), b)| (*seq, b.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_position_and_ranges_follow_key_order() {
        let mut m = Memtable::default();
        assert_eq!(m.split(), u64::MAX);
        m.push_record(10, Arc::from(&b"a"[..]));
        m.push_record(11, Arc::from(&b"b"[..]));
        assert_eq!(m.split(), 10);
        assert_eq!(m.record(9), None);
        assert_eq!(m.record(11).map(|b| &b[..]), Some(&b"b"[..]));
        assert_eq!(m.record(12), None);
        let from: Vec<u64> = m.records_from(11).map(|(p, _)| p).collect();
        assert_eq!(from, vec![11]);
        let all: Vec<u64> = m.records_from(0).map(|(p, _)| p).collect();
        assert_eq!(all, vec![10, 11]);

        m.put_index("runs".into(), "b".into(), Some(Arc::from(&b"2"[..])));
        m.put_index("runs".into(), "a".into(), None);
        m.put_index("runz".into(), "a".into(), Some(Arc::from(&b"9"[..])));
        assert_eq!(m.index_get("runs", "a"), Some(None));
        assert_eq!(m.index_get("runs", "c"), None);
        let keys: Vec<String> = m
            .index_range("runs", "")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["a", "b"]);

        m.put_snapshot("s".into(), 5, Arc::from(&b"x"[..]));
        m.put_snapshot("s".into(), 9, Arc::from(&b"y"[..]));
        m.put_snapshot("t".into(), 1, Arc::from(&b"z"[..]));
        let seqs: Vec<u64> = m.snapshots_of("s", 8).into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![5]);
        assert!(!m.is_empty());
        let mut later = Memtable::default();
        later.push_record(12, Arc::from(&b"c"[..]));
        later.put_index("runs".into(), "a".into(), Some(Arc::from(&b"3"[..])));
        m.absorb(later);
        assert_eq!(m.record(12).map(|b| &b[..]), Some(&b"c"[..]));
        assert_eq!(
            m.index_get("runs", "a").flatten().map(|b| &b[..]),
            Some(&b"3"[..])
        );
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.split(), u64::MAX);
    }

    #[test]
    #[should_panic(expected = "contiguous")]
    fn a_record_out_of_order_is_refused() {
        let mut m = Memtable::default();
        m.push_record(1, Arc::from(&b"a"[..]));
        m.push_record(3, Arc::from(&b"b"[..]));
    }
}
