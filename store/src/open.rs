//! Opening a database file: atomic creation, format check, error mapping.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};

use crate::FORMAT_VERSION;
use crate::clock::Clock;
use crate::error::{StoreError, from_redb, io};
use crate::index::StreamIndex;
use crate::journal::{
    JOURNAL_LOSS_INDEX, Journal, JournalFile, JournalProblem, Op, decode_ops, journal_path,
    new_salt, scan, scan_bytes,
};
use crate::tables::Tables;
use crate::tables::{INDEX, LOG, META, SNAPSHOTS, STREAM_INDEX};

/// What opening a database yields besides redb's handle.
pub(crate) struct Opened {
    pub index: StreamIndex,
    /// The journal (read-write opens of a file).
    pub journal: Option<Journal>,
}

/// Open the file at `path`, creating it atomically if it does not exist:
/// the new database is written to `.NAME.creating-PID-N`, fsynced, linked
/// into place and the directory fsynced, so a crash during creation leaves
/// either no file or a complete one; the creator keeps it open (and
/// locked) throughout.
///
/// Then the commit journal is recovered: frames a crash left unapplied
/// are written into redb in one `Immediate` commit, and the journal is
/// opened for the writer.
pub(crate) fn open_file(
    path: &Path,
    cache_bytes: usize,
    accept_journal_loss: bool,
    clock: &dyn Clock,
) -> Result<(Database, Opened), StoreError> {
    let created = if path.exists() {
        None
    } else {
        create_atomically(path, cache_bytes)?
    };
    let existed = created.is_none();
    let db = match created {
        Some(db) => db,
        None => {
            if fs::metadata(path).map_err(io(path))?.len() == 0 {
                return Err(StoreError::Corruption {
                    path: path.to_path_buf(),
                    message: "the file is empty (not a Chronicle database); move it away".into(),
                });
            }
            Database::builder()
                .set_cache_size(cache_bytes)
                .open(path)
                .map_err(|e| map_open_error(path, e))?
        }
    };
    let mut db = db;
    if existed {
        check_pages(&mut db, path)?;
    }
    check_format(&db, path)?;
    let opened = recover(
        &db,
        path,
        JournalSource::Path {
            accept_loss: accept_journal_loss,
        },
        clock,
    )?;
    Ok((db, opened))
}

/// Before anything is written to an existing file: redb walks every page
/// reachable from its roots and checks each against the checksum its
/// parent holds (`Database::check_integrity`), so that a damaged page is
/// found here, as [`StoreError::Corruption`], and not by a later commit —
/// redb can panic while unwinding from a damaged system page (its freed
/// tree), which aborts the process. A damaged file is refused before this
/// process writes to it. Cost: ~1 ms for a few thousand events, ~235 ms
/// for 1,000,000 (README, "Why quick repair is off").
///
/// `Ok(false)` from redb means it rebuilt its own allocator state (what it
/// also does after a crash); that loses no data and is logged.
fn check_pages(db: &mut Database, path: &Path) -> Result<(), StoreError> {
    match db.check_integrity() {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(path = %path.display(), "redb rebuilt its allocator state (left by a crash or damage); no data was lost");
            Ok(())
        }
        Err(e) => Err(match from_redb(path, e) {
            StoreError::Corruption { path, message } => StoreError::Corruption {
                path,
                message: format!("a page check failed ({message}); refusing to write to it"),
            },
            other => other,
        }),
    }
}

/// The journal and index state recorded in `meta`.
struct MetaState {
    /// The journal cycle's salt; `None` until the first read-write open.
    journal_salt: Option<u64>,
    /// The journal may hold frames redb lacks (the store was not closed
    /// cleanly since its first frame).
    journal_open: bool,
    journal_lsn: u64,
    indexed_through: u64,
}

