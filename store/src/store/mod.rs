//! [`Store`]: the handle to one event log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase, StorageBackend};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::{Clock, SystemClock};
use crate::envelope::{Hash, NewEvent, RawEnvelope, hex};
use crate::error::{StoreError, from_redb};
use crate::group_commit::{Job, Msg, QueuedJob, Shared, Writer};
use crate::ids::{Seq, StreamId};
use crate::index::StreamIndex;
use crate::open::{JournalSource, Opened, open_backend, open_file};
use crate::request::{Committed, WriteRequest};
use crate::write::WriterState;

/// Options for opening a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Appends queued beyond this wait (backpressure). Default 4,096.
    pub queue_capacity: usize,
    /// Most requests written in one transaction. Default 4,096.
    pub max_group: usize,
    /// Largest encoded group of writes, bytes (one journal frame). A
    /// request over it is refused alone ([`StoreError::InvalidRequest`])
    /// before anything is written, and the store goes on. Default and
    /// most: 1 GiB (the journal's frame limit).
    pub max_group_bytes: usize,
    /// redb quick repair (2-phase commit + allocator state per commit).
    /// Default `false`: see the README's "quick repair" note for the
    /// measurement behind this choice.
    pub quick_repair: bool,
    /// redb page cache, bytes. Default 256 MiB.
    pub cache_bytes: usize,
    /// Journal bytes between checkpoints (the commit journal: `docs/architecture.md`).
    /// Default [`crate::CHECKPOINT_BYTES`] (16 MiB).
    pub checkpoint_bytes: u64,
    /// Memtable bytes (acknowledged writes not yet in redb, see
    /// the source's `memtable.rs`) after which the writer hands them to the flush
    /// thread, which commits them to redb in one non-durable transaction.
    /// Default [`MEMTABLE_BYTES`] (64 KiB).
    /// Stores not on a file have no memtable.
    pub memtable_bytes: usize,
    /// Let a caller that finds the writer idle and nothing queued commit
    /// its own request on its own thread (as a group of one). Default
    /// `true`: one appender measured 1.00–1.01 × the raw fsync rate with
    /// it and 0.73–0.77 × without, in alternating runs of `chronicle bench
    /// store` (2026-11-21; 256 appenders the same within noise).
    /// Such a commit blocks the caller's thread — a runtime worker, for an
    /// async caller — for one durable write; turn it off on a disk whose
    /// fdatasync takes milliseconds, to keep workers free.
    pub caller_commits: bool,
    /// The clock that stamps `recorded_at`.
    pub clock: Arc<dyn Clock>,
    /// Open a database that was not closed cleanly even when its journal
    /// is missing, truncated or damaged ([`StoreError::JournalLost`]
    /// otherwise): the frames before the problem are applied, the rest is
    /// given up, and the loss is recorded in the `index` table
    /// ([`crate::JOURNAL_LOSS_INDEX`]). Default `false`.
    pub accept_journal_loss: bool,
}

/// Default [`StoreOptions::memtable_bytes`]: 64 KiB, about 250 events of
/// 200 bytes. Measured with `chronicle bench store` (2026-11-21), flushes
/// on their own thread: with 256 appenders, p50/p99 latency 0.83–0.94 /
/// 1.6–2.1 ms at 64 KiB against 0.65–0.76 / 2.2–2.8 ms at 256 KiB (a
/// larger flush competes longer for the two cores), throughput the same
/// within noise; one appender's rate the same. (Flushing on the writer's
/// thread instead, p99 was 1.2–1.4 ms at 64 KiB and ~5 ms at 1 MiB, and
/// 1,024 appenders reached 0.52–0.57 × the raw batch rate against
/// 0.60–0.64 × now.)
pub const MEMTABLE_BYTES: usize = 64 << 10;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_group: 4096,
            max_group_bytes: crate::journal::MAX_FRAME_BODY,
            quick_repair: false,
            cache_bytes: 256 << 20,
            checkpoint_bytes: crate::journal::CHECKPOINT_BYTES,
            memtable_bytes: MEMTABLE_BYTES,
            caller_commits: true,
            clock: Arc::new(SystemClock),
            accept_journal_loss: false,
        }
    }
}

/// A stream's head: its last seq and the hash of that event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamHead {
    /// The stream.
    pub stream: StreamId,
    /// Last seq (number of events).
    pub last_seq: Seq,
    /// Hash of the last event.
    #[serde(serialize_with = "ser_hex")]
    pub hash: Hash,
}

fn ser_hex<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(h))
}

/// The result of recomputing one stream's hash chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// The stream checked.
    pub stream: StreamId,
    /// Events checked.
    pub events: u64,
    /// The first seq whose stored hash (or position in the chain) is wrong,
    /// with the reason; `None` when the chain verifies.
    pub first_bad: Option<(Seq, String)>,
}

