//! Group commit: the writer (requests: [`crate::request`]).
//!
//! Groups commit one at a time, under the writer's lock
//! ([`Shared::state`]). A caller that finds the writer idle and nothing
//! queued commits its request itself, on its own thread, as a group of
//! one: one durable write and no hand-off between threads (two thread
//! wake-ups, ~20 µs of a ~110 µs append here — the leader-commits scheme of
//! RocksDB's write groups and PostgreSQL's WAL writers). A caller that
//! finds the writer busy queues its request for the writer thread, which
//! blocks for the first queued request, drains whatever else is queued (up
//! to `max_group`) and commits all of it as one group with one durable
//! write before it acknowledges each caller. Requests are validated one by
//! one: a request that conflicts is refused alone, the others commit.
//! Checkpoints and flush hand-offs run on the writer thread only (a caller
//! that commits inline and finds one due sends it [`Msg::Maintain`]); the
//! flush thread also opens redb write transactions, but only to copy
//! groups already committed in the journal.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use redb::{Database, ReadableDatabase};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::envelope::{Hash, RawEnvelope, chain_hash_of};
use crate::error::{StoreError, from_redb};
use crate::flush::{BACKLOG, Flusher};
use crate::ids::{Position, Seq, StreamId};
use crate::index::StreamIndex;
use crate::journal::{Journal, Op};
use crate::memtable::{Bytes, Memtable};
use crate::request::{Committed, IndexOp, WriteRequest};
use crate::tables::{INDEX, META, STREAM_INDEX, Tables, encode_record};

/// How long the writer polls for the next job before parking, µs.
const SPIN_MICROS: u64 = 50;

/// What the writer sends back for a job.
pub(crate) type Reply = (Result<Committed, StoreError>, WriteRequest);

pub(crate) struct Job {
    pub request: WriteRequest,
    /// The outcome, and the request handed back so that the caller's
    /// thread frees it: freeing on the writer thread memory that other
    /// threads allocated contends on the allocator's lock (glibc: ~20 % of
    /// the writer's time with 1,024 appenders, measured with `perf`).
    pub reply: oneshot::Sender<Reply>,
}

/// A message to the writer thread.
pub(crate) enum Msg {
    /// Commit this request (in the next group).
    Job(Job),
    /// A caller that committed inline found a checkpoint or a flush due.
    Maintain,
}

/// What the callers and the writer thread share.
pub(crate) struct Shared {
    /// [`StoreOptions::caller_commits`](crate::StoreOptions).
    pub caller_commits: bool,
    /// The writer's state; whoever holds it commits the next group.
    pub state: Mutex<WriterState>,
    /// Jobs sent to the writer thread and not yet committed, plus one
    /// while the writer thread waits for the lock. A caller commits inline
    /// only while this is 0, so queued jobs are not overtaken and the
    /// writer thread is not starved of the lock (its checkpoints and
    /// flushes would wait behind a busy appender for ever).
    pub queued: AtomicUsize,
    /// A [`Msg::Maintain`] is on its way.
    pub maintain_sent: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, WriterState> {
        // Commits run inside `guard` (panics become errors), so a poisoned
        // lock means a panic outside them; the state is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commit `request` on the calling thread if callers may commit, the
    /// writer is idle and nothing is queued; otherwise hand the request
    /// back (queue it).
    /// Blocks for one durable write (~0.1 ms here), never for the lock.
    pub fn try_inline(
        &self,
        tx: &mpsc::Sender<Msg>,
        request: WriteRequest,
    ) -> Result<Result<Committed, StoreError>, WriteRequest> {
        if !self.caller_commits || self.queued.load(Ordering::Acquire) != 0 {
            return Err(request);
        }
        let mut state = match self.state.try_lock() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(request),
        };
        let (reply, mut rx) = oneshot::channel();
        let mut group = vec![Job { request, reply }];
        state.commit_group(&mut group);
        let due = state.maintenance_due();
        drop(state);
        if due
            && !self.maintain_sent.swap(true, Ordering::AcqRel)
            && tx.try_send(Msg::Maintain).is_err()
        {
            // A full queue: the writer thread maintains after those jobs.
            self.maintain_sent.store(false, Ordering::Release);
        }
        Ok(match rx.try_recv() {
            Ok((result, _request)) => result,
            Err(_) => Err(StoreError::Closed),
        })
    }
}

/// Counts a job in [`Shared::queued`] until the writer thread has it; a
/// caller that gives up before sending (its future dropped, the writer
/// gone) takes it off again.
pub(crate) struct QueuedJob<'a>(&'a AtomicUsize);

