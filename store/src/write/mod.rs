//! Committing a group (who commits when: [`crate::group_commit`]).
//!
//! Requests are validated one by one: a request that conflicts is refused
//! alone, the others commit.
//!
//! A store on a file makes a group durable through its [commit
//! journal](crate::journal): the group's writes go into the journal as one
//! frame (one durable write), then into the [memtable](crate::memtable)
//! with the stream index (visible to readers from that moment), and the
//! callers are acknowledged. Every
//! [`StoreOptions::memtable_bytes`](crate::StoreOptions) the memtable goes
//! to the flush thread, which commits it to redb with `Durability::None`
//! while the writer goes on; every
//! [`CHECKPOINT_BYTES`](crate::journal::CHECKPOINT_BYTES) of journal, and
//! when the store closes, a checkpoint flushes it with an `Immediate` redb
//! commit, which makes redb durable, and the journal starts again. A store
//! on another backend (in memory, fault injection) commits each group
//! `Immediate` instead, with no memtable.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase};
use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::envelope::{Hash, RawEnvelope, next_link};
use crate::error::{StoreError, from_redb};
use crate::flush::{BACKLOG, Flusher};
use crate::group_commit::Job;
use crate::ids::{Position, Seq, StreamId};
use crate::index::StreamIndex;
use crate::journal::{Journal, Op};
use crate::memtable::{Bytes, Memtable};
use crate::request::{Committed, IndexOp, WriteRequest};
use crate::tables::{INDEX, META, STREAM_INDEX, Tables, encode_record};

mod maintenance;

/// The writer's state: whoever holds [`Shared::state`] commits with it.
pub(crate) struct WriterState {
    pub db: Arc<Database>,
    pub path: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub tx_events: broadcast::Sender<Arc<[RawEnvelope]>>,
    /// The stream index shared with readers; updated after each commit.
    pub index: Arc<RwLock<StreamIndex>>,
    pub next_position: u64,
    pub max_group: usize,
    /// Largest encoded group ([`crate::StoreOptions::max_group_bytes`]).
    pub max_group_bytes: usize,
    pub quick_repair: bool,
    /// Journal bytes between checkpoints.
    pub checkpoint_bytes: u64,
    /// Memtable bytes that trigger a flush to redb.
    pub memtable_limit: usize,
    /// The flush thread (stores with a journal).
    pub flusher: Option<Flusher>,
    /// The commit journal (stores on a file); `None`: `Immediate` commits.
    pub journal: Option<Journal>,
    /// `meta.journal_open` is durably 1: frames may be written. Set by a
    /// checkpoint before the first frame of the store's life; a clean
    /// close sets it back to 0.
    pub journal_marked: bool,
    /// Set after a failure that leaves the journal, redb and the stream
    /// index possibly out of step: every later request fails with it.
    pub poisoned: Option<String>,
    /// The frame body being built for the current group.
    pub body: Vec<u8>,
}

/// What a group writes, gathered before it commits.
#[derive(Default)]
struct Pending {
    /// `(last seq, head hash)` of each stream appended to in this group.
    heads: HashMap<String, (u64, Hash)>,
    /// The streams appended to, in order.
    keys: Vec<String>,
    /// `(index into keys, seq, position, hash)` in commit order.
    events: Vec<(usize, u64, u64, Hash)>,
    /// The group's records, index writes and snapshots.
    writes: Memtable,
    /// A read transaction for index lookups, begun at the group's first.
    read: Option<redb::ReadTransaction>,
}

impl WriterState {
    /// Commit `group` (the writer thread) and answer each job: every job
    /// fails with the poison reason once the writer is poisoned; a storage
    /// failure of the group fails all its jobs (and, with a journal,
    /// poisons the writer); otherwise each job gets its own result.
    pub(crate) fn commit_group(&mut self, group: &mut Vec<Job>) {
        if let Some(why) = &self.poisoned {
            for job in group.drain(..) {
                let _ = job
                    .reply
                    .send((Err(StoreError::Storage(why.clone())), job.request));
            }
            return;
        }
        let start_position = self.next_position;
        let path = self.path.clone();
        let mut pending = Pending::default();
        let began = std::time::Instant::now();
        let outcome = crate::guard::guard(&path, || self.write_group(group, &mut pending));
        match outcome {
            Ok(results) => {
                if crate::metrics::enabled() {
                    crate::metrics::group_committed(
                        group.len(),
                        pending.events.len(),
                        began.elapsed(),
                    );
                }
                let mut all: Vec<RawEnvelope> = Vec::new();
                for (job, result) in group.drain(..).zip(results) {
                    if let Ok(envs) = &result
                        && self.tx_events.receiver_count() > 0
                    {
                        all.extend(envs.iter().cloned());
                    }
                    let _ = job.reply.send((result, job.request));
                }
                if !all.is_empty() {
                    let _ = self.tx_events.send(all.into());
                }
            }
            Err(e) => {
                self.next_position = start_position;
                tracing::error!(error = %e, "group commit failed");
                // An invalid group is refused before anything is written;
                // any other failure may have left a frame on disk.
                if self.journal.is_some() && !matches!(e, StoreError::InvalidRequest(_)) {
                    // The frame may be on disk while redb lacks it: a later
                    // group would contradict it. Only a reopen can tell.
                    self.poisoned = Some(format!(
                        "a commit to {} failed earlier ({e}); reopen the database (its journal decides what committed)",
                        path.display()
                    ));
                }
                let msg = e.to_string();
                for job in group.drain(..) {
                    let _ = job.reply.send((Err(clone_fatal(&e, &msg)), job.request));
                }
            }
        }
    }

