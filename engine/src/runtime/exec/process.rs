//! `command` (argv, no shell) and `shell` (`/bin/sh -c SCRIPT`) steps.
//!
//! Each attempt runs in its own process group (process-wrap). The process
//! gets `CHRONICLE_RUN_ID`, `CHRONICLE_STEP_ID`, `CHRONICLE_ATTEMPT`,
//! `CHRONICLE_IDEMPOTENCY_KEY`, one `INPUT_<KEY>` variable per input key
//! (key upper-cased, other characters than letters and digits as `_`;
//! strings as is, other values as JSON; none for a value over
//! [`ENV_VALUE_LIMIT`]), the whole input as JSON on stdin, and the step's
//! working directory. The input JSON is an in-memory file (Linux `memfd`;
//! a pipe where that is refused): the process reads it when it likes, and
//! one that never reads it holds nothing up. When the leader exits, or the
//! attempt is killed (timeout, cancel), the whole group is killed: no
//! orphan survives a step.

use std::process::Stdio;
use std::time::Instant;

use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::{AttemptFuture, AttemptRequest, Executor, OutputSink, failure};
use crate::decide::AttemptResult;
use crate::model::ErrorKind;
use crate::runtime::processes::{ProcessLedger, key};

/// Runs commands and shell scripts.
#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    /// Where captured output goes.
    pub sink: OutputSink,
    /// Where each attempt's process group is recorded for recovery
    /// (`None`: not recorded, e.g. in executor tests).
    pub ledger: Option<ProcessLedger>,
    /// Set `PR_SET_PDEATHSIG` on each attempt's leader (see
    /// `die_with_engine`). Default off: the hook makes every spawn a fork
    /// (measured: `shell_step_overhead` 4.5–6.2 with it against 1.5–1.7
    /// without, `chronicle bench steps`, 2026-11-30), and it reaches the
    /// leader only — recovery's kill of the recorded group reaches all.
    pub parent_death_signal: bool,
}

/// Longest input value passed as an `INPUT_<KEY>` variable, bytes (64 KiB).
/// Longer values reach the process on stdin only: Linux refuses to start
/// a process with one environment string over 128 KiB (`MAX_ARG_STRLEN`,
/// `E2BIG`), and the whole environment shares the argument space.
pub const ENV_VALUE_LIMIT: usize = 64 * 1024;

/// The input JSON as an in-memory file positioned at its start, for
/// stdin; `None` where `memfd_create` is refused (then a pipe carries it).
/// Measured against a pipe with a scratch probe (`true` spawned 300 times
/// each way, 2026-11-21): 658–674 µs per process against 689–696 µs —
/// no pipe to register with the runtime and no write to wait for.
fn input_file(json: &[u8]) -> Option<std::fs::File> {
    use std::io::{Seek, Write};
    #[cfg(test)]
    if tests::FORCE_PIPE.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    let flags = nix::sys::memfd::MFdFlags::MFD_CLOEXEC;
    let fd = nix::sys::memfd::memfd_create(c"chronicle-input", flags).ok()?;
    let mut f = std::fs::File::from(fd);
    f.write_all(json).ok()?;
    f.rewind().ok()?;
    Some(f)
}

/// `INPUT_<KEY>` for an input key.
pub fn input_var(key: &str) -> String {
    let k: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("INPUT_{k}")
}

/// Ask the kernel to SIGKILL the attempt's leader when the engine's thread
/// that spawned it dies (`PR_SET_PDEATHSIG`): a second line, after the
/// recorded process group that recovery kills (`runtime::processes`).
/// Caveats (prctl(2)): the signal follows the spawning *thread*, which is
/// a runtime worker that lives as long as the engine; it reaches the leader
/// only, not processes the leader forks; and it is kept across `execve`.
/// If the engine died before the call, the child stops before `exec`.
///
/// Cost: a `pre_exec` hook makes the standard library fork instead of
/// `posix_spawn`; see [`ProcessExecutor::parent_death_signal`].
#[allow(unsafe_code)]
fn die_with_engine(cmd: &mut tokio::process::Command) {
    let engine = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before `exec`. It only
    // makes two system calls (prctl, getppid), both async-signal-safe, and
    // builds its error from a raw errno: it allocates nothing and takes no
    // lock, as code between fork and exec in a threaded program must.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != engine {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ESRCH as i32,
                ));
            }
            Ok(())
        });
    }
}