fn meta_state(db: &impl ReadableDatabase, path: &Path) -> Result<MetaState, StoreError> {
    let txn = db.begin_read().map_err(|e| from_redb(path, e))?;
    let meta = txn.open_table(META).map_err(|e| from_redb(path, e))?;
    let read = |name: &str| -> Result<Option<u64>, StoreError> {
        match meta.get(name).map_err(|e| from_redb(path, e))? {
            None => Ok(None),
            Some(v) => v
                .value()
                .try_into()
                .map(|b| Some(u64::from_le_bytes(b)))
                .map_err(|_| StoreError::Corruption {
                    path: path.to_path_buf(),
                    message: format!("meta.{name} is not 8 bytes"),
                }),
        }
    };
    Ok(MetaState {
        journal_salt: read("journal_salt")?,
        journal_open: read("journal_open")?.unwrap_or(0) != 0,
        journal_lsn: read("journal_lsn")?.unwrap_or(0),
        indexed_through: read("indexed_through")?.unwrap_or(0),
    })
}

/// Build the stream index from the segments and the log after them.
fn load_index(
    db: &impl ReadableDatabase,
    path: &Path,
    indexed_through: u64,
) -> Result<StreamIndex, StoreError> {
    let txn = db.begin_read().map_err(|e| from_redb(path, e))?;
    let segments = txn
        .open_table(STREAM_INDEX)
        .map_err(|e| from_redb(path, e))?;
    let log = txn.open_table(LOG).map_err(|e| from_redb(path, e))?;
    StreamIndex::load(&segments, &log, indexed_through, path)
}

/// Where a store's commit journal is.
pub(crate) enum JournalSource {
    /// No journal: each group is an `Immediate` redb commit.
    None,
    /// The file `DB-journal` beside the database file.
    Path { accept_loss: bool },
    /// A journal file given with a redb backend (tests: a simulated disk).
    File {
        file: Box<dyn JournalFile>,
        accept_loss: bool,
    },
}

impl JournalSource {
    fn accept_loss(&self) -> bool {
        match self {
            Self::None => false,
            Self::Path { accept_loss } | Self::File { accept_loss, .. } => *accept_loss,
        }
    }
}

/// Read the journal of a database whose meta says it may hold frames
/// redb lacks; a problem is an error unless the source accepts the loss.
fn read_journal(
    path: &Path,
    state: &MetaState,
    source: &JournalSource,
) -> Result<(Vec<crate::journal::Frame>, Option<JournalProblem>), StoreError> {
    if !state.journal_open {
        return Ok((Vec::new(), None));
    }
    let jpath = journal_path(path);
    let salt = state.journal_salt.unwrap_or(0);
    let scan = match source {
        JournalSource::None => return Ok((Vec::new(), None)),
        JournalSource::Path { .. } => scan(&jpath, salt, state.journal_lsn)?,
        JournalSource::File { file, .. } => scan_bytes(
            file.read_all().map_err(io(&jpath))?,
            salt,
            state.journal_lsn,
        ),
    };
    let accept_loss = source.accept_loss();
    match scan.problem {
        Some(problem) if !accept_loss => Err(StoreError::JournalLost {
            path: path.to_path_buf(),
            journal: jpath,
            problem: problem.to_string(),
            frames_readable: scan.frames.len(),
        }),
        problem => Ok((scan.frames, problem)),
    }
}

