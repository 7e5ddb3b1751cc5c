//! The store's error type.
//!
//! How a caller handles each variant:
//! - [`StoreError::Conflict`]: re-read the stream, re-decide, append again.
//! - [`StoreError::IndexConflict`]: the unique index key is taken; read the
//!   existing value (e.g. the run that already used an idempotency key).
//! - [`StoreError::Locked`], [`StoreError::Corruption`],
//!   [`StoreError::UnsupportedFormat`], [`StoreError::Io`]: storage problems
//!   the caller cannot fix by retrying; report them (CLI exit code 3).
//! - [`StoreError::Decode`]: a stored event that does not decode — a
//!   damaged log, also a storage problem (exit 3).
//! - [`StoreError::JournalLost`]: a crashed database whose journal cannot
//!   be read whole; restore the journal, or reopen with
//!   [`StoreOptions::accept_journal_loss`](crate::StoreOptions) (exit 3).
//! - [`StoreError::Closed`]: the writer has stopped (after a fatal storage
//!   error or on shutdown); reopen the store.

use std::path::PathBuf;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Optimistic concurrency failed: the stream has moved on.
    #[error("conflict on stream {stream}: expected last seq {expected}, found {actual}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// The seq the caller expected to be last.
        expected: u64,
        /// The seq actually last.
        actual: u64,
    },
    /// A write required an index key to be absent, and it was present.
    #[error("index {index} already has key {key}")]
    IndexConflict {
        /// The index name.
        index: String,
        /// The key that was present.
        key: String,
        /// Its current value.
        existing: Vec<u8>,
    },
    /// Another process holds the database file.
    #[error(
        "database {path} is in use by another process; stop that process or use another --db path"
    )]
    Locked {
        /// The database path.
        path: PathBuf,
    },
    /// The file is not a readable Chronicle database, or the log broke an
    /// invariant when read (a gap in seqs, a key/envelope mismatch).
    #[error(
        "database {path} is corrupt: {message}; restore it from a copy (chronicle export/import) or use another --db path"
    )]
    Corruption {
        /// The database path (or `<memory>`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file was written by a newer or unknown Chronicle format.
    #[error(
        "database {path} has format version {found}, this build reads version {supported}; use a matching chronicle release"
    )]
    UnsupportedFormat {
        /// The database path.
        path: PathBuf,
        /// The version found in the file.
        found: String,
        /// The version this build reads.
        supported: u32,
    },
    /// A crash left committed groups in the commit journal that redb does
    /// not hold yet; a read-only open cannot apply them.
    #[error(
        "database {path} has {frames} committed write group(s) in its journal not yet applied (left by a crash); open it read-write once to apply them (Store::open; chronicle commands do this by themselves)"
    )]
    Unrecovered {
        /// The database path.
        path: PathBuf,
        /// Journal frames waiting.
        frames: usize,
    },
    /// The database was not closed cleanly and its commit journal is
    /// missing, truncated or damaged: acknowledged events may exist only
    /// in the part that cannot be read. Nothing was written.
    #[error(
        "database {path} was not closed cleanly and its commit journal {journal} {problem}; acknowledged events may exist only there ({frames_readable} readable frame(s) before the problem). Restore the journal file from where it was (a copy taken with the database), or run `chronicle recover --accept-loss` to open the database with what can be read (what is given up is recorded in the database)",
        journal = journal.display()
    )]
    JournalLost {
        /// The database path.
        path: PathBuf,
        /// The journal path.
        journal: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// Whole frames before the problem.
        frames_readable: usize,
    },
    /// An operating-system I/O error.
    #[error(
        "I/O error on {path}: {source}; check that the path exists, is writable and its disk is not full"
    )]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// redb reported an error not covered above.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stream name that is not allowed.
    #[error("invalid stream id {0:?}: must be a UUID or a non-empty name of at most 256 bytes")]
    InvalidStream(String),
    /// A write request that breaks the API's rules (e.g. empty, or the
    /// same stream twice in one request).
    #[error("invalid write request: {0}")]
    InvalidRequest(String),
    /// A payload could not be serialized.
    #[error("cannot encode event: {0}")]
    Encode(String),
    /// A stored payload could not be decoded: the log is damaged there
    /// (a storage problem, exit 3).
    #[error(
        "event {seq} of stream {stream} does not decode ({message}): the log is damaged from there; restore the database from a copy"
    )]
    Decode {
        /// The stream.
        stream: String,
        /// The seq.
        seq: u64,
        /// The decoder's message.
        message: String,
    },
    /// A write on a store opened read-only.
    #[error("database {0} is open read-only; this command cannot change it")]
    ReadOnly(PathBuf),
    /// PostgreSQL refused or failed (unreachable server, refused login,
    /// malformed URL, a failed transaction): a storage problem (exit 3).
    /// After a failed write the request was not committed.
    #[error("PostgreSQL database {target}: {message}")]
    Postgres {
        /// The database URL, password redacted.
        target: String,
        /// What the server or client said.
        message: String,
    },
    /// Fencing: the request required a lease its writer no longer holds
    /// (it expired, or another worker took the run over). Nothing was
    /// written; the writer must stop executing the run.
    #[error("lease lost on run {run}: {message}; another worker executes it now")]
    Fenced {
        /// The run's stream key.
        run: String,
        /// Who holds it now, or why the lease is not live.
        message: String,
    },
    /// The writer thread is gone.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// True for errors that mean the database cannot be used as it is
    /// (locked, corrupt, unsupported, I/O): the CLI maps these to exit 3.
    pub fn is_storage_problem(&self) -> bool {
        matches!(
            self,
            Self::Locked { .. }
                | Self::Corruption { .. }
                | Self::UnsupportedFormat { .. }
                | Self::Io { .. }
                | Self::Unrecovered { .. }
                | Self::JournalLost { .. }
                | Self::Storage(_)
                | Self::Decode { .. }
                | Self::Postgres { .. }
                | Self::Closed
        )
    }
}

/// An I/O error on `path` as a [`StoreError::Io`], for `map_err`.
pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Map any redb error into a [`StoreError`], turning corruption reports
/// into [`StoreError::Corruption`].
pub(crate) fn from_redb(path: &std::path::Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_path_buf(),
        },
        redb::Error::Corrupted(m) => StoreError::Corruption {
            path: path.to_path_buf(),
            message: m,
        },
        redb::Error::Io(source) => StoreError::Io {
            path: path.to_path_buf(),
            source,
        },
        redb::Error::UpgradeRequired(v) => StoreError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format!("redb file format {v}"),
            supported: crate::FORMAT_VERSION,
        },
        other => StoreError::Storage(other.to_string()),
    }
}
