//! Every path derived from a database's path: the store owns them, so
//! that the files of one database are named in one place. A database at
//! `PATH` is:
//!
//! | path | what |
//! | --- | --- |
//! | `PATH` | the redb file |
//! | `PATH-journal` | its commit journal (crate docs, "commit journal") |
//! | `PATH.outputs/` | step outputs too large for the log, kept in full by the runtime |
//!
//! Copy or move them together.

use std::path::{Path, PathBuf};

fn with_suffix(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The commit journal of the database at `db`: `DB-journal`.
pub fn journal_path(db: &Path) -> PathBuf {
    with_suffix(db, "-journal")
}

/// The folder of full step outputs of the database at `db`: `DB.outputs`.
pub fn outputs_dir(db: &Path) -> PathBuf {
    with_suffix(db, ".outputs")
}

/// Remove the database at `db`: its file and journal (missing files are
/// fine; the outputs folder is left).
pub fn remove_database(db: &Path) {
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_file(journal_path(db));
}
