//! Reads of the log: streams, heads, global order, scans, indexes,
//! snapshots, chain verification. Every redb call runs inside `guard`, and
//! every read checks that seqs are contiguous.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLockReadGuard;

use redb::{ReadTransaction, ReadableTable};

use super::{ChainReport, Store, StreamHead};
use crate::envelope::{ChainCheck, RawEnvelope};
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::index::StreamIndex;
use crate::memtable::Bytes;
use crate::request::WriteRequest;
use crate::tables::{INDEX, LOG, RecordView, SNAPSHOTS, decode_record, view_record};

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
    fn view(&self) -> Result<(RwLockReadGuard<'_, StreamIndex>, ReadTransaction), StoreError> {
        let index = self.inner.index.read().expect("stream index lock");
        let txn = self.read()?;
        Ok((index, txn))
    }

    /// A view for reading `stream`'s seqs `from..=to` (clipped to its
    /// head): the transaction, the positions of the seqs found in redb
    /// (first seq `from`), and the records of the following seqs that are
    /// still in the memtable.
    #[allow(clippy::type_complexity)]
    fn stream_view(
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

    /// Envelopes of `stream` with seq in `from..=to`, checking each
    /// against its index entry.
    fn events_in(
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

    /// `index[key]`.
    pub fn index_get(&self, index: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.index_get(index, key);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = {
                let (guard, txn) = self.view()?;
                if let Some(v) = guard.memtable.index_get(index, key) {
                    return Ok(v.map(|b| b.to_vec()));
                }
                txn
            };
            let t = txn.open_table(INDEX).map_err(|e| from_redb(p, e))?;
            Ok(t.get((index, key))
                .map_err(|e| from_redb(p, e))?
                .map(|v| v.value().to_vec()))
        })
    }

    /// Every `(key, value)` of `index` whose key starts with `prefix`, in
    /// key order.
    pub fn index_scan(
        &self,
        index: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.index_scan(index, prefix);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let (txn, mem) = {
                let (guard, txn) = self.view()?;
                (txn, guard.memtable.index_range(index, prefix))
            };
            let t = txn.open_table(INDEX).map_err(|e| from_redb(p, e))?;
            let mut out = BTreeMap::new();
            for item in t.range((index, prefix)..).map_err(|e| from_redb(p, e))? {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let (i, key) = k.value();
                if i != index || !key.starts_with(prefix) {
                    break;
                }
                out.insert(key.to_string(), v.value().to_vec());
            }
            for (key, value) in mem {
                match value {
                    Some(v) => out.insert(key, v.to_vec()),
                    None => out.remove(&key),
                };
            }
            Ok(out.into_iter().collect())
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
        if let Some(pg) = self.pg() {
            return pg.load_snapshot(stream, at);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            self.latest_snapshot(stream, at.map_or(u64::MAX, |s| s.0))
        })
    }

    /// The latest snapshot of `stream` with seq ≤ `to`, from the memtable
    /// or redb.
    fn latest_snapshot(
        &self,
        stream: &StreamId,
        to: u64,
    ) -> Result<Option<(Seq, Vec<u8>)>, StoreError> {
        let p = &self.inner.path;
        let key = stream.key();
        let (txn, mem) = {
            let (guard, txn) = self.view()?;
            (txn, guard.memtable.snapshots_of(&key, to).pop())
        };
        let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
        let mut r = t
            .range((key.as_str(), 0)..=(key.as_str(), to))
            .map_err(|e| from_redb(p, e))?;
        let stored = match r.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                Some((k.value().1, v))
            }
            None => None,
        };
        // The memtable's write of a seq is the later one.
        Ok(match (mem, stored) {
            (Some((m, bytes)), Some((s, _))) if m >= s => Some((Seq(m), bytes.to_vec())),
            (Some((m, bytes)), None) => Some((Seq(m), bytes.to_vec())),
            (_, Some((s, v))) => Some((Seq(s), v.value().to_vec())),
            (None, None) => None,
        })
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
        if let Some(pg) = self.pg() {
            let snapshot = match use_snapshot {
                true => pg.load_snapshot(stream, to)?,
                false => None,
            };
            let from = snapshot.as_ref().map_or(Seq(1), |(s, _)| s.next());
            let mut out = Vec::new();
            pg.for_each_in_stream(stream, from, to, |env| {
                out.push(env);
                Ok(())
            })?;
            return Ok((snapshot, out));
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let to = to.map(|s| s.0).unwrap_or(u64::MAX);
            let snapshot = if use_snapshot {
                self.latest_snapshot(stream, to)?
            } else {
                None
            };
            // A later view than the snapshot's: the log only grows, so it
            // holds every event after the snapshot.
            let from = snapshot.as_ref().map(|(s, _)| s.0 + 1).unwrap_or(1);
            let mut out = Vec::new();
            self.events_in(stream, from, to, |env| {
                out.push(env);
                Ok(())
            })?;
            Ok((snapshot, out))
        })
    }

    /// Every snapshot seq stored for `stream`, ascending.
    pub fn snapshot_seqs(&self, stream: &StreamId) -> Result<Vec<Seq>, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.snapshot_seqs(stream);
        }
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let key = stream.key();
            let (txn, mem) = {
                let (guard, txn) = self.view()?;
                (txn, guard.memtable.snapshots_of(&key, u64::MAX))
            };
            let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
            let mut out: BTreeSet<u64> = mem.into_iter().map(|(seq, _)| seq).collect();
            for item in t
                .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
                .map_err(|e| from_redb(p, e))?
            {
                let (k, _) = item.map_err(|e| from_redb(p, e))?;
                out.insert(k.value().1);
            }
            Ok(out.into_iter().map(Seq).collect())
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

/// The commit journal as the database records it (`chronicle verify`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct JournalStatus {
    /// The store was not closed cleanly since its journal's first frame
    /// (a store open now, or a crash): the journal may hold frames redb
    /// lacks, and an open reads them.
    pub open: bool,
    /// The last frame a checkpoint made durable in redb.
    pub checkpointed_through: u64,
    /// Whole frames of the current cycle past that checkpoint, read from
    /// the journal file now (0 for a store closed cleanly).
    pub frames_past_checkpoint: usize,
    /// What is wrong with the journal, if anything (a missing, truncated or
    /// damaged file of an open journal).
    pub problem: Option<String>,
}

impl Store {
    /// The journal's state: what `meta` says and, for a journal that may
    /// hold frames, what the file holds now. A store not on a file reports
    /// a closed journal.
    ///
    /// Errors: storage errors reading `meta` or the journal file.
    pub fn journal_status(&self) -> Result<JournalStatus, StoreError> {
        if self.pg().is_some() {
            return Ok(JournalStatus {
                open: false,
                checkpointed_through: 0,
                frames_past_checkpoint: 0,
                problem: None,
            });
        }
        let path = &self.inner.path;
        let txn = self.read()?;
        let meta = txn
            .open_table(crate::tables::META)
            .map_err(|e| from_redb(path, e))?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| from_redb(path, e))?
                .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
                .unwrap_or(0))
        };
        let open = get("journal_open")? != 0;
        let lsn = get("journal_lsn")?;
        let salt = get("journal_salt")?;
        let (frames, problem) = if open && path.file_name().is_some() && path.exists() {
            let scan = crate::journal::scan(&crate::paths::journal_path(path), salt, lsn)?;
            (scan.frames.len(), scan.problem.map(|p| p.to_string()))
        } else {
            (0, None)
        };
        Ok(JournalStatus {
            open,
            checkpointed_through: lsn,
            frames_past_checkpoint: frames,
            problem,
        })
    }
}