    /// Validate and encode every job of the group, then commit them
    /// together: one journal frame (stores on a file; the writes then go
    /// into the memtable) or one `Immediate` redb transaction (other
    /// backends). The outer error is fatal to the whole group (storage);
    /// the inner results are per job.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &mut [Job],
        pending: &mut Pending,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let p = self.path.clone();
        let re = |e: redb::Error| from_redb(&p, e);
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        let journaling = self.journal.is_some();
        let mut results = Vec::with_capacity(group.len());
        for job in group.iter_mut() {
            results.push(self.write_one(
                &mut job.request,
                pending,
                journaling.then_some(&mut body),
            )?);
        }
        pending.read = None;
        if body.len() > self.max_group_bytes {
            // Refused before anything is written: the store goes on.
            return Err(StoreError::InvalidRequest(format!(
                "this group of writes encodes to {} bytes, over the limit of {} bytes; write fewer or smaller events per request",
                body.len(),
                self.max_group_bytes
            )));
        }
        if self.journal.is_some() && !body.is_empty() && !self.journal_marked {
            // The first frame of this store's life: record durably that
            // the journal may hold frames redb lacks.
            self.checkpoint(true)?;
        }
        match self.journal.as_mut() {
            Some(journal) => {
                // Write-ahead: the frame is durable before any reader can
                // see the group.
                if !body.is_empty() {
                    journal.append(&body)?;
                }
                self.body = body;
                // Into the memtable and the index together: a reader
                // holding the read lock sees a group in both or in neither.
                let index = self.index.clone();
                let mut index = index.write().expect("stream index lock");
                index
                    .memtable
                    .active
                    .absorb(std::mem::take(&mut pending.writes));
                self.push_index(&mut index, pending);
            }
            None => {
                let mut txn = self.db.begin_write().map_err(|e| re(e.into()))?;
                txn.set_durability(redb::Durability::Immediate)
                    .map_err(|e| StoreError::Storage(e.to_string()))?;
                txn.set_quick_repair(self.quick_repair);
                Tables::open(&txn, &p)?.apply_memtable(&p, &pending.writes)?;
                // Commit and index under the index's write lock, for the
                // same reason.
                let index = self.index.clone();
                let mut index = index.write().expect("stream index lock");
                txn.commit().map_err(|e| re(e.into()))?;
                self.push_index(&mut index, pending);
            }
        }
        Ok(results)
    }

    /// Add a committed group's events to the stream index.
    fn push_index(&mut self, index: &mut StreamIndex, pending: &Pending) {
        for &(k, seq, position, hash) in &pending.events {
            if let Err(m) = index.push(&pending.keys[k], seq, position, hash) {
                self.poisoned = Some(format!("stream index out of step: {m}"));
            }
        }
    }

    /// The current value of `index[key]` as this group sees it: the
    /// group's own earlier writes, then the memtable, then redb.
    fn index_value(
        &self,
        pending: &mut Pending,
        index: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = pending.writes.index_get(index, key) {
            return Ok(v.map(|b| b.to_vec()));
        }
        if let Some(v) = self
            .index
            .read()
            .expect("stream index lock")
            .memtable
            .index_get(index, key)
        {
            return Ok(v.map(|b| b.to_vec()));
        }
        let p = &self.path;
        if pending.read.is_none() {
            pending.read = Some(self.db.begin_read().map_err(|e| from_redb(p, e))?);
        }
        let txn = pending.read.as_ref().expect("just begun");
        let t = match txn.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(from_redb(p, e)),
        };
        Ok(t.get((index, key))
            .map_err(|e| from_redb(p, e))?
            .map(|v| v.value().to_vec()))
    }

    fn write_one(
        &mut self,
        req: &mut WriteRequest,
        pending: &mut Pending,
        mut body: Option<&mut Vec<u8>>,
    ) -> Result<Result<Committed, StoreError>, StoreError> {
        // Validate first: nothing is written unless the whole request holds.
        let mut seen = HashSet::new();
        let mut heads = Vec::with_capacity(req.appends.len());
        {
            let index = self.index.read().expect("stream index lock");
            for a in &req.appends {
                let key = a.stream.key();
                if !seen.insert(key.clone()) {
                    return Ok(Err(StoreError::InvalidRequest(format!(
                        "stream {key} appears twice in one request"
                    ))));
                }
                let (last, hash) = match pending.heads.get(&key) {
                    Some(h) => *h,
                    None => index.head(&key),
                };
                if last != a.expected.0 {
                    return Ok(Err(StoreError::Conflict {
                        stream: key,
                        expected: a.expected.0,
                        actual: last,
                    }));
                }
                heads.push((key, last, hash));
            }
        }
        for op in &req.index {
            if let IndexOp::Insert { index, key, .. } = op
                && let Some(existing) = self.index_value(pending, index, key)?
            {
                return Ok(Err(StoreError::IndexConflict {
                    index: index.clone(),
                    key: key.clone(),
                    existing,
                }));
            }
        }
        // Write.
        let mut committed = Vec::with_capacity(req.appends.iter().map(|a| a.events.len()).sum());
        for (a, (key, last, mut hash)) in req.appends.iter_mut().zip(heads) {
            let mut seq = last;
            let k = pending.keys.len();
            let n = a.events.len();
            for (i, ev) in a.events.iter_mut().enumerate() {
                let recorded_at;
                (Seq(seq), recorded_at, hash) =
                    next_link(&key, (seq, hash), ev, self.clock.as_ref());
                let position = self.next_position;
                self.next_position += 1;
                // The last envelope takes the request's stream id (the
                // caller's allocation, freed on the caller's thread).
                let stream = if i + 1 == n {
                    std::mem::replace(&mut a.stream, StreamId::Run(uuid::Uuid::nil()))
                } else {
                    a.stream.clone()
                };
                let env = RawEnvelope {
                    stream,
                    seq: Seq(seq),
                    position: Position(position),
                    recorded_at,
                    schema_version: ev.schema_version,
                    // Moved, not copied: the caller gets its own allocation
                    // back in the envelope (and frees it on its thread).
                    payload: std::mem::take(&mut ev.payload),
                    hash,
                };
                let record: Bytes = encode_record(&env, &key).into();
                if let Some(body) = body.as_deref_mut() {
                    Op::Event {
                        position,
                        record: &record,
                    }
                    .encode(body);
                }
                pending.writes.push_record(position, record);
                pending.events.push((k, seq, position, hash));
                committed.push(env);
            }
            pending.heads.insert(key.clone(), (seq, hash));
            pending.keys.push(key);
        }
        for op in &req.index {
            let (index, key, value) = match op {
                IndexOp::Put { index, key, value } | IndexOp::Insert { index, key, value } => {
                    (index, key, Some(value.as_slice()))
                }
                IndexOp::Delete { index, key } => (index, key, None),
            };
            if let Some(body) = body.as_deref_mut() {
                match value {
                    Some(value) => Op::IndexPut {
                        name: index,
                        key,
                        value,
                    },
                    None => Op::IndexDelete { name: index, key },
                }
                .encode(body);
            }
            pending
                .writes
                .put_index(index.clone(), key.clone(), value.map(Bytes::from));
        }
        for (stream, seq, bytes) in &req.snapshots {
            let key = stream.key();
            if let Some(body) = body.as_deref_mut() {
                Op::Snapshot {
                    stream: &key,
                    seq: seq.0,
                    bytes,
                }
                .encode(body);
            }
            pending
                .writes
                .put_snapshot(key, seq.0, Bytes::from(bytes.as_slice()));
        }
        Ok(Ok(committed))
    }
}

/// Every caller of a failed group gets an error; I/O errors cannot be
/// cloned, so they are carried by message.
fn clone_fatal(e: &StoreError, msg: &str) -> StoreError {
    match e {
        StoreError::Corruption { path, message } => StoreError::Corruption {
            path: path.clone(),
            message: message.clone(),
        },
        StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
        // The source's own text: the variant's message adds the path and
        // advice again when displayed.
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        StoreError::InvalidRequest(m) => StoreError::InvalidRequest(m.clone()),
        _ => StoreError::Storage(msg.to_string()),
    }
}
