//! Running the binary in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_chronicle");

/// The repository root (examples live there).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// A PostgreSQL database (URL) instead of the redb file `db()`.
    pub url: Option<String>,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            url: None,
        }
    }
    /// Commands on a fresh PostgreSQL database of the test server.
    pub fn postgres() -> Self {
        Self {
            url: Some(crate::workers::fresh_postgres()),
            ..Self::new()
        }
    }
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("chronicle.redb")
    }
    /// What `CHRONICLE_DB` is: the PostgreSQL URL or the redb file's path.
    pub fn db_arg(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => self.db().to_string_lossy().into_owned(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir.path())
            .env("CHRONICLE_DB", self.db_arg())
            .env_remove("RUST_LOG")
            .env_remove("CHRONICLE_FLAKY");
        c
    }
    /// Run with `args` in the repository root (for examples).
    pub fn run_in_root(&self, args: &[&str]) -> Out {
        let mut c = self.cmd();
        c.current_dir(root()).args(args);
        Out::from(c.output().unwrap())
    }
    pub fn run(&self, args: &[&str]) -> Out {
        let mut c = self.cmd();
        c.args(args);
        Out::from(c.output().unwrap())
    }
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
    /// The run id printed on the last line (`run ID STATUS`).
    pub fn run_id(&self) -> String {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("run "))
            .unwrap_or_else(|| panic!("no run line: {self:?}"));
        line.split_whitespace().nth(1).unwrap().to_string()
    }
}

/// A stable digest of a file's bytes (to prove a database is unchanged).
pub fn digest(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

/// Wait until `path` exists (a step's process wrote it); at most 20 s.
pub fn wait_for(path: &Path) {
    let t = std::time::Instant::now();
    while !path.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Pids of live (not zombie) processes whose command line holds `marker`.
pub fn marked_processes(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z");
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (!zombie && String::from_utf8_lossy(&cmdline).contains(marker)).then_some(pid)
        })
        .collect()
}

/// SIGKILL every process whose command line holds `marker` (a test's own
/// step processes, left running on purpose).
pub fn kill_marked(marker: &str) {
    for pid in marked_processes(marker) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A `chronicle serve` of an [`Env`]'s database, as a child process.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    pub token: String,
    /// The web UI's sign-in link `serve` printed on its second line.
    pub login: String,
    pub http: reqwest::blocking::Client,
}

impl Env {
    /// Start `chronicle serve --listen 127.0.0.1:0 EXTRA...` on this
    /// database; returns once it is listening and has recovered.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_from(self.dir.path(), extra)
    }

    /// [`Env::serve`] with the server's working directory at `cwd` (its
    /// steps run there: the repository root for the examples).
    pub fn serve_from(&self, cwd: &Path, extra: &[&str]) -> Server {
        self.serve_with(cwd, &[], extra)
    }

    /// [`Env::serve_from`] with extra environment variables (secrets).
    pub fn serve_with(&self, cwd: &Path, vars: &[(&str, &str)], extra: &[&str]) -> Server {
        use std::io::BufRead;
        let mut c = self.cmd();
        c.envs(vars.iter().copied());
        c.current_dir(cwd)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {line:?}"))
            .to_string();
        let mut second = String::new();
        out.read_line(&mut second).unwrap();
        let login = second
            .trim()
            .strip_prefix("web UI: ")
            .unwrap_or_else(|| panic!("second line {second:?}"))
            .to_string();
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        let token = std::fs::read_to_string(self.dir.path().join("chronicle.redb-token"))
            .unwrap()
            .trim()
            .to_string();
        let s = Server {
            child,
            url,
            token,
            login,
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let t = std::time::Instant::now();
        while s
            .http
            .get(format!("{}/readyz", s.url))
            .send()
            .map(|r| r.status().as_u16())
            .ok()
            != Some(200)
        {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(30),
                "never ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        s
    }
}

impl Server {
    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .unwrap()
    }
    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::blocking::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .unwrap()
    }
    /// SIGTERM, and the exit status (within 60 s).
    pub fn term(mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(60),
                "no exit after SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    /// SIGKILL (the crash path).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