impl<'a> QueuedJob<'a> {
    pub fn new(queued: &'a AtomicUsize) -> Self {
        queued.fetch_add(1, Ordering::AcqRel);
        Self(queued)
    }
    /// The job was sent: the writer thread takes it off after its commit.
    pub fn sent(self) {
        std::mem::forget(self);
    }
}

impl Drop for QueuedJob<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The writer thread: commits queued jobs in groups, and runs checkpoints
/// and flush hand-offs.
pub(crate) struct Writer {
    pub rx: mpsc::Receiver<Msg>,
    pub shared: Arc<Shared>,
}

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
    pub quick_repair: bool,
    /// Journal bytes between checkpoints.
    pub checkpoint_bytes: u64,
    /// Memtable bytes that trigger a flush to redb.
    pub memtable_limit: usize,
    /// The flush thread (stores with a journal).
    pub flusher: Option<Flusher>,
    /// The commit journal (stores on a file); `None`: `Immediate` commits.
    pub journal: Option<Journal>,
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

impl Writer {
    /// The writer loop; returns when every sender is dropped.
    pub fn run(mut self) {
        let max_group = self.shared.lock().max_group;
        let mut group: Vec<Job> = Vec::with_capacity(max_group);
        while let Some(first) = self.next_msg() {
            let mut maintain = false;
            match first {
                Msg::Job(job) => group.push(job),
                Msg::Maintain => maintain = true,
            }
            while group.len() < max_group {
                match self.rx.try_recv() {
                    Ok(Msg::Job(job)) => group.push(job),
                    Ok(Msg::Maintain) => maintain = true,
                    Err(_) => break,
                }
            }
            if maintain {
                self.shared.maintain_sent.store(false, Ordering::Release);
            }
            self.shared.queued.fetch_add(1, Ordering::AcqRel);
            let mut state = self.shared.lock();
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            let n = group.len();
            if n > 0 {
                state.commit_group(&mut group);
                self.shared.queued.fetch_sub(n, Ordering::AcqRel);
            }
            state.maintain();
        }
        self.shared.lock().close();
    }

    /// The next message: poll briefly before parking, because the next
    /// append of a busy appender usually arrives within microseconds of
    /// its acknowledgement, and waking a parked thread costs more than
    /// that.
    fn next_msg(&mut self) -> Option<Msg> {
        let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(SPIN_MICROS);
        loop {
            match self.rx.try_recv() {
                Ok(msg) => return Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if std::time::Instant::now() >= spin_until {
                        return self.rx.blocking_recv();
                    }
                    std::thread::yield_now();
                }
            }
        }
    }
}

impl WriterState {
    /// Start the flush thread (stores with a journal).
    pub fn start_flusher(&mut self) {
        if self.journal.is_some() {
            match Flusher::start(self.db.clone(), self.path.clone(), self.index.clone()) {
                Ok(f) => self.flusher = Some(f),
                Err(e) => {
                    self.poisoned = Some(format!("cannot start the flush thread: {e}"));
                }
            }
        }
    }

    /// A checkpoint or a flush hand-off is due.
    fn maintenance_due(&self) -> bool {
        if self.poisoned.is_some() {
            return false;
        }
        self.journal
            .as_ref()
            .is_some_and(|j| j.written() >= self.checkpoint_bytes)
            || (self.flusher.is_some() && self.memtable_bytes() >= self.memtable_limit)
    }

    /// After a group (writer thread): a checkpoint when the journal is
    /// due one, else hand a full memtable to the flush thread.
    fn maintain(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        let due = self
            .journal
            .as_ref()
            .is_some_and(|j| j.written() >= self.checkpoint_bytes);
        if due {
            self.checkpoint_or_poison();
        } else if self.flusher.is_some() && self.memtable_bytes() >= self.memtable_limit {
            self.start_flush();
        }
    }

