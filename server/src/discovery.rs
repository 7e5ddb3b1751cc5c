//! The discovery file `DB-server.json`: how a CLI finds the server that
//! holds a database. Written once the server listens, removed at a clean
//! exit; after a crash it is stale — its pid is gone — and ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The content of `DB-server.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// Base URL, `http://HOST:PORT` (or `https://`).
    pub url: String,
    /// The server's process id.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// With TLS: the certificate file (PEM) clients trust for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
}

impl Discovery {
    /// Write atomically (temporary file, then rename) beside `db`.
    ///
    /// Errors: the OS error, with the path.
    pub fn write(&self, db: &Path) -> Result<(), String> {
        if crate::auth::is_shared(db) {
            // Many servers share one PostgreSQL database: clients name a
            // server's URL themselves.
            return Ok(());
        }
        let path = chronicle_store::server_path(db);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("plain data serializes");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write the discovery file {}: {e}", path.display()))
    }

    /// Remove `db`'s discovery file if it is this process's.
    pub fn remove(db: &Path) {
        if let Some(d) = Self::read(db)
            && d.pid == std::process::id()
        {
            let _ = std::fs::remove_file(chronicle_store::server_path(db));
        }
    }

    /// The discovery file of `db`, whatever its pid (None when absent or
    /// unreadable).
    pub fn read(db: &Path) -> Option<Self> {
        if crate::auth::is_shared(db) {
            return None;
        }
        let text = std::fs::read_to_string(chronicle_store::server_path(db)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The live server of `db`: the discovery file when its pid is a
    /// running process (a stale file left by a crash gives None).
    pub fn live(db: &Path) -> Option<Self> {
        let d = Self::read(db)?;
        pid_alive(d.pid).then_some(d)
    }
}

/// Whether a process with `pid` exists (signal 0: EPERM means it exists
/// but belongs to someone else).
pub fn pid_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    match kill(Pid::from_raw(p), None) {
        Ok(()) => !is_zombie(pid),
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// A zombie (dead, not yet reaped) counts as gone.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_whose_pid_is_gone_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("d.redb");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let d = Discovery {
            url: "http://127.0.0.1:1".into(),
            pid: dead,
            started_at: "2026-11-30T00:00:00Z".into(),
            tls_cert: None,
        };
        d.write(&db).unwrap();
        assert_eq!(Discovery::read(&db), Some(d.clone()));
        assert_eq!(Discovery::live(&db), None, "pid {dead} has exited");
        let mine = Discovery {
            pid: std::process::id(),
            ..d
        };
        mine.write(&db).unwrap();
        assert_eq!(Discovery::live(&db), Some(mine));
        Discovery::remove(&db);
        assert!(!chronicle_store::server_path(&db).exists());
    }
}
