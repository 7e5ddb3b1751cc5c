//! Reads of the log: streams, heads, global order, scans, indexes,
//! snapshots, chain verification. Every redb call runs inside `guard`, and
//! every read checks that seqs are contiguous.

use redb::ReadTransaction;

use super::{ChainReport, Store, StreamHead};
use crate::envelope::{ChainCheck, RawEnvelope};
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::tables::{EVENTS, HEADS, INDEX, POSITIONS, SNAPSHOTS, decode_head, decode_record};
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

    /// Envelopes of `stream` with seq in `from..=to` inside `txn`, checking
    /// that seqs are contiguous from `from` (the read side of the invariant).
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
        let key = stream.key();
        let t = txn.open_table(EVENTS).map_err(|e| from_redb(p, e))?;
        let range = t
            .range((key.as_str(), from)..=(key.as_str(), to))
            .map_err(|e| from_redb(p, e))?;
        for (expect, item) in (from..).zip(range) {
            let (k, v) = item.map_err(|e| from_redb(p, e))?;
            let seq = k.value().1;
            if seq != expect {
                return Err(self.corrupt(format!(
                    "stream {key}: expected seq {expect}, found {seq}: the log has a gap from seq {expect}"
                )));
            }
            let env = decode_record(stream, seq, v.value())
                .ok_or_else(|| self.corrupt(format!("stream {key} seq {seq}: record too short")))?;
            f(env)?;
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

    /// The last envelope of `stream`, if any (one B-tree seek).
    pub fn last_event(&self, stream: &StreamId) -> Result<Option<RawEnvelope>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let key = stream.key();
            let txn = self.read()?;
            let t = txn.open_table(EVENTS).map_err(|e| from_redb(p, e))?;
            let mut range = t
                .range((key.as_str(), 1)..=(key.as_str(), u64::MAX))
                .map_err(|e| from_redb(p, e))?;
            match range.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(|e| from_redb(p, e))?;
                    let seq = k.value().1;
                    decode_record(stream, seq, v.value())
                        .map(Some)
                        .ok_or_else(|| {
                            self.corrupt(format!("stream {key} seq {seq}: record too short"))
                        })
                }
                None => Ok(None),
            }
        })
    }

    /// The head of `stream` (`None` if it has no events).
    pub fn head(&self, stream: &StreamId) -> Result<Option<StreamHead>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let t = txn.open_table(HEADS).map_err(|e| from_redb(p, e))?;
            let key = stream.key();
            match t.get(key.as_str()).map_err(|e| from_redb(p, e))? {
                Some(v) => {
                    let (seq, hash) = decode_head(v.value()).ok_or_else(|| {
                        self.corrupt(format!("head of stream {key} is malformed"))
                    })?;
                    Ok(Some(StreamHead {
                        stream: stream.clone(),
                        last_seq: Seq(seq),
                        hash,
                    }))
                }
                None => Ok(None),
            }
        })
    }

    /// Every stream with its head, ordered by stream id.
    pub fn streams(&self) -> Result<Vec<StreamHead>, StoreError> {
        self.streams_with_prefix("")
    }

    /// The streams whose id starts with `prefix` (e.g. `agent:`), with
    /// their heads, ordered by stream id.
    pub fn streams_with_prefix(&self, prefix: &str) -> Result<Vec<StreamHead>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let t = txn.open_table(HEADS).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            for item in t.range(prefix..).map_err(|e| from_redb(p, e))? {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let key = k.value();
                if !key.starts_with(prefix) {
                    break;
                }
                let stream: StreamId = key
                    .parse()
                    .map_err(|_| self.corrupt(format!("bad stream key {key:?}")))?;
                let (seq, hash) = decode_head(v.value())
                    .ok_or_else(|| self.corrupt(format!("head of stream {key} is malformed")))?;
                out.push(StreamHead {
                    stream,
                    last_seq: Seq(seq),
                    hash,
                });
            }
            Ok(out)
        })
    }

    /// Up to `limit` envelopes of the whole database from global position
    /// `from`, ascending (for tails and projections).
    pub fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RawEnvelope>, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let txn = self.read()?;
            let pos_t = txn.open_table(POSITIONS).map_err(|e| from_redb(p, e))?;
            let ev_t = txn.open_table(EVENTS).map_err(|e| from_redb(p, e))?;
            let mut out = Vec::new();
            for item in pos_t
                .range(from.0..)
                .map_err(|e| from_redb(p, e))?
                .take(limit)
            {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let position = k.value();
                let (key, seq) = v.value();
                let stream: StreamId = key
                    .parse()
                    .map_err(|_| self.corrupt(format!("bad stream key {key:?}")))?;
                let rec = ev_t
                    .get((key, seq))
                    .map_err(|e| from_redb(p, e))?
                    .ok_or_else(|| {
                        self.corrupt(format!(
                            "position {position} names {key}#{seq}, which is missing"
                        ))
                    })?;
                let env = decode_record(&stream, seq, rec.value()).ok_or_else(|| {
                    self.corrupt(format!("stream {key} seq {seq}: record too short"))
                })?;
                if env.position.0 != position {
                    return Err(self.corrupt(format!(
                        "{key}#{seq} says position {}, the position index says {position}",
                        env.position
                    )));
                }
                out.push(env);
            }
            Ok(out)
        })
    }

    /// Call `f` on every envelope of the database in (stream, seq) order —
    /// the fastest full scan.
    pub fn scan_all(
        &self,
        f: impl FnMut(&StreamId, u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        self.scan_streams(None, None, f)
    }

    /// Call `f` on every envelope of the streams with keys in
    /// `from..to` (`None`: unbounded), in (stream, seq) order, in one read
    /// transaction. Threads scanning disjoint key ranges share the work of
    /// a full scan. Checks that each stream's seqs run 1, 2, 3…
    pub fn scan_streams(
        &self,
        from: Option<&StreamId>,
        to: Option<&StreamId>,
        mut f: impl FnMut(&StreamId, u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            use std::ops::Bound;
            let p = &self.inner.path;
            let txn = self.read()?;
            let t = txn.open_table(EVENTS).map_err(|e| from_redb(p, e))?;
            let from_key = from.map(StreamId::key);
            let to_key = to.map(StreamId::key);
            let lo = match &from_key {
                Some(k) => Bound::Included((k.as_str(), 0u64)),
                None => Bound::Unbounded,
            };
            let hi = match &to_key {
                Some(k) => Bound::Excluded((k.as_str(), 0u64)),
                None => Bound::Unbounded,
            };
            let mut n = 0u64;
            let mut current: Option<(String, StreamId)> = None;
            let mut expect = 1u64;
            for item in t
                .range::<(&str, u64)>((lo, hi))
                .map_err(|e| from_redb(p, e))?
            {
                let (k, v) = item.map_err(|e| from_redb(p, e))?;
                let (key, seq) = k.value();
                if current.as_ref().map(|(c, _)| c.as_str()) != Some(key) {
                    let s: StreamId = key
                        .parse()
                        .map_err(|_| self.corrupt(format!("bad stream key {key:?}")))?;
                    current = Some((key.to_string(), s));
                    expect = 1;
                }
                if seq != expect {
                    return Err(self.corrupt(format!(
                    "stream {key}: expected seq {expect}, found {seq}: the log has a gap from seq {expect}"
                )));
                }
                expect += 1;
                let stream = &current.as_ref().expect("set just above").1;
                f(stream, seq, v.value())?;
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
            let p = &self.inner.path;
            let key = stream.key();
            let txn = self.read()?;
            let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
            let to = at.map(|s| s.0).unwrap_or(u64::MAX);
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
        let path = self.inner.path.clone();
        crate::guard::guard(&path, move || {
            let p = &self.inner.path;
            let key = stream.key();
            let txn = self.read()?;
            let to = to.map(|s| s.0).unwrap_or(u64::MAX);
            let snapshot = if use_snapshot {
                let t = txn.open_table(SNAPSHOTS).map_err(|e| from_redb(p, e))?;
                let mut r = t
                    .range((key.as_str(), 0)..=(key.as_str(), to))
                    .map_err(|e| from_redb(p, e))?;
                match r.next_back() {
                    Some(item) => {
                        let (k, v) = item.map_err(|e| from_redb(p, e))?;
                        Some((Seq(k.value().1), v.value().to_vec()))
                    }
                    None => None,
                }
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