    /// Closing: make redb durable and save the stream index, so the next
    /// open needs neither the journal nor a scan of the log.
    fn close(&mut self) {
        if self.poisoned.is_none()
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "checkpoint at close failed; the next open recovers from the journal and the log");
        }
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
    }

    fn memtable_bytes(&self) -> usize {
        self.index
            .read()
            .expect("stream index lock")
            .memtable
            .active
            .bytes
    }

    fn poison_flush(&mut self, e: &str) {
        // The groups are durable in the journal and readable from the
        // memtable; redb lacks them. Stop writing; the next open applies
        // the journal.
        tracing::error!(error = %e, "memtable flush failed");
        self.poisoned = Some(format!(
            "a flush of the memtable to {} failed earlier ({e}); reopen the database",
            self.path.display()
        ));
    }

    /// Hand the active memtable to the flush thread, unless it is still
    /// flushing the one before: then keep filling this one, and wait only
    /// once it holds [`BACKLOG`] times the limit (backpressure).
    fn start_flush(&mut self) {
        let bytes = self.memtable_bytes();
        if bytes == 0 {
            return;
        }
        let over = bytes >= BACKLOG * self.memtable_limit.max(1);
        let Some(f) = self.flusher.as_mut() else {
            return;
        };
        let previous = if f.busy {
            f.finished(over)
        } else {
            Some(Ok(()))
        };
        match previous {
            // Still flushing the one before: keep filling this one.
            None => return,
            Some(Err(e)) => return self.poison_flush(&e),
            Some(Ok(())) => {}
        }
        let frozen = {
            let mut index = self.index.write().expect("stream index lock");
            let m = &mut index.memtable;
            let frozen = Arc::new(std::mem::take(&mut m.active));
            m.frozen = Some(frozen.clone());
            frozen
        };
        if !self.flusher.as_mut().is_some_and(|f| f.send(frozen)) {
            // The frozen memtable stays readable; the journal has it all.
            self.poison_flush("the flush thread stopped");
        }
    }

    /// Wait for the flush thread's current flush, if any.
    fn wait_flush(&mut self) -> Result<(), StoreError> {
        let Some(f) = self.flusher.as_mut() else {
            return Ok(());
        };
        if !f.busy {
            return Ok(());
        }
        match f.finished(true) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(e)) => {
                self.poison_flush(&e);
                Err(StoreError::Storage(e))
            }
        }
    }

    fn checkpoint_or_poison(&mut self) {
        if let Err(e) = self.checkpoint() {
            // The groups are durable in the journal; redb is not. Stop
            // writing and let the next open apply the journal.
            tracing::error!(error = %e, "checkpoint failed");
            self.poisoned = Some(format!(
                "a checkpoint of {} failed earlier ({e}); reopen the database",
                self.path.display()
            ));
        }
    }

    /// A checkpoint: once the flush thread is idle, one `Immediate` redb
    /// commit with the active memtable — which makes every earlier
    /// non-durable commit durable too — the stream index segments of what
    /// changed, and the last journal frame and log position it covers;
    /// then the memtable is emptied (readers see every write throughout:
    /// redb holds them first) and the journal starts again at offset 0.
    ///
    /// Errors: storage errors (the memtable keeps its writes; the caller
    /// poisons the writer, and the next open applies the journal).
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.wait_flush()?;
        let lsn = self.journal.as_ref().map(Journal::last_lsn);
        let p = self.path.clone();
        let db = self.db.clone();
        let quick_repair = self.quick_repair;
        let index = self.index.clone();
        crate::guard::guard(&p.clone(), move || {
            let re = |e: redb::Error| from_redb(&p, e);
            let mut txn = db.begin_write().map_err(|e| re(e.into()))?;
            txn.set_durability(redb::Durability::Immediate)
                .map_err(|e| StoreError::Storage(e.to_string()))?;
            txn.set_quick_repair(quick_repair);
            {
                // Only this thread changes the memtable (and no flush runs):
                // a read lock is enough to copy it into the transaction.
                let index = index.read().expect("stream index lock");
                let mut t = Tables::open(&txn, &p)?;
                t.apply_memtable(&p, &index.memtable.active)?;
            }
            {
                let mut segments = txn.open_table(STREAM_INDEX).map_err(|e| re(e.into()))?;
                let mut meta = txn.open_table(META).map_err(|e| re(e.into()))?;
                let mut index = index.write().expect("stream index lock");
                index.write_segments(&mut segments, &p)?;
                meta.insert("indexed_through", index.through.to_le_bytes().as_slice())
                    .map_err(|e| re(e.into()))?;
                if let Some(lsn) = lsn {
                    meta.insert("journal_lsn", lsn.to_le_bytes().as_slice())
                        .map_err(|e| re(e.into()))?;
                }
            }
            txn.commit().map_err(|e| re(e.into()))?;
            index
                .write()
                .expect("stream index lock")
                .memtable
                .active
                .clear();
            Ok(())
        })?;
        if let Some(journal) = self.journal.as_mut() {
            journal.restart();
        }
        Ok(())
    }

    fn commit_group(&mut self, group: &mut Vec<Job>) {
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
        let outcome = crate::guard::guard(&path, || self.write_group(group, &mut pending));
        match outcome {
            Ok(results) => {
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
                if self.journal.is_some() {
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
                seq += 1;
                let recorded_at = ev.recorded_at.unwrap_or_else(|| self.clock.now());
                hash = chain_hash_of(
                    &hash,
                    &key,
                    Seq(seq),
                    recorded_at,
                    ev.schema_version,
                    &ev.payload,
                );
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
        StoreError::Io { path, source } => StoreError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), msg.to_string()),
        },
        _ => StoreError::Storage(msg.to_string()),
    }
}