impl ChainReport {
    /// True when the chain verified.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// The event log. Cheap to clone; all clones share one writer (its lock,
/// queue and thread).
///
/// ```no_run
/// use chronicle_store::{NewEvent, Seq, Store, StoreOptions, StreamId};
/// # async fn demo() -> Result<(), chronicle_store::StoreError> {
/// let store = Store::open("chronicle.redb", StoreOptions::default())?;
/// let stream = StreamId::named("agent:demo")?;
/// let ev = NewEvent::new(1, br#"{"type":"Hello"}"#.to_vec());
/// store.append(stream.clone(), Seq(0), vec![ev]).await?;
/// assert_eq!(store.read_stream(&stream, Seq(1))?.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// A handle that does not keep the store open: [`WeakStore::upgrade`]
/// gives the store while some [`Store`] handle still holds it. For work
/// in the background that must not hold the database file open after its
/// owner closed it.
#[derive(Clone, Debug)]
pub struct WeakStore(std::sync::Weak<Inner>);

impl WeakStore {
    /// The store, if it is still open.
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|inner| Store { inner })
    }
}

/// The redb handle: read-write (with a writer thread) or read-only.
enum Handle {
    Rw(Arc<Database>),
    Ro(redb::ReadOnlyDatabase),
    /// On PostgreSQL: [`Inner::pg`] holds the backend.
    Pg,
    /// Taken while the store closes.
    Closed,
}

struct Inner {
    db: Handle,
    /// Which positions hold each stream's seqs (see `crate::index`).
    index: Arc<RwLock<StreamIndex>>,
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    /// The writer's lock and queue count (read-write stores).
    shared: Option<Arc<Shared>>,
    events: broadcast::Sender<Arc<[RawEnvelope]>>,
    /// Commits of other processes (a shared database only).
    foreign: broadcast::Sender<Arc<crate::Change>>,
    clock: Arc<dyn Clock>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The PostgreSQL backend, for a store opened on a `postgres://` URL
    /// (every method then answers from it).
    pg: Option<Arc<crate::pg::PgStore>>,
}

