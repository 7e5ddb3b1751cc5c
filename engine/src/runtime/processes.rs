//! The process groups of running attempts, recorded durably so that
//! recovery kills what a crashed engine left running before it retries a
//! step (so that no two attempts of a step ever run at once).
//!
//! Index `processes`: key `RUN/STEP/ATTEMPT`, value JSON
//! [`ProcessRecord`]. A record is put when an attempt's process starts
//! (written in the background: it shares a group commit with other writes
//! and is durable within one commit; the process does not wait for it) and
//! deleted in the same write as the attempt's outcome. Whatever records a
//! crash leaves behind, [`kill_leftovers`] finds at the next recovery: it
//! kills each group that is still the same one (same boot, and the leader
//! either gone or started at the recorded time — against pid reuse), waits
//! until the group is empty, and deletes the records.
//!
//! A second line, for the time between a crash and the recovery: a
//! watchdog process ([`Watchdog`]), started with the engine's first
//! process attempt, is told each group as it starts and ends over a pipe
//! the engine holds; when the engine dies — however, SIGKILL included —
//! the kernel closes the pipe and the watchdog kills every group it was
//! told of and not told had ended. It is `awk` (the one program the
//! engine's machines are sure to have that reads lines in blocks and forks
//! nothing per line) and costs two small pipe writes per attempt: no
//! difference above noise in `chronicle bench steps`. And, opt-in (`EngineBuilder::parent_death_signal`), each
//! attempt's leader can ask the kernel to kill it when the engine's thread
//! that started it dies (`PR_SET_PDEATHSIG`, see `exec::process`): off by
//! default because it makes every spawn a fork (~3× a short step's cost),
//! and it reaches the leader only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_store::{IndexOp, Store, WeakStore, WriteRequest};
use serde::{Deserialize, Serialize};

use super::engine::EngineError;

/// The index of attempts' process groups.
pub const PROCESSES: &str = "processes";

/// How long recovery waits for a killed group to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One attempt's process group, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The process group id (= the leader's pid).
    pub pgid: u32,
    /// The leader's start time, clock ticks after boot (`/proc/PID/stat`
    /// field 22); 0 if unknown.
    pub start_ticks: u64,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): after a
    /// reboot nothing of the record's can still run.
    pub boot_id: String,
    /// The engine process that started it, and its start time: a record
    /// of this very process is a live attempt, never killed by recovery.
    pub engine_pid: u32,
    /// The engine's start time, clock ticks after boot.
    pub engine_start_ticks: u64,
}

/// The key of an attempt's record.
pub fn key(run: &str, step: &str, attempt: u32) -> String {
    format!("{run}/{step}/{attempt}")
}

/// Remove an attempt's record (in the write of its outcome).
pub fn delete(run: &str, step: &str, attempt: u32) -> IndexOp {
    IndexOp::Delete {
        index: PROCESSES.into(),
        key: key(run, step, attempt),
    }
}

/// The start time of process `pid` in clock ticks after boot, if it lives.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parens).
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The watchdog's program (POSIX `awk`): it reads `+ PGID` and `- PGID`
/// lines until end of input (the engine closed the pipe, or died), then
/// SIGKILLs every group still listed. awk reads its input in blocks and
/// forks nothing per line: a `sh` loop (which reads a pipe a byte at a time)
/// with a `sed` per line cost the engine's steps ~15 % on two cores, and
/// `sh` builtins alone ~7 % (`chronicle bench steps`, alternated with the
/// watchdog off, 2026-11-30).
const WATCHDOG_PROGRAM: &str = r#"
$1 == "+" { live[$2] = 1 }
$1 == "-" { delete live[$2] }
END { for (id in live) system("kill -s KILL -- -" id " 2>/dev/null") }
"#;

