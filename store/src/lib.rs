//! # chronicle-store
//!
//! Chronicle's event log: durable, append-only, hash-chained streams of
//! events in one [redb](https://docs.rs/redb) file (`PATH`) and its commit
//! journal (`PATH-journal`) — or in a PostgreSQL database many processes
//! share ([`Store::open`] with a `postgres://` URL; the source's `pg/`:
//! the same model, envelope and chain, group commit in one transaction,
//! leases and fencing for workers, a LISTEN/NOTIFY feed). It knows
//! streams, sequence numbers, envelopes and bytes — not workflows.
//!
//! - **Layout**: events keyed by global position in one table, so a group
//!   commit writes at one edge of one B-tree; the positions of each stream's
//!   seqs are an in-memory index checkpointed as segments (see the table
//!   list in the source's `tables.rs`).
//! - **Streams** ([`StreamId`]): a run (UUID v7) or a named stream; events
//!   numbered [`Seq`] 1..n with no gap, and a database-wide [`Position`].
//! - **Append with optimistic concurrency** ([`Store::append`],
//!   [`Store::write`]): all events of a request or none; a typed
//!   [`StoreError::Conflict`] when the stream moved.
//! - **Group commit**: groups commit one at a time under the writer's
//!   lock — a lone request on its caller's thread, requests that queued
//!   meanwhile together on the writer thread — each as one atomic group,
//!   made durable by one write of its frame in the
//!   commit journal (see [`JournalFile`]), acknowledging each caller after that;
//!   acknowledged writes are read from a memtable until a
//!   flush thread commits many groups to redb at once (redb itself is
//!   made durable by checkpoints). The queue is bounded.
//! - **Hash chain** per stream: `h_n = SHA-256(h_{n-1} ‖ canonical bytes)`,
//!   `h_0` = 32 zero bytes ([`GENESIS_HASH`], [`canonical_bytes`]);
//!   [`Store::verify_stream`] names the first bad seq.
//! - **Projections and unique keys** ([`IndexOp`]) written in the same
//!   transaction as the append; **snapshots** of folds.
//!
//! ```no_run
//! use chronicle_store::{NewEvent, Seq, Store, StoreOptions, StreamId};
//! # async fn demo() -> Result<(), chronicle_store::StoreError> {
//! let store = Store::open("chronicle.redb", StoreOptions::default())?;
//! let stream = StreamId::named("agent:demo")?;
//! let committed = store
//!     .append(stream.clone(), Seq(0), vec![NewEvent::new(1, br#"{"n":1}"#.to_vec())])
//!     .await?;
//! assert_eq!(committed[0].seq, Seq(1));
//! assert!(store.verify_stream(&stream)?.ok());
//! # Ok(()) }
//! ```

mod clock;
mod envelope;
mod error;
mod flush;
mod group_commit;
mod guard;
mod ids;
mod index;
mod journal;
mod memtable;
pub mod metrics;
mod open;
mod paths;
mod pg;
mod request;
mod store;
mod tables;
mod write;

pub use clock::{Clock, ManualClock, SystemClock};
pub use envelope::{
    ChainCheck, GENESIS_HASH, Hash, NewEvent, RawEnvelope, canonical_bytes, chain_hash, hex,
    parse_hex_hash,
};
pub use error::StoreError;
pub use guard::install_panic_hook;
pub use ids::{MAX_STREAM_NAME, Position, Seq, StreamId};
pub use journal::{CHECKPOINT_BYTES, JOURNAL_LOSS_INDEX, JournalFile};
pub use paths::{journal_path, outputs_dir, remove_database, server_path, token_path};
pub use pg::listen::Change;
pub use pg::{PG_SCHEMA_VERSION, create_postgres_database, is_postgres_url, redact_url};
pub use redb::StorageBackend;
pub use redb::backends::{FileBackend, InMemoryBackend};
pub use request::{Append, Committed, IndexOp, LeaseOp, WriteRequest};
pub use store::{
    ChainReport, JournalStatus, LeaseInfo, MEMTABLE_BYTES, Store, StoreOptions, StreamHead,
    WeakStore,
};
pub use tables::{RecordView, view_record};

/// The on-disk format version this build reads and writes (in the `meta`
/// table under `format_version`). Version 3: the log keyed by global
/// position with checkpointed stream-index segments, and the commit
/// journal of sector-stamped frames (`meta.journal_salt`,
/// `meta.journal_open`, `meta.journal_lsn`, `meta.indexed_through`, the
/// `DB-journal` file). Versions 1 (events keyed by `(stream, seq)`, before
/// 2026-11-21) and 2 (the `CJ01` journal, before 2026-11-30) are refused:
/// export runs with the release that wrote them and import them.
pub const FORMAT_VERSION: u32 = 3;