impl Drop for Inner {
    /// Closing: stop the writer after it has committed what is queued, and
    /// wait for it, so the file is released when the last handle drops.
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed));
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // redb writes its allocator state when the database closes, and can
        // panic doing so on a damaged file: close inside the guard too. The
        // writer's state holds the database as well; it goes first.
        let handle = std::mem::replace(&mut self.db, Handle::Closed);
        let shared = self.shared.take();
        let _ = crate::guard::guard(&self.path, move || {
            drop(shared);
            drop(handle);
            Ok(())
        });
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Store {
    /// Open the database at `path`, creating it atomically if absent, and
    /// its commit journal `PATH-journal` (`docs/architecture.md`): groups a
    /// crash left in the journal are applied to redb before this returns.
    /// Keep the two files together — copying the database alone after a
    /// crash loses the groups only its journal holds.
    ///
    /// Errors: [`StoreError::Locked`] when another process has it open,
    /// [`StoreError::Corruption`] when it is not a readable redb file,
    /// [`StoreError::UnsupportedFormat`] for a newer or foreign format,
    /// [`StoreError::Io`] for file-system failures.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        if let Some(url) = postgres_url(path.as_ref()) {
            return Self::open_postgres(url, options, false);
        }
        let path = path.as_ref().to_path_buf();
        crate::guard::guard(&path.clone(), move || {
            let (db, opened) = open_file(
                &path,
                options.cache_bytes,
                options.accept_journal_loss,
                options.clock.as_ref(),
            )?;
            Self::start(db, path, options, opened)
        })
    }

    /// A store in memory (redb's `InMemoryBackend`), for tests.
    pub fn in_memory(options: StoreOptions) -> Result<Self, StoreError> {
        Self::with_backend(redb::backends::InMemoryBackend::new(), options)
    }

    /// A store on any redb backend (for fault injection).
    pub fn with_backend(
        backend: impl StorageBackend,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let label = PathBuf::from("<backend>");
        crate::guard::guard(&label.clone(), move || {
            let (db, opened) =
                open_backend(backend, JournalSource::None, &label, options.clock.as_ref())?;
            Self::start(db, label, options, opened)
        })
    }

    /// A store on a redb backend with a commit journal on `journal`: it
    /// commits, flushes, checkpoints and recovers exactly as a store on a
    /// file does ([`Store::open`]), with both files behind seams — for
    /// fault injection and power-loss simulation of the whole write path.
    ///
    /// Errors: as [`Store::open`].
    pub fn with_backends(
        backend: impl StorageBackend,
        journal: impl crate::journal::JournalFile,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let label = PathBuf::from("<backend>");
        crate::guard::guard(&label.clone(), move || {
            let source = JournalSource::File {
                file: Box::new(journal),
                accept_loss: options.accept_journal_loss,
            };
            let (db, opened) = open_backend(backend, source, &label, options.clock.as_ref())?;
            Self::start(db, label, options, opened)
        })
    }

    fn start(
        db: Database,
        path: PathBuf,
        options: StoreOptions,
        opened: Opened,
    ) -> Result<Self, StoreError> {
        let db = Arc::new(db);
        let next_position = opened.index.through + 1;
        let index = Arc::new(RwLock::new(opened.index));
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let (events, _) = broadcast::channel(1024);
        let mut state = WriterState {
            db: db.clone(),
            path: path.clone(),
            clock: options.clock.clone(),
            tx_events: events.clone(),
            index: index.clone(),
            next_position,
            max_group: options.max_group.max(1),
            max_group_bytes: options.max_group_bytes.min(crate::journal::MAX_FRAME_BODY),
            quick_repair: options.quick_repair,
            checkpoint_bytes: options.checkpoint_bytes.max(1),
            memtable_limit: options.memtable_bytes,
            flusher: None,
            journal: opened.journal,
            journal_marked: false,
            poisoned: None,
            body: Vec::new(),
        };
        state.start_flusher();
        let shared = Arc::new(Shared {
            caller_commits: options.caller_commits,
            state: std::sync::Mutex::new(state),
            queued: Default::default(),
            maintain_sent: Default::default(),
        });
        let writer = Writer {
            rx,
            shared: shared.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("chronicle-writer".into())
            .spawn(move || writer.run())
            .map_err(crate::error::io(&path))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: Handle::Rw(db),
                index,
                path,
                tx,
                shared: Some(shared),
                events,
                foreign: broadcast::channel(1).0,
                clock: options.clock,
                writer: Some(handle),
                pg: None,
            }),
        })
    }

    /// Open an existing database read-only: the file is never modified
    /// (for inspection commands). Writes fail with [`StoreError::ReadOnly`].
    ///
    /// Errors: as [`Store::open`]; a missing file is [`StoreError::Io`];
    /// a file that needs crash repair cannot be opened read-only
    /// ([`StoreError::Storage`]), nor one whose commit journal holds groups
    /// a crash left unapplied ([`StoreError::Unrecovered`]) — open it
    /// read-write once to repair and apply them.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        if let Some(url) = postgres_url(path.as_ref()) {
            return Self::open_postgres(url, StoreOptions::default(), true);
        }
        let path = path.as_ref().to_path_buf();
        let (db, index) = crate::guard::guard(&path, || crate::open::open_read_only(&path))?;
        let (tx, _) = mpsc::channel(1);
        let (events, _) = broadcast::channel(1);
        Ok(Self {
            inner: Arc::new(Inner {
                db: Handle::Ro(db),
                index: Arc::new(RwLock::new(index)),
                path,
                tx,
                shared: None,
                events,
                foreign: broadcast::channel(1).0,
                clock: Arc::new(SystemClock),
                writer: None,
                pg: None,
            }),
        })
    }

    /// Open the log in the PostgreSQL database at `url` (`postgres://` or
    /// `postgresql://`, as libpq reads it; `sslmode=require` for TLS):
    /// migrations this build has are applied first (unless `read_only`).
    /// Many processes may open one database at once.
    ///
    /// Errors: [`StoreError::Postgres`] for a malformed URL, an unreachable
    /// server or a refused login; [`StoreError::UnsupportedFormat`] for a
    /// schema newer than this build's ([`crate::PG_SCHEMA_VERSION`]).
    pub fn open_postgres(
        url: &str,
        options: StoreOptions,
        read_only: bool,
    ) -> Result<Self, StoreError> {
        let (events, _) = broadcast::channel(1024);
        let (foreign, _) = broadcast::channel(1024);
        let pg =
            crate::pg::PgStore::open(url, &options, events.clone(), foreign.clone(), read_only)?;
        let (tx, _) = mpsc::channel(1);
        Ok(Self {
            inner: Arc::new(Inner {
                db: Handle::Pg,
                index: Default::default(),
                path: pg.path(),
                tx,
                shared: None,
                events,
                foreign,
                clock: options.clock,
                writer: None,
                pg: Some(Arc::new(pg)),
            }),
        })
    }

    /// The PostgreSQL backend, when the store is on one.
    pub(crate) fn pg(&self) -> Option<&crate::pg::PgStore> {
        self.inner.pg.as_deref()
    }

    /// True for a store on PostgreSQL (shared by many processes).
    pub fn is_postgres(&self) -> bool {
        self.inner.pg.is_some()
    }

    /// A handle that does not keep this store open ([`WeakStore`]).
    pub fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.inner))
    }

    /// True for a store opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        if let Some(pg) = self.pg() {
            return pg.read_only;
        }
        matches!(self.inner.db, Handle::Ro(_))
    }

    /// The database path (`<backend>` for a non-file backend).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The clock that stamps events.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Append `events` to `stream` if its last seq is `expected`; returns
    /// the stored envelopes once they are durable.
    ///
    /// Errors: [`StoreError::Conflict`] (naming both seqs) when the stream
    /// has moved, and [`StoreError::InvalidRequest`] for a request the
    /// store refuses — both before anything is written; storage errors
    /// when the commit fails. After a storage error the request may or may
    /// not be durable (its journal frame may have reached the disk before
    /// the failure): the store refuses further writes, and reopening it
    /// decides — read the stream again then.
    pub async fn append(
        &self,
        stream: StreamId,
        expected: Seq,
        events: Vec<NewEvent>,
    ) -> Result<Committed, StoreError> {
        self.write(WriteRequest::append(stream, expected, events))
            .await
    }

    /// Commit one atomic [`WriteRequest`] through group commit; returns
    /// once it is durable. When the writer is idle and nothing is queued
    /// the request commits on the calling thread (one durable write,
    /// ~0.1 ms on this machine's disk, blocking that thread; see
    /// [`StoreOptions::caller_commits`]); otherwise it waits in the queue
    /// for the writer thread's next group, and for room when the queue is
    /// full.
    ///
    /// Errors: as [`Store::append`]; [`StoreError::ReadOnly`] for a
    /// read-only store, [`StoreError::Closed`] once the writer stopped.
    pub async fn write(&self, request: WriteRequest) -> Result<Committed, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.write(request).await;
        }
        let (shared, request) = match self.inline(request) {
            Ok(done) => return done,
            Err(queue) => queue,
        };
        let (reply, rx) = oneshot::channel();
        let queued = QueuedJob::new(&shared.queued);
        self.inner
            .tx
            .send(Msg::Job(Job { request, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        queued.sent();
        rx.await.map_err(|_| StoreError::Closed)?.0
    }

    /// [`Store::write`] for callers outside an async runtime.
    ///
    /// Panics if called from inside a tokio runtime thread.
    pub fn write_blocking(&self, request: WriteRequest) -> Result<Committed, StoreError> {
        if let Some(pg) = self.pg() {
            return pg.write_blocking(request);
        }
        let (shared, request) = match self.inline(request) {
            Ok(done) => return done,
            Err(queue) => queue,
        };
        let (reply, rx) = oneshot::channel();
        let queued = QueuedJob::new(&shared.queued);
        self.inner
            .tx
            .blocking_send(Msg::Job(Job { request, reply }))
            .map_err(|_| StoreError::Closed)?;
        queued.sent();
        rx.blocking_recv().map_err(|_| StoreError::Closed)?.0
    }

    /// The inline commit of [`Store::write`], or what to queue.
    #[allow(clippy::type_complexity)]
    fn inline(
        &self,
        request: WriteRequest,
    ) -> Result<Result<Committed, StoreError>, (&Arc<Shared>, WriteRequest)> {
        let Some(shared) = &self.inner.shared else {
            return Ok(Err(StoreError::ReadOnly(self.inner.path.clone())));
        };
        shared
            .try_inline(&self.inner.tx, request)
            .map_err(|request| (shared, request))
    }

    /// A live feed of committed envelopes, one message per group commit.
    /// A slow receiver that falls behind by more than 1,024 commits gets
    /// `RecvError::Lagged` and should re-read from the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[RawEnvelope]>> {
        let first = self.inner.events.receiver_count() == 0;
        let rx = self.inner.events.subscribe();
        if first && let Some(pg) = self.pg() {
            // The feed had no reader: it goes on from now, not from where
            // it stopped reading.
            pg.feed_starts();
        }
        rx
    }

    /// What other processes commit, as they commit: the streams each
    /// commit appended to and whether it offered runs to the workers (a
    /// shared database: PostgreSQL's LISTEN/NOTIFY, from the notification
    /// alone — nothing is read; on redb nothing arrives). For an engine to
    /// see commands other processes append to its runs, and a worker to
    /// wake for new runs.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<crate::Change>> {
        self.inner.foreign.subscribe()
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        let r = match &self.inner.db {
            Handle::Rw(db) => db.begin_read(),
            Handle::Ro(db) => db.begin_read(),
            Handle::Pg | Handle::Closed => return Err(StoreError::Closed),
        };
        r.map_err(|e| from_redb(&self.inner.path, e))
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corruption {
            path: self.inner.path.clone(),
            message,
        }
    }
}

/// The URL in `path` when it names a PostgreSQL database.
fn postgres_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| crate::pg::is_postgres_url(s))
}

mod leases;
mod lookups;
mod read;
pub use leases::LeaseInfo;
pub use lookups::JournalStatus;