/// A process that kills the attempts' process groups when the engine dies
/// (see the module docs). Started on first use, by a thread of its own so
/// that no step waits for the spawn of `awk`: lines sent meanwhile are
/// kept and written once it runs. Clones share it. A watchdog that cannot
/// start or has died only costs this second line: writes to it are best
/// effort.
#[derive(Clone, Debug, Default)]
pub struct Watchdog {
    state: Arc<Mutex<WatchdogState>>,
    /// Never start one (`EngineBuilder::watchdog(false)`).
    off: bool,
}

#[derive(Debug, Default)]
struct WatchdogState {
    pipe: Option<std::process::ChildStdin>,
    /// A thread is starting it.
    starting: bool,
    /// Lines sent while it starts.
    pending: Vec<u8>,
}

impl Watchdog {
    /// A watchdog that starts on first use, or none at all if `!on`.
    pub fn new(on: bool) -> Self {
        Self {
            state: Default::default(),
            off: !on,
        }
    }

    /// Start it now, in the background (an engine that will run steps
    /// calls this before opening its store, so the spawn overlaps the
    /// open's disk waits instead of a step's).
    pub fn prestart(&self) {
        if self.off {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.pipe.is_none() {
            self.start_in_background(&mut st);
        }
    }

    fn send(&self, line: String) {
        use std::io::Write;
        if self.off {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = st.pipe.as_mut() {
            if p.write_all(line.as_bytes()).is_ok() {
                return;
            }
            // It died: start another for the groups from now on.
            st.pipe = None;
        }
        st.pending.extend_from_slice(line.as_bytes());
        self.start_in_background(&mut st);
    }

    /// Start it from a thread of its own unless one is starting; lines
    /// sent meanwhile wait in `pending`.
    fn start_in_background(&self, st: &mut WatchdogState) {
        use std::io::Write;
        if !st.starting {
            st.starting = true;
            let state = self.state.clone();
            std::thread::spawn(move || {
                let pipe = Self::start();
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.starting = false;
                let pending = std::mem::take(&mut st.pending);
                st.pipe = pipe.and_then(|mut p| p.write_all(&pending).is_ok().then_some(p));
            });
        }
    }

    fn start() -> Option<std::process::ChildStdin> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("awk")
            .arg(WATCHDOG_PROGRAM)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own group: a terminal's Ctrl-C to the engine's group
            // does not take it away.
            .process_group(0)
            .spawn()
            .map_err(|e| tracing::warn!(error = %e, "cannot start the process watchdog"))
            .ok()?;
        let stdin = child.stdin.take();
        // Reaped by a thread, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        stdin
    }

    /// Wait until the watchdog runs (started now if it is not starting),
    /// at most 2 s; returns at once when it runs already, or is off. An
    /// attempt's group spawned before the watchdog runs would be told to
    /// it only once it runs — and an engine killed meanwhile would leave
    /// that group running, found only by the next recovery (the first
    /// attempts of a worker killed right after its start, under load).
    pub async fn ready(&self) {
        if self.off {
            return;
        }
        let started = Instant::now();
        let mut waited = false;
        loop {
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.pipe.is_some() {
                    return;
                }
                if !st.starting {
                    if waited {
                        // The start this call waited for failed: the
                        // attempt does not wait for another.
                        return;
                    }
                    self.start_in_background(&mut st);
                }
                waited = true;
            }
            if started.elapsed() >= Duration::from_secs(2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// An attempt's process group started.
    pub fn watch(&self, pgid: u32) {
        self.send(format!("+ {pgid}\n"));
    }

    /// An attempt's process group ended (or was killed).
    pub fn release(&self, pgid: u32) {
        self.send(format!("- {pgid}\n"));
    }
}

/// Records the process groups of attempts this engine starts. It does not
/// keep the store open: attempts that end after their engine closed the
/// store record nothing (their records are deleted by the outcome's write
/// or found by the next recovery).
#[derive(Clone, Debug)]
pub struct ProcessLedger {
    store: WeakStore,
    /// Told of every group too.
    pub watchdog: Watchdog,
    /// This boot and this engine process (read once, not per attempt).
    boot_id: Arc<str>,
    engine_pid: u32,
    engine_start_ticks: u64,
}

impl ProcessLedger {
    /// A ledger writing to `store`, telling `watchdog`.
    pub fn new(store: &Store, watchdog: Watchdog) -> Self {
        let me = std::process::id();
        Self {
            store: store.downgrade(),
            watchdog,
            boot_id: boot_id().into(),
            engine_pid: me,
            engine_start_ticks: start_ticks(me).unwrap_or(0),
        }
    }

    /// The attempt `key` started its process group `pgid`: record it in
    /// the background (errors are logged: the watchdog still covers the
    /// group). The record is durable within one commit of the start, so
    /// that `recover` finds the group even when the watchdog died too.
    /// Returns the recording task: the attempt awaits it before its outcome
    /// is written (that write deletes the record, so it must come after).
    pub fn started(&self, key: String, pgid: u32) -> Option<tokio::task::JoinHandle<()>> {
        self.watchdog.watch(pgid);
        let record = ProcessRecord {
            pgid,
            start_ticks: start_ticks(pgid).unwrap_or(0),
            boot_id: self.boot_id.to_string(),
            engine_pid: self.engine_pid,
            engine_start_ticks: self.engine_start_ticks,
        };
        let store = self.store.upgrade()?;
        let value = serde_json::to_vec(&record).expect("a plain struct serializes");
        Some(tokio::spawn(async move {
            let req = WriteRequest {
                index: vec![IndexOp::Put {
                    index: PROCESSES.into(),
                    key,
                    value,
                }],
                ..Default::default()
            };
            if let Err(e) = store.write(req).await {
                tracing::warn!(error = %e, "cannot record an attempt's process group");
            }
        }))
    }
}

/// Whether group `pgid` has a member that is not a zombie. (A killed
/// member stays a zombie until its parent reaps it — and a parent that is
/// stopped, say an engine paused with SIGSTOP, reaps nothing: such a
/// group runs nothing any more.)
fn group_alive(pgid: u32) -> bool {
    let Ok(id) = i32::try_from(pgid) else {
        return false;
    };
    if nix::sys::signal::killpg(nix::unistd::Pid::from_raw(id), None).is_err() {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // After the command's closing parenthesis: state, ppid, pgrp.
            let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            let state = rest.next();
            let pgrp = rest.nth(1).and_then(|p| p.parse::<u32>().ok());
            pgrp == Some(pgid) && state != Some("Z")
        })
}

/// Whether `rec`'s group, if alive, is still the attempt's group.
fn still_ours(rec: &ProcessRecord, boot: &str) -> bool {
    if rec.boot_id != boot || rec.pgid <= 1 {
        return false;
    }
    match start_ticks(rec.pgid) {
        // The leader lives: ours only if it is the same process.
        Some(t) => rec.start_ticks != 0 && t == rec.start_ticks,
        // The leader is gone: a live group with its id is ours, since a
        // pid is not given to a new process while a group still holds it.
        None => true,
    }
}

/// Kill every process group a previous engine process left running
/// (records of this process are skipped) — of the runs `only`, when given
/// (on a shared database: the runs this worker took over, never another
/// live worker's) — wait until each is gone, and delete the records.
/// Returns the groups killed. A record of another machine's boot cannot
/// be killed from here: it is deleted (that machine's watchdog killed its
/// groups when its engine died).
///
/// Errors: storage errors reading or deleting the records.
pub async fn kill_leftovers(
    store: &Store,
    only: Option<&[crate::ids::RunId]>,
) -> Result<Vec<(String, u32)>, EngineError> {
    let rows = match only {
        None => store.index_scan(PROCESSES, "")?,
        Some(runs) => {
            let mut rows = Vec::new();
            for run in runs {
                rows.extend(store.index_scan(PROCESSES, &format!("{run}/"))?);
            }
            rows
        }
    };
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let me = std::process::id();
    let my_start = start_ticks(me).unwrap_or(0);
    let boot = boot_id();
    let mut killed = Vec::new();
    let mut done = Vec::new();
    for (key, value) in rows {
        let Ok(rec) = serde_json::from_slice::<ProcessRecord>(&value) else {
            done.push(key);
            continue;
        };
        if rec.engine_pid == me && rec.engine_start_ticks == my_start && rec.boot_id == boot {
            continue; // a live attempt of this engine
        }
        if still_ours(&rec, &boot) && group_alive(rec.pgid) {
            let id = nix::unistd::Pid::from_raw(rec.pgid as i32);
            let _ = nix::sys::signal::killpg(id, nix::sys::signal::Signal::SIGKILL);
            let t = Instant::now();
            while group_alive(rec.pgid) && t.elapsed() < KILL_WAIT {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if group_alive(rec.pgid) {
                tracing::error!(pgid = rec.pgid, attempt = %key, "a killed process group of an earlier attempt is still alive");
            }
            tracing::warn!(pgid = rec.pgid, attempt = %key, "killed the process group an earlier engine left running");
            killed.push((key.clone(), rec.pgid));
        }
        done.push(key);
    }
    if !done.is_empty() {
        store
            .write(WriteRequest {
                index: done
                    .into_iter()
                    .map(|key| IndexOp::Delete {
                        index: PROCESSES.into(),
                        key,
                    })
                    .collect(),
                ..Default::default()
            })
            .await?;
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    use super::*;

    /// SIGKILL's number on Linux.
    const SIGKILL: i32 = 9;

    /// A process group of its own (`sleep 30`), as an attempt's is.
    fn group() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep")
    }

    /// Wait (at most 5 s) until `child` ended; how it ended.
    async fn ended(child: &mut std::process::Child) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the group still runs after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the executor relies on (it awaits `ready` before spawning a
    /// group): once `ready` returns, the watchdog runs, a group told to it
    /// goes into its pipe at once — nothing is left in the engine's memory
    /// for a SIGKILL to lose — and the group is killed when the engine's
    /// end of the pipe closes.
    #[tokio::test]
    async fn after_ready_a_group_goes_to_the_running_watchdog_and_dies_with_the_engine() {
        let w = Watchdog::new(true);
        w.ready().await;
        let mut child = group();
        w.watch(child.id());
        {
            let st = w.state.lock().unwrap();
            assert!(st.pipe.is_some(), "the watchdog runs once ready returns");
            assert!(
                st.pending.is_empty(),
                "the group was written to the pipe, not kept in memory"
            );
        }
        drop(w); // the engine's end of the pipe closes, as when it dies
        assert_eq!(ended(&mut child).await.signal(), Some(SIGKILL));
    }

    /// The window `ready` closes: told of a group before it runs, the
    /// watchdog keeps the line in the engine's memory until its start
    /// completes — lost, should the engine die meanwhile. Once it runs,
    /// the kept line is written and the group is killed all the same.
    #[tokio::test]
    async fn a_group_told_before_the_watchdog_runs_waits_in_memory() {
        let w = Watchdog::new(true);
        let mut child = group();
        w.watch(child.id());
        {
            let st = w.state.lock().unwrap();
            assert!(st.pipe.is_none() && st.starting, "its start has just begun");
            assert!(!st.pending.is_empty(), "the line waits in memory");
        }
        w.ready().await;
        assert!(w.state.lock().unwrap().pending.is_empty());
        drop(w);
        assert_eq!(ended(&mut child).await.signal(), Some(SIGKILL));
    }

    /// Off (`EngineBuilder::watchdog(false)`): `ready` returns at once and
    /// nothing starts.
    #[tokio::test]
    async fn ready_returns_at_once_when_the_watchdog_is_off() {
        let w = Watchdog::new(false);
        let t = Instant::now();
        w.ready().await;
        w.watch(1);
        assert!(t.elapsed() < Duration::from_millis(100));
        let st = w.state.lock().unwrap();
        assert!(st.pipe.is_none() && !st.starting && st.pending.is_empty());
    }
}
