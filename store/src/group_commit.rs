//! Who commits the next group: the writer's lock, the queue and the
//! writer thread (the commit itself: [`crate::write`]).
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
//! write before it acknowledges each caller. Checkpoints and flush
//! hand-offs run on the writer thread only (a caller that commits inline
//! and finds one due sends it [`Msg::Maintain`]); the flush thread also
//! opens redb write transactions, but only to copy groups already
//! committed in the journal.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use crate::error::StoreError;
use crate::request::{Committed, WriteRequest};
use crate::write::WriterState;

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
                crate::metrics::queue_depth(self.shared.queued.load(Ordering::Relaxed));
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