/// Recover a read-write open: build the stream index, apply the journal's
/// frames (if `journal` is `Some(accept_loss)`: a file store), and — only
/// when something changed — in one durable commit save the index segments
/// of what was recovered, mark the journal closed with a fresh salt, and
/// record an accepted loss; then open the journal for the writer.
///
/// Frames are applied idempotently: an event already at its position with
/// the same bytes is skipped (redb may hold non-durable flushes made
/// durable by a close after a write error, beyond `meta.journal_lsn`).
fn recover(
    db: &Database,
    path: &Path,
    source: JournalSource,
    clock: &dyn Clock,
) -> Result<Opened, StoreError> {
    let state = meta_state(db, path)?;
    let mut index = load_index(db, path, state.indexed_through)?;
    let (frames, loss) = read_journal(path, &state, &source)?;
    let last = frames.last().map_or(state.journal_lsn, |f| f.lsn);
    let jpath = journal_path(path);
    let open_journal = {
        let jpath = jpath.clone();
        move |salt: u64| -> Result<Option<Journal>, StoreError> {
            match source {
                JournalSource::None => Ok(None),
                JournalSource::Path { .. } => Journal::open(&jpath, salt, last + 1).map(Some),
                JournalSource::File { file, .. } => {
                    Journal::on(file, &jpath, salt, last + 1).map(Some)
                }
            }
        }
    };
    // Nothing to save (a clean open): no commit, no fsync at start-up.
    if frames.is_empty()
        && loss.is_none()
        && !state.journal_open
        && state.journal_salt.is_some()
        && !index.is_dirty()
    {
        let salt = state.journal_salt.unwrap_or(0);
        return Ok(Opened {
            index,
            journal: open_journal(salt)?,
        });
    }
    let salt = new_salt();
    let txn = db.begin_write().map_err(|e| from_redb(path, e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| from_redb(path, e))?;
        let mut segments = txn
            .open_table(STREAM_INDEX)
            .map_err(|e| from_redb(path, e))?;
        let mut t = Tables::open(&txn, path)?;
        for frame in &frames {
            let ops = decode_ops(&frame.body).map_err(|at| StoreError::Corruption {
                path: jpath.clone(),
                message: format!(
                    "journal frame {} does not decode at byte {at} although its checksums hold",
                    frame.lsn
                ),
            })?;
            for op in &ops {
                if let Op::Event { position, record } = op {
                    let present = t
                        .log
                        .get(*position)
                        .map_err(|e| from_redb(path, e))?
                        .map(|v| v.value() == *record);
                    match present {
                        Some(true) => continue,
                        Some(false) => {
                            return Err(StoreError::Corruption {
                                path: path.to_path_buf(),
                                message: format!(
                                    "journal frame {} and the log hold different events at position {position}",
                                    frame.lsn
                                ),
                            });
                        }
                        None => {}
                    }
                }
                t.apply(path, op, None)?;
                if let Op::Event { position, record } = op {
                    index.push_record(*position, record).map_err(|message| {
                        StoreError::Corruption {
                            path: jpath.clone(),
                            message: format!("journal frame {}: {message}", frame.lsn),
                        }
                    })?;
                }
            }
        }
        if let Some(problem) = &loss {
            let at = clock.now();
            let record = serde_json::json!({
                "journal": jpath.display().to_string(),
                "problem": problem.to_string(),
                "frames_applied": frames.len(),
                "last_lsn_applied": last,
            });
            t.index
                .insert(
                    (JOURNAL_LOSS_INDEX, at.to_rfc3339().as_str()),
                    record.to_string().as_bytes(),
                )
                .map_err(|e| from_redb(path, e))?;
            tracing::warn!(
                journal = %jpath.display(),
                problem = %problem,
                frames_applied = frames.len(),
                "accepted the loss of what the journal held after the last readable frame"
            );
        }
        index.write_segments(&mut segments, path)?;
        let put = |meta: &mut redb::Table<&str, &[u8]>, k: &str, v: u64| {
            meta.insert(k, v.to_le_bytes().as_slice())
                .map(drop)
                .map_err(|e| from_redb(path, e))
        };
        put(&mut meta, "indexed_through", index.through)?;
        put(&mut meta, "journal_lsn", last)?;
        put(&mut meta, "journal_salt", salt)?;
        put(&mut meta, "journal_open", 0)?;
    }
    txn.commit().map_err(|e| from_redb(path, e))?;
    if !frames.is_empty() {
        tracing::info!(
            path = %path.display(),
            frames = frames.len(),
            "applied the commit journal left by a crash"
        );
    }
    Ok(Opened {
        index,
        journal: open_journal(salt)?,
    })
}

/// Open (or initialise) a database on any redb backend: the in-memory one
/// for tests, or a fault-injecting or power-loss-simulating wrapper. With
/// no journal each group commit is an `Immediate` redb commit; with one,
/// the store commits as on a file (journal frames, memtable, flushes,
/// checkpoints) and recovers the journal here.
pub(crate) fn open_backend(
    backend: impl StorageBackend,
    journal: JournalSource,
    label: &Path,
    clock: &dyn Clock,
) -> Result<(Database, Opened), StoreError> {
    let mut db = Database::builder()
        .create_with_backend(backend)
        .map_err(|e| map_open_error(label, e))?;
    check_pages(&mut db, label)?;
    init_tables(&db, label)?;
    check_format(&db, label)?;
    let opened = recover(&db, label, journal, clock)?;
    Ok((db, opened))
}

