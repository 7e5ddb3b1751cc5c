//! Every path derived from a database's path: the store owns them, so
//! that the files of one database are named in one place. A database at
//! `PATH` is:
//!
//! | path | what |
//! | --- | --- |
//! | `PATH` | the redb file |
//! | `PATH-journal` | its commit journal (crate docs, "commit journal") |
//! | `PATH.outputs/` | step outputs too large for the log, kept in full by the runtime |
//! | `PATH-server.json` | the discovery file of a `chronicle serve` holding the database: its URL and pid |
//! | `PATH-token` | the API token `chronicle serve` generated (mode 0600), when `CHRONICLE_TOKEN` is not set |
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

/// The discovery file of a server holding the database at `db`:
/// `DB-server.json` (JSON: `url`, `pid`, `started_at`, `tls_cert`).
pub fn server_path(db: &Path) -> PathBuf {
    with_suffix(db, "-server.json")
}

/// The API token file of the database at `db`: `DB-token`.
pub fn token_path(db: &Path) -> PathBuf {
    with_suffix(db, "-token")
}

/// Remove the database at `db`: its file and journal (missing files are
/// fine; the outputs folder is left).
pub fn remove_database(db: &Path) {
    let _ = std::fs::remove_file(db);
    let _ = std::fs::remove_file(journal_path(db));
}
