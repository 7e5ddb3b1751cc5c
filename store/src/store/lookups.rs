//! Reads beside the log itself: index rows, snapshots (and the read a
//! fold starts from), a stream's chain verification, and the commit
//! journal's state. Every redb call runs inside `guard`, as in
//! [`super::read`].

use std::collections::{BTreeMap, BTreeSet};

use super::{ChainReport, Store};
use crate::envelope::{ChainCheck, RawEnvelope};
use crate::error::{StoreError, from_redb};
use crate::ids::{Seq, StreamId};
use crate::request::WriteRequest;
use crate::tables::{INDEX, SNAPSHOTS};

impl Store {
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
