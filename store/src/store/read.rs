//! Reads of the log: streams, heads, global order, scans (indexes,
//! snapshots and chain verification: [`super::lookups`]). Every redb call
//! runs inside `guard`, and every read checks that seqs are contiguous.

use std::sync::RwLockReadGuard;

use redb::{ReadTransaction, ReadableTable};

use super::{Store, StreamHead};
use crate::envelope::RawEnvelope;
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::index::StreamIndex;
use crate::memtable::Bytes;
use crate::tables::{LOG, RecordView, decode_record, view_record};

impl Store {
    /// Call `f` on each envelope of `stream` with seq in `from..=to`
    /// (`to = None`: to the head), ascending, without collecting them.
    /// Checks on the way that seqs are contiguous from `from`.
    pub fn for_each_in_stream(
        &self,
        stream: &StreamId,
        from: Seq,
        to: Option<Seq>,
        f: impl FnMut(RawEnvelope) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if let Some(pg) = self.pg() {
            return pg.for_each_in_stream(stream, from, to, f);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            self.events_in(stream, from.0, to.map(|s| s.0).unwrap_or(u64::MAX), f)
        })
    }

    /// A redb read transaction begun under the index's read lock, with the
    /// lock: together with the memtable behind the guard it holds every
    /// acknowledged write exactly once (see [`crate::memtable`]). Copy
    /// what is needed of the memtable and drop the guard soon: appends wait
    /// for it.
    pub(super) fn view(
        &self,
    ) -> Result<(RwLockReadGuard<'_, StreamIndex>, ReadTransaction), StoreError> {
        let index = self.inner.index.read().expect("stream index lock");
        let txn = self.read()?;
        Ok((index, txn))
    }

    /// A view for reading `stream`'s seqs `from..=to` (clipped to its
    /// head): the transaction, the positions of the seqs found in redb
    /// (first seq `from`), and the records of the following seqs that are
    /// still in the memtable.
    #[allow(clippy::type_complexity)]
    pub(super) fn stream_view(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
    ) -> Result<(ReadTransaction, Vec<u64>, Vec<(u64, Bytes)>), StoreError> {
        let (index, txn) = self.view()?;
        let Some(e) = index.streams.get(&stream.key()) else {
            return Ok((txn, Vec::new(), Vec::new()));
        };
        let end = (to.min(e.positions.len() as u64)) as usize;
        let start = (from.max(1) - 1) as usize;
        let positions = e.positions.get(start..end).unwrap_or_default();
        let split = index.memtable.split();
        let in_redb = positions.partition_point(|&p| p < split);
        let mut mem = Vec::with_capacity(positions.len() - in_redb);
        for &position in &positions[in_redb..] {
            let record = index.memtable.record(position).ok_or_else(|| {
                self.corrupt(format!(
                    "stream {}: a seq is indexed at position {position}, which the memtable lacks",
                    stream.key()
                ))
            })?;
            mem.push((position, record.clone()));
        }
        Ok((txn, positions[..in_redb].to_vec(), mem))
    }

    /// The envelope of `stream`'s `seq` at `position`, checking that the
    /// record there says the same stream and seq (the read side of the
    /// invariant that an envelope matches its key).
    pub(super) fn envelope_at(
        &self,
        log: &impl ReadableTable<u64, &'static [u8]>,
        stream: &StreamId,
        key: &str,
        seq: u64,
        position: u64,
    ) -> Result<RawEnvelope, StoreError> {
        let p = &self.inner.path;
        let rec = log.get(position).map_err(|e| from_redb(p, e))?.ok_or_else(|| {
            self.corrupt(format!(
                "stream {key}: seq {seq} is indexed at position {position}, which is missing: the log has a gap from seq {seq}"
            ))
        })?;
        self.decode_at(stream, key, seq, position, rec.value())
    }

    /// Decode the record `bytes` found at `position` as `stream`'s `seq`,
    /// checking that it says the same stream and seq.
    pub(super) fn decode_at(
        &self,
        stream: &StreamId,
        key: &str,
        seq: u64,
        position: u64,
        bytes: &[u8],
    ) -> Result<RawEnvelope, StoreError> {
        let v = view_record(position, bytes).ok_or_else(|| {
            self.corrupt(format!(
                "stream {key} seq {seq}: the record at position {position} is malformed"
            ))
        })?;
        if v.stream != key || v.seq != seq {
            return Err(self.corrupt(format!(
                "stream {key}: seq {seq} is indexed at position {position}, which holds {}#{}",
                v.stream, v.seq
            )));
        }
        Ok(v.to_envelope(stream.clone()))
    }

    /// Envelopes of `stream` with seq in `from..=to`, checking each
    /// against its index entry.
    pub(super) fn events_in(
        &self,
        stream: &StreamId,
        from: u64,
        to: u64,
        mut f: impl FnMut(RawEnvelope) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let p = &self.inner.path;
        let from = from.max(1);
        if to < from {
            return Ok(());
        }
        let (txn, positions, mem) = self.stream_view(stream, from, to)?;
        let key = stream.key();
        let after_redb = from + positions.len() as u64;
        if let (Some(&first), Some(&last)) = (positions.first(), positions.last()) {
            let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
            if last - first < 4 * positions.len() as u64 {
                // Dense (a run written in few groups, or a quiet database):
                // one descent and a sequential walk, skipping other
                // streams' events.
                let mut want = (from..).zip(positions).peekable();
                for item in log.range(first..=last).map_err(|e| from_redb(p, e))? {
                    let Some(&(seq, position)) = want.peek() else {
                        break;
                    };
                    let (k, v) = item.map_err(|e| from_redb(p, e))?;
                    if k.value() != position {
                        continue;
                    }
                    f(self.decode_at(stream, &key, seq, position, v.value())?)?;
                    want.next();
                }
                if let Some((seq, position)) = want.next() {
                    return Err(self.corrupt(format!(
                        "stream {key}: seq {seq} is indexed at position {position}, which is missing: the log has a gap from seq {seq}"
                    )));
                }
            } else {
                for (seq, position) in (from..).zip(positions) {
                    f(self.envelope_at(&log, stream, &key, seq, position)?)?;
                }
            }
        }
        for (seq, (position, record)) in (after_redb..).zip(mem) {
            f(self.decode_at(stream, &key, seq, position, &record)?)?;
        }
        Ok(())
    }

    /// Every envelope of `stream` from seq `from`, ascending.
    pub fn read_stream(
        &self,
        stream: &StreamId,
        from: Seq,
    ) -> Result<Vec<RawEnvelope>, StoreError> {
        let mut out = Vec::new();
        self.for_each_in_stream(stream, from, None, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every envelope of `stream` and its head, read together (one round
    /// trip on PostgreSQL): what a chain check needs.
    #[allow(clippy::type_complexity)]
    pub fn read_stream_and_head(
        &self,
        stream: &StreamId,
    ) -> Result<(Vec<RawEnvelope>, Option<StreamHead>), StoreError> {
        if let Some(pg) = self.pg() {
            return pg.read_stream_and_head(stream);
        }
        Ok((self.read_stream(stream, Seq(1))?, self.head(stream)?))
    }

    /// The last envelope of `stream`, if any (one index lookup, one read).
    pub fn last_event(&self, stream: &StreamId) -> Result<Option<RawEnvelope>, StoreError> {
        let Some(head) = self.head(stream)? else {
            return Ok(None);
        };
        let mut last = None;
        self.for_each_in_stream(stream, head.last_seq, Some(head.last_seq), |e| {
            last = Some(e);
            Ok(())
        })?;
        Ok(last)
    }

    /// The head of `stream` (`None` if it has no events), from the stream
    /// index.
    pub fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.head(stream);
        }
        let index = self.inner.index.read().expect("stream index lock");
        Ok(index.streams.get(&stream.key()).map(|e| StreamHead {
            stream: stream.clone(),
            last_seq: Seq(e.positions.len() as u64),
            hash: e.hash,
        }))
    }

    /// Every stream with its head, ordered by stream id.
    pub fn streams(&self) -> Result<Vec<StreamHead>, StoreError> {
        self.streams_with_prefix("")
    }

    /// The streams whose id starts with `prefix` (e.g. `agent:`), with
    /// their heads, ordered by stream id.
    pub fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<StreamHead>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.streams_with_prefix(prefix);
        }
        let index = self.inner.index.read().expect("stream index lock");
        let mut out = Vec::new();
        for (key, e) in index.streams.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            let stream: StreamId = key
                .parse()
                .map_err(|_| self.corrupt(format!("bad stream key {key:?}")))?;
            out.push(StreamHead {
                stream,
                last_seq: Seq(e.positions.len() as u64),
                hash: e.hash,
            });
        }
        Ok(out)
    }

    /// Up to `limit` envelopes of the whole database from global position
    /// `from`, ascending (for tails and projections).
    pub fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RawEnvelope>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.read_all(from, limit);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let (txn, split, mem) = {
                let (index, txn) = self.view()?;
                let mem: Vec<(u64, Bytes)> = index
                    .memtable
                    .records_from(from.0)
                    .take(limit)
                    .map(|(position, r)| (position, r.clone()))
                    .collect();
                (txn, index.memtable.split(), mem)
            };
            let decode = |position: u64, bytes: &[u8]| {
                decode_record(position, bytes).ok_or_else(|| {
                    self.corrupt(format!("the record at position {position} is malformed"))
                })
            };
            let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            if from.0 < split {
                for item in log
                    .range(from.0..split)
                    .map_err(|e| from_redb(p, e))?
                    .take(limit)
                {
                    let (k, v) = item.map_err(|e| from_redb(p, e))?;
                    out.push(decode(k.value(), v.value())?);
                }
            }
            for (position, record) in mem {
                if out.len() >= limit {
                    break;
                }
                out.push(decode(position, &record)?);
            }
            Ok(out)
        })
    }

    /// Call `f` on every record of the database in global-position order,
    /// read in place — the fastest full scan. Checks each record against
    /// the stream index (its stream's seq is at this position). Appends
    /// wait until it returns.
    pub fn scan_all(
        &self,
        mut f: impl FnMut(RecordView<'_>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.scan_all(f);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            // The index's read lock for the whole scan (appends wait), and
            // redb's snapshot taken under it: redb below the memtable's
            // split, then the memtable, hold every record once.
            let (index, txn) = self.view()?;
            let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
            let split = index.memtable.split();
            let mut n = 0u64;
            // The entry of the last stream seen: runs of one stream are common.
            let mut current: Option<(&str, &crate::index::Entry)> = None;
            let mut check = |position: u64, bytes: &[u8]| -> Result<(), StoreError> {
                let rec = view_record(position, bytes).ok_or_else(|| {
                    self.corrupt(format!("the record at position {position} is malformed"))
                })?;
                let entry = match current {
                    Some((key, e)) if key == rec.stream => e,
                    _ => {
                        let (key, e) =
                            index.streams.get_key_value(rec.stream).ok_or_else(|| {
                                self.corrupt(format!(
                                "position {position} holds {}#{}, a stream the index does not know",
                                rec.stream, rec.seq
                            ))
                            })?;
                        current = Some((key.as_str(), e));
                        e
                    }
                };
                let indexed = rec
                    .seq
                    .checked_sub(1)
                    .and_then(|i| entry.positions.get(i as usize));
                if indexed != Some(&position) {
                    return Err(self.corrupt(format!(
                        "position {position} holds {}#{}, which the index places at {indexed:?}",
                        rec.stream, rec.seq
                    )));
                }
                f(rec)?;
                n += 1;
                Ok(())
            };
            for item in log.range(..split).map_err(|e| from_redb(p, e))? {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                check(k.value(), v.value())?;
            }
            for (position, record) in index.memtable.records_from(0) {
                check(position, record)?;
            }
            Ok(n)
        })
    }
}