/// Open an existing file read-only (never writes to it).
pub(crate) fn open_read_only(
    path: &Path,
) -> Result<(redb::ReadOnlyDatabase, StreamIndex), StoreError> {
    if fs::metadata(path).map_err(io(path))?.len() == 0 {
        return Err(StoreError::Corruption {
            path: path.to_path_buf(),
            message: "the file is empty (not a Chronicle database); move it away".into(),
        });
    }
    let db = Database::builder()
        .open_read_only(path)
        .map_err(|e| map_open_error(path, e))?;
    check_format(&db, path)?;
    let state = meta_state(&db, path)?;
    let (frames, _) = read_journal(path, &state, &JournalSource::Path { accept_loss: false })?;
    if !frames.is_empty() {
        return Err(StoreError::Unrecovered {
            path: path.to_path_buf(),
            frames: frames.len(),
        });
    }
    let index = load_index(&db, path, state.indexed_through)?;
    Ok((db, index))
}

fn map_open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Io(ref io_err))
            if io_err.kind() == std::io::ErrorKind::InvalidData =>
        {
            StoreError::Corruption {
                path: path.to_path_buf(),
                message: io_err.to_string(),
            }
        }
        other => from_redb(path, other),
    }
}

/// Create the database at `path` through a temporary file, and return it
/// still open — so its lock is held from the first moment the file is
/// visible at `path`: a process opening `path` meanwhile sees "in use",
/// never takes the new file away from its creator.
///
/// The file is published with a hard link, which fails where `path`
/// already exists (another process created it meanwhile: `Ok(None)`, the
/// caller opens that one); a rename, which would replace that process's
/// file under it, is used only where the file system has no hard links.
fn create_atomically(path: &Path, cache_bytes: usize) -> Result<Option<Database>, StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Unique per process and per attempt: threads of one process may
    // create the same database at once.
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.creating-{}-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id(),
        ATTEMPT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_file(&tmp);
    let outcome = (|| -> Result<Option<Database>, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create_file(file)
            .map_err(|e| from_redb(&tmp, e))?;
        init_tables(&db, &tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Some(db)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(_) => fs::rename(&tmp, path).map(|()| Some(db)).map_err(io(path)),
        }
    })();
    // The temporary name goes whatever happened (linked, refused, failed).
    let _ = fs::remove_file(&tmp);
    let Some(db) = outcome? else {
        return Ok(None);
    };
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    Ok(Some(db))
}

fn init_tables(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| from_redb(path, e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| from_redb(path, e))?;
        if meta
            .get("format_version")
            .map_err(|e| from_redb(path, e))?
            .is_none()
        {
            meta.insert("format_version", FORMAT_VERSION.to_string().as_bytes())
                .map_err(|e| from_redb(path, e))?;
        }
        txn.open_table(LOG).map_err(|e| from_redb(path, e))?;
        txn.open_table(STREAM_INDEX)
            .map_err(|e| from_redb(path, e))?;
        txn.open_table(INDEX).map_err(|e| from_redb(path, e))?;
        txn.open_table(SNAPSHOTS).map_err(|e| from_redb(path, e))?;
    }
    txn.commit().map_err(|e| from_redb(path, e))?;
    Ok(())
}

fn check_format(db: &impl ReadableDatabase, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_read().map_err(|e| from_redb(path, e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(StoreError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: "none (a redb file that is not a Chronicle database)".into(),
                supported: FORMAT_VERSION,
            });
        }
        Err(e) => return Err(from_redb(path, e)),
    };
    let found = meta
        .get("format_version")
        .map_err(|e| from_redb(path, e))?
        .map(|v| String::from_utf8_lossy(v.value()).into_owned());
    match found {
        Some(v) if v == FORMAT_VERSION.to_string() => Ok(()),
        Some(v) => Err(StoreError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: v,
            supported: FORMAT_VERSION,
        }),
        None => Err(StoreError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: "missing".into(),
            supported: FORMAT_VERSION,
        }),
    }
}