fn kill_group(pgid: Option<u32>) {
    if let Some(id) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // The group may already be gone (ESRCH): nothing to do then.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(id),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Most bytes of one stream kept in memory (and in the full-output file);
/// the rest is read, counted and dropped so a chatty step cannot exhaust
/// the engine's memory.
pub const KEEP_LIMIT: usize = 64 << 20;

/// Read a pipe to its end: the first [`KEEP_LIMIT`] bytes and the total.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> (Vec<u8>, u64) {
    let mut buf = Vec::new();
    let mut total = 0u64;
    if let Some(mut r) = r {
        // Most steps print little: start small, grow while output comes.
        let mut chunk = vec![0u8; 4096];
        while let Ok(n) = r.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            total += n as u64;
            let room = KEEP_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..n.min(room)]);
            if n == chunk.len() && chunk.len() < 64 * 1024 {
                chunk.resize(chunk.len() * 4, 0);
            }
        }
    }
    (buf, total)
}

impl Executor for ProcessExecutor {
    fn run(&self, req: AttemptRequest, kill: oneshot::Receiver<()>) -> AttemptFuture {
        let sink = self.sink.clone();
        let ledger = self.ledger.clone();
        let parent_death_signal = self.parent_death_signal;
        Box::pin(async move {
            let started = Instant::now();
            let ms = |t: Instant| t.elapsed().as_millis() as u64;
            let mut cmd = if let Some(argv) = &req.exec.command {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            } else if let Some(script) = &req.exec.shell {
                let mut c = tokio::process::Command::new("/bin/sh");
                c.arg("-c").arg(script);
                c
            } else {
                return failure(ErrorKind::Permanent, "not a command or shell step", 0);
            };
            cmd.current_dir(&req.workdir)
                .env("CHRONICLE_RUN_ID", req.run_id.to_string())
                .env("CHRONICLE_STEP_ID", req.step.as_str())
                .env("CHRONICLE_ATTEMPT", req.attempt.to_string())
                .env("CHRONICLE_IDEMPOTENCY_KEY", &req.idempotency_key)
                .env(
                    "TRACEPARENT",
                    req.traceparent.as_deref().unwrap_or_default(),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(dl) = req.deadline {
                cmd.env("CHRONICLE_DEADLINE", dl.to_rfc3339());
            }
            if let Value::Object(m) = &req.input {
                for (k, v) in m {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    if text.len() <= ENV_VALUE_LIMIT {
                        cmd.env(input_var(k), text);
                    }
                }
            }
            for name in &req.hidden_env {
                cmd.env_remove(name);
            }
            for (k, v) in &req.env {
                cmd.env(k, v);
            }
            let stdin_json = serde_json::to_vec(&req.input).unwrap_or_default();
            let stdin_json = match input_file(&stdin_json) {
                Some(file) => {
                    cmd.stdin(file);
                    None
                }
                None => {
                    cmd.stdin(Stdio::piped());
                    Some(stdin_json)
                }
            };
            if parent_death_signal {
                die_with_engine(&mut cmd);
            }
            // The watchdog runs before the group exists (it is told of the
            // group right after the spawn, with no await in between).
            if let Some(l) = &ledger {
                l.watchdog.ready().await;
            }
            let mut wrap = CommandWrap::from(cmd);
            wrap.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
            let mut child = match wrap.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let what = req
                        .exec
                        .command
                        .as_ref()
                        .map(|a| a[0].clone())
                        .unwrap_or_else(|| "/bin/sh".into());
                    return failure(
                        ErrorKind::Permanent,
                        sink.secrets.redact(&format!("cannot start {what}: {e}")),
                        ms(started),
                    );
                }
            };
            let pgid = child.id();
            let recorded = match (&ledger, pgid) {
                (Some(ledger), Some(pgid)) => {
                    ledger.started(key(&req.run_id.to_string(), &req.step, req.attempt), pgid)
                }
                _ => None,
            };
            let stdin = child.stdin().take();
            // Input, output and exit are driven together in this task (no
            // task per pipe: each would cost a spawn and wake-ups per step).
            let feed = async move {
                if let (Some(mut s), Some(json)) = (stdin, stdin_json) {
                    // A process that exits without reading its input
                    // closes the pipe: the write ends with an error then.
                    let _ = s.write_all(&json).await;
                    let _ = s.shutdown().await;
                }
            };
            let stdout_pipe = child.stdout().take();
            let stderr_pipe = child.stderr().take();
            let exit = async {
                let status = tokio::select! {
                    s = child.wait() => Some(s),
                    _ = kill => None,
                };
                // Leader gone or kill asked: take the rest of the group
                // with it (which also closes the pipes the group held).
                kill_group(pgid);
                if let (Some(l), Some(id)) = (&ledger, pgid) {
                    l.watchdog.release(id);
                }
                if status.is_none() {
                    let _ = Box::into_pin(child.kill()).await;
                }
                status
            };
            let (status, (), (stdout, stdout_total), (stderr, stderr_total)) =
                tokio::join!(exit, feed, read_all(stdout_pipe), read_all(stderr_pipe));
            // The group's record is written before the outcome that
            // deletes it (else a late record would outlive the attempt).
            if let Some(r) = recorded {
                let _ = r.await;
            }
            let duration_ms = ms(started);
            let stderr_c = (!stderr.is_empty()).then(|| sink.capture(&stderr, stderr_total));
            let Some(status) = status else {
                return AttemptResult::Failed {
                    kind: ErrorKind::Canceled,
                    message: "killed: the process group was terminated".into(),
                    exit_code: None,
                    http_status: None,
                    duration_ms,
                    stderr: stderr_c,
                };
            };
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    return failure(
                        ErrorKind::Transient,
                        format!("waiting for the process failed: {e}"),
                        duration_ms,
                    );
                }
            };
            let stdout_c = sink.capture(&stdout, stdout_total);
            if status.success() {
                let output = match serde_json::from_str::<Value>(stdout_c.text.trim()) {
                    Ok(v) if !stdout_c.truncated && !stdout_c.text.trim().is_empty() => v,
                    _ => json!({ "stdout": stdout_c.text }),
                };
                AttemptResult::Succeeded {
                    output,
                    duration_ms,
                    stdout: (!stdout.is_empty()).then_some(stdout_c),
                    stderr: stderr_c,
                }
            } else {
                use std::os::unix::process::ExitStatusExt;
                let (code, message) = match (status.code(), status.signal()) {
                    (Some(c), _) => (Some(c), format!("exited with code {c}")),
                    (None, Some(sig)) => (None, format!("killed by signal {sig}")),
                    _ => (None, "ended abnormally".to_string()),
                };
                let tail = stderr_c
                    .as_ref()
                    .map(|c| last_line(&c.text))
                    .unwrap_or_default();
                let message = if tail.is_empty() {
                    message
                } else {
                    format!("{message}: {tail}")
                };
                AttemptResult::Failed {
                    kind: ErrorKind::Transient,
                    message,
                    exit_code: code,
                    http_status: None,
                    duration_ms,
                    stderr: stderr_c,
                }
            }
        })
    }
}

