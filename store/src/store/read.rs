//! Reads of the log: streams, heads, global order, scans, indexes,
//! snapshots, chain verification. Every redb call runs inside `guard`, and
//! every read checks that seqs are contiguous.

use redb::{ReadTransaction, ReadableTable};

use super::{ChainReport, Store, StreamHead};
use crate::envelope::{ChainCheck, RawEnvelope};
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::tables::{INDEX, LOG, RecordView, SNAPSHOTS, decode_record, view_record};
use crate::write::WriteRequest;

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
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let txn = self.read()?;
            self.events_in(&txn, stream, from.0, to.map(|s| s.0).unwrap_or(u64::MAX), f)
        })
    }

    /// The positions of `stream`'s seqs `from..=to` (clipped to its head),
    /// from the stream index.
    fn positions(&self, stream: &StreamId, from: u64, to: u64) -> Vec<u64> {
        let index = self.inner.index.read().expect("stream index lock");
        match index.streams.get(&stream.key()) {
            Some(e) => {
                let end = (to.min(e.positions.len() as u64)) as usize;
                let start = (from.max(1) - 1) as usize;
                e.positions
                    .get(start..end)
                    .map(<[u64]>::to_vec)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        }
    }

    /// The envelope of `stream`'s `seq` at `position`, checking that the
    /// record there says the same stream and seq (the read side of the
    /// invariant that an envelope matches its key).
    fn envelope_at(
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
    fn decode_at(
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

    /// Envelopes of `stream` with seq in `from..=to` inside `txn`, checking
    /// each against its index entry.
    fn events_in(
        &self,
        txn: &ReadTransaction,
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
        let positions = self.positions(stream, from, to);
        if positions.is_empty() {
            return Ok(());
        }
        let key = stream.key();
        let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
        let (first, last) = (positions[0], positions[positions.len() - 1]);
        if last - first < 4 * positions.len() as u64 {
            // Dense (a run written in few groups, or a quiet database): one
            // descent and a sequential walk, skipping other streams' events.
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
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            for item in log
                .range(from.0..)
                .map_err(|e| from_redb(p, e))?
                .take(limit)
            {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let position = k.value();
                let env = decode_record(position, v.value()).ok_or_else(|| {
                    self.corrupt(format!("the record at position {position} is malformed"))
                })?;
                out.push(env);
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
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            // The snapshot first, then the index: the writer commits and
            // indexes a group under the index's write lock, so the index
            // holds at least every event of the snapshot. Appends wait
            // while the scan holds the read lock.
            let txn = self.read()?;
            let index = self.inner.index.read().expect("stream index lock");
            let log = txn.open_table(LOG).map_err(|e| from_redb(p, e))?;
            let mut n = 0u64;
            // The entry of the last stream seen: runs of one stream are common.
            let mut current: Option<(&str, &crate::index::Entry)> = None;
            for item in log.iter().map_err(|e| from_redb(p, e))? {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let position = k.value();
                let rec = view_record(position, v.value()).ok_or_else(|| {
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
            }
            Ok(n)
        })
    }

    /// `index[key]`.
    pub fn index_get(&self, index: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let t = txn.open_table(INDEX).map_err(|e| from_redb(p, e))?;
            Ok(t.get((index, key))
                .map_err(|e| from_redb(p, e))?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Every `(key, value)` of `index` whose key starts with `prefix`.
    pub fn index_scan(
        &self,
        index: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let t = txn.open_table(INDEX).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            for item in t.range((index, prefix)..).map_err(|e| from_redb(p, e))? {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let (i, key) = k.value();
                if i != index || !key.starts_with(prefix) {
                    break;
                }
                out.push((key.to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Store a snapshot of `stream` at `seq` (durably, through the writer).
    pub async fn put_snapshot(
        &self,
        stream: StreamId,
        seq: Seq,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let req = WriteRequest {
            snapshots: vec![(stream, seq, bytes)],
            ..Default::default()
        };
        self.write(req).await.map(|_| ())
    }

    /// The latest snapshot of `stream` with seq ≤ `at` (`None`: any).
    pub fn load_snapshot(
        &self,
        stream: &StreamId,
        at: Option<Seq>,
    ) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let txn = self.read()?;
            self.latest_snapshot(&txn, stream, at.map_or(u64::MAX, |s| s.0))
        })
    }

    /// The latest snapshot of `stream` with seq ≤ `to` inside `txn`.
    fn latest_snapshot(
        &self,
        txn: &ReadTransaction,
        stream: &StreamId,
        to: u64,
    ) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        let p = &self.inner.path;
        let key = stream.key();
        let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
        let mut r = t
            .range((key.as_str(), 0)..=(key.as_str(), to))
            .map_err(|e| from_redb(p, e))?;
        match r.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                Ok(Some((Seq(k.value().1), v.value().to_vec())))
            }
            None => Ok(None),
        }
    }

    /// In one read transaction: the latest snapshot of `stream` with seq
    /// ≤ `to` (if `use_snapshot`), then every envelope after it up to `to`
    /// (`None`: the head). What a fold needs, with one B-tree descent per
    /// table. Checks that seqs are contiguous.
    #[allow(clippy::type_complexity)]
    pub fn read_for_fold(
        &self,
        stream: &StreamId,
        to: Option<Seq>,
        use_snapshot: bool,
    ) -> Result<(Option<(Seq, Vec<u8>)>, Vec<RawEnvelope>), StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let txn = self.read()?;
            let to = to.map(|s| s.0).unwrap_or(u64::MAX);
            let snapshot = if use_snapshot {
                self.latest_snapshot(&txn, stream, to)?
            } else {
                None
            };
            let from = snapshot.as_ref().map(|(s, _)| s.0 + 1).unwrap_or(1);
            let mut out = Vec::new();
            self.events_in(&txn, stream, from, to, |env| {
                out.push(env);
                Ok(())
            })?;
            Ok((snapshot, out))
        })
    }

    /// Every snapshot seq stored for `stream`, ascending.
    pub fn snapshot_seqs(&self, stream: &StreamId) -> Result<Vec<Seq>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let key = stream.key();
            let txn = self.read()?;
            let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            for item in t
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .map_err(|e| from_redb(p, e))?
            {
                let (k, _) = item.map_err(|e| from_redb(p, e))?;
                out.push(Seq(k.value().1));
            }
            Ok(out)
        })
    }

    /// Recompute the hash chain of `stream` from `h_0` and compare with
    /// every stored hash and the stored head. Names the first bad seq.
    /// Storage errors (unreadable file) are returned as `Err`; a broken
    /// chain is an `Ok` report with `first_bad` set.
    pub fn verify_stream(&self, stream: &StreamId) -> Result<ChainReport, StoreError> {
        let mut check = ChainCheck::default();
        let scan = self.for_each_in_stream(stream, Seq(1), None, |env| {
            check.push(&env);
            Ok(())
        });
        if let Err(StoreError::Corruption { message, .. }) = &scan {
            let (n, _) = check.finish(None);
            return Ok(ChainReport {
                stream: stream.clone(),
                events: n,
                first_bad: Some((Seq(n + 1), message.clone())),
            });
        }
        scan?;
        let head = self.head(stream)?.map(|h| (h.last_seq, h.hash));
        let (events, first_bad) = check.finish(head);
        Ok(ChainReport {
            stream: stream.clone(),
            events,
            first_bad,
        })
    }
}
