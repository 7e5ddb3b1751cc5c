//! Write requests and the group-commit writer thread.
//!
//! One thread owns every write transaction. It blocks for the first queued
//! request, then drains whatever else is queued (up to `max_group`), writes
//! all of it in one `Durability::Immediate` transaction — one fdatasync —
//! and only then acknowledges each caller. Requests are validated one by
//! one: a request that conflicts is refused alone, the others commit.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, ReadableTable};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::envelope::{GENESIS_HASH, NewEvent, RawEnvelope, canonical_bytes, chain_hash};
use crate::error::{StoreError, from_redb};
use crate::ids::{Position, Seq, StreamId};
use crate::tables::{
    EVENTS, HEADS, INDEX, POSITIONS, SNAPSHOTS, decode_head, encode_head, encode_record,
};

/// Events to append to one stream, with optimistic concurrency.
#[derive(Clone, Debug)]
pub struct Append {
    /// The stream.
    pub stream: StreamId,
    /// The seq the caller believes is last (`Seq(0)` for a new stream).
    pub expected: Seq,
    /// The events, in order; they get seqs `expected+1 ..`.
    pub events: Vec<NewEvent>,
}

/// A write to a named index (a projection or a unique key), made in the
/// same transaction as the appends of its request.
#[derive(Clone, Debug)]
pub enum IndexOp {
    /// Set `index[key] = value`.
    Put {
        /// Index name, e.g. `runs`.
        index: String,
        /// Key inside the index.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Set `index[key] = value`, failing the whole request with
    /// [`StoreError::IndexConflict`] when the key is already present.
    Insert {
        /// Index name, e.g. `idempotency`.
        index: String,
        /// Key inside the index.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove `index[key]`.
    Delete {
        /// Index name.
        index: String,
        /// Key inside the index.
        key: String,
    },
}

/// One atomic write: every append, index operation and snapshot in it
/// commits together or not at all.
#[derive(Clone, Debug, Default)]
pub struct WriteRequest {
    /// Appends, at most one per stream.
    pub appends: Vec<Append>,
    /// Index operations (projections updated with the appends).
    pub index: Vec<IndexOp>,
    /// Snapshots `(stream, seq, bytes)` to store.
    pub snapshots: Vec<(StreamId, Seq, Vec<u8>)>,
}

impl WriteRequest {
    /// A request with one append.
    pub fn append(stream: StreamId, expected: Seq, events: Vec<NewEvent>) -> Self {
        Self {
            appends: vec![Append {
                stream,
                expected,
                events,
            }],
            ..Self::default()
        }
    }

    /// Add an index operation.
    pub fn with_index(mut self, op: IndexOp) -> Self {
        self.index.push(op);
        self
    }
}

/// What a committed request wrote: the envelopes of its appends, in the
/// order of the request's appends and events.
pub type Committed = Vec<RawEnvelope>;

/// How long the writer polls for the next job before parking, µs.
const SPIN_MICROS: u64 = 50;

pub(crate) struct Job {
    pub request: WriteRequest,
    pub reply: oneshot::Sender<Result<Committed, StoreError>>,
}

pub(crate) struct Writer {
    pub db: Arc<Database>,
    pub path: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub rx: mpsc::Receiver<Job>,
    pub tx_events: broadcast::Sender<Arc<[RawEnvelope]>>,
    pub next_position: u64,
    pub max_group: usize,
    pub quick_repair: bool,
}

impl Writer {
    /// The writer loop; returns when every sender is dropped.
    pub fn run(mut self) {
        let mut group: Vec<Job> = Vec::with_capacity(self.max_group);
        while let Some(first) = self.next_job() {
            group.push(first);
            while group.len() < self.max_group {
                match self.rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(&mut group);
        }
    }

    /// The next job: poll briefly before parking, because the next append
    /// of a busy appender usually arrives within microseconds of its
    /// acknowledgement, and waking a parked thread costs more than that.
    fn next_job(&mut self) -> Option<Job> {
        let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(SPIN_MICROS);
        loop {
            match self.rx.try_recv() {
                Ok(job) => return Some(job),
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

    fn commit_group(&mut self, group: &mut Vec<Job>) {
        let start_position = self.next_position;
        let path = self.path.clone();
        let outcome = crate::guard::guard(&path, || self.write_group(group));
        match outcome {
            Ok(results) => {
                let mut all: Vec<RawEnvelope> = Vec::new();
                for (job, result) in group.drain(..).zip(results) {
                    if let Ok(envs) = &result
                        && self.tx_events.receiver_count() > 0
                    {
                        all.extend(envs.iter().cloned());
                    }
                    let _ = job.reply.send(result);
                }
                if !all.is_empty() {
                    let _ = self.tx_events.send(all.into());
                }
            }
            Err(e) => {
                self.next_position = start_position;
                tracing::error!(error = %e, "group commit failed");
                let msg = e.to_string();
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(clone_fatal(&e, &msg)));
                }
            }
        }
    }

    /// Write every job of the group in one transaction. The outer error is
    /// fatal to the whole group (storage); the inner results are per job.
    #[allow(clippy::type_complexity)]
    fn write_group(
        &mut self,
        group: &[Job],
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        let p = self.path.clone();
        let re = |e: redb::Error| from_redb(&p, e);
        let mut txn = self.db.begin_write().map_err(|e| re(e.into()))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| StoreError::Storage(e.to_string()))?;
        txn.set_quick_repair(self.quick_repair);
        let mut results = Vec::with_capacity(group.len());
        {
            let mut t = Tables {
                events: txn.open_table(EVENTS).map_err(|e| re(e.into()))?,
                positions: txn.open_table(POSITIONS).map_err(|e| re(e.into()))?,
                heads: txn.open_table(HEADS).map_err(|e| re(e.into()))?,
                index: txn.open_table(INDEX).map_err(|e| re(e.into()))?,
                snapshots: txn.open_table(SNAPSHOTS).map_err(|e| re(e.into()))?,
            };
            for job in group {
                results.push(self.write_one(&mut t, &job.request)?);
            }
        }
        txn.commit().map_err(|e| re(e.into()))?;
        Ok(results)
    }

    fn write_one(
        &mut self,
        t: &mut Tables<'_>,
        req: &WriteRequest,
    ) -> Result<Result<Committed, StoreError>, StoreError> {
        let p = self.path.clone();
        let re = |e: redb::Error| from_redb(&p, e);
        // Validate first: nothing is written unless the whole request holds.
        let mut seen = HashSet::new();
        let mut heads = Vec::with_capacity(req.appends.len());
        for a in &req.appends {
            let key = a.stream.key();
            if !seen.insert(key.clone()) {
                return Ok(Err(StoreError::InvalidRequest(format!(
                    "stream {key} appears twice in one request"
                ))));
            }
            let (last, hash) = match t.heads.get(key.as_str()).map_err(|e| re(e.into()))? {
                Some(v) => decode_head(v.value()).ok_or_else(|| StoreError::Corruption {
                    path: p.clone(),
                    message: format!("head of stream {key} is malformed"),
                })?,
                None => (0, GENESIS_HASH),
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
        for op in &req.index {
            if let IndexOp::Insert { index, key, .. } = op
                && let Some(v) = t
                    .index
                    .get((index.as_str(), key.as_str()))
                    .map_err(|e| re(e.into()))?
            {
                return Ok(Err(StoreError::IndexConflict {
                    index: index.clone(),
                    key: key.clone(),
                    existing: v.value().to_vec(),
                }));
            }
        }
        // Write.
        let mut committed = Vec::with_capacity(req.appends.iter().map(|a| a.events.len()).sum());
        for (a, (key, last, mut hash)) in req.appends.iter().zip(heads) {
            let mut seq = last;
            for ev in &a.events {
                seq += 1;
                let recorded_at = ev.recorded_at.unwrap_or_else(|| self.clock.now());
                let canonical = canonical_bytes(
                    &a.stream,
                    Seq(seq),
                    recorded_at,
                    ev.schema_version,
                    &ev.payload,
                );
                hash = chain_hash(&hash, &canonical);
                let position = self.next_position;
                self.next_position += 1;
                let env = RawEnvelope {
                    stream: a.stream.clone(),
                    seq: Seq(seq),
                    position: Position(position),
                    recorded_at,
                    schema_version: ev.schema_version,
                    payload: ev.payload.clone(),
                    hash,
                };
                // Invariant: seqs are contiguous; the slot must be free.
                let prev = t
                    .events
                    .insert((key.as_str(), seq), encode_record(&env).as_slice())
                    .map_err(|e| re(e.into()))?;
                if prev.is_some() {
                    return Err(StoreError::Corruption {
                        path: p.clone(),
                        message: format!(
                            "stream {key} already has seq {seq} beyond its head {last}"
                        ),
                    });
                }
                t.positions
                    .insert(position, (key.as_str(), seq))
                    .map_err(|e| re(e.into()))?;
                committed.push(env);
            }
            if seq != last {
                t.heads
                    .insert(key.as_str(), encode_head(seq, &hash).as_slice())
                    .map_err(|e| re(e.into()))?;
            }
        }
        for op in &req.index {
            match op {
                IndexOp::Put { index, key, value } | IndexOp::Insert { index, key, value } => {
                    t.index
                        .insert((index.as_str(), key.as_str()), value.as_slice())
                        .map_err(|e| re(e.into()))?;
                }
                IndexOp::Delete { index, key } => {
                    t.index
                        .remove((index.as_str(), key.as_str()))
                        .map_err(|e| re(e.into()))?;
                }
            }
        }
        for (stream, seq, bytes) in &req.snapshots {
            t.snapshots
                .insert((stream.key().as_str(), seq.0), bytes.as_slice())
                .map_err(|e| re(e.into()))?;
        }
        Ok(Ok(committed))
    }
}

/// The tables of one write transaction, opened once per group.
pub(crate) struct Tables<'txn> {
    events: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    positions: redb::Table<'txn, u64, (&'static str, u64)>,
    heads: redb::Table<'txn, &'static str, &'static [u8]>,
    index: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    snapshots: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
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