fn last_line(s: &str) -> String {
    let l = s
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    l.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use serde_json::{Value, json};
    use tokio::sync::oneshot;

    use super::ProcessExecutor;
    use crate::decide::AttemptResult;
    use crate::ids::RunId;
    use crate::model::ExecSpec;
    use crate::runtime::exec::{AttemptRequest, Executor, OutputSink, Secrets};

    /// Makes `input_file` refuse, as where `memfd_create` is not allowed.
    pub(super) static FORCE_PIPE: AtomicBool = AtomicBool::new(false);

    async fn run(shell: &str, input: Value) -> AttemptResult {
        let exec = ProcessExecutor {
            ledger: None,
            parent_death_signal: false,
            sink: OutputSink {
                dir: None,
                secrets: Secrets::default(),
            },
        };
        let req = AttemptRequest {
            hidden_env: Vec::new(),
            run_id: RunId(uuid::Uuid::from_u128(1)),
            step: "s".into(),
            attempt: 1,
            idempotency_key: "run:s".into(),
            traceparent: None,
            input,
            exec: ExecSpec {
                shell: Some(shell.into()),
                ..ExecSpec::default()
            },
            deadline: None,
            workdir: std::env::temp_dir(),
            env: BTreeMap::new(),
        };
        let (_keep, never) = oneshot::channel::<()>();
        exec.run(req, never).await
    }

    /// The pipe that carries the input where no in-memory file can: the
    /// JSON arrives whole, and an input the process never reads (larger
    /// than a pipe's buffer) holds nothing up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipe_fallback_carries_the_input() {
        FORCE_PIPE.store(true, Ordering::Relaxed);
        // More than a pipe's 64 KiB buffer: the write waits for the reader.
        let input = json!({"n": 2, "text": "y".repeat(100_000)});
        let counted = run("wc -c", input.clone()).await;
        let ignored = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            run("exit 0", json!({"blob": "z".repeat(1 << 20)})),
        )
        .await;
        FORCE_PIPE.store(false, Ordering::Relaxed);
        let sent = serde_json::to_vec(&input).unwrap().len();
        match counted {
            AttemptResult::Succeeded { output, .. } => assert_eq!(output, json!(sent)),
            other => panic!("expected success, got {other:?}"),
        }
        assert!(
            matches!(ignored, Ok(AttemptResult::Succeeded { .. })),
            "{ignored:?}"
        );
    }
}
