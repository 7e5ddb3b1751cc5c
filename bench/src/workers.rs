//! `chronicle bench workers --db postgres://…`: 3-step runs executed by
//! 1, 2 and 4 `chronicle worker` processes on one PostgreSQL, each count on
//! a fresh database, against the server's own commit latency measured in
//! the same run.
//!
//! The workload is DBOS's 3-step one: three no-op steps in a chain
//! (`function: chronicle.noop`, built into the CLI's engines), 32 runs in
//! flight, submitted by this process (offered to the workers) and
//! followed through the live feed (LISTEN/NOTIFY).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_engine::runtime::{Engine, EngineBuilder, EngineError};

use crate::pg::{CommitProbe, drop_database, fresh_database};

/// The figures; `--json` prints exactly these keys. Maps are keyed by the
/// number of worker processes ("1", "2", "4").
#[derive(Clone, Debug, Serialize)]
pub struct WorkersBench {
    /// Median latency of one durable one-row commit on this server, ms:
    /// the baseline (a serial writer commits at most `1000 / pg_commit_ms`
    /// times a second).
    pub pg_commit_ms: f64,
    /// 3-step runs per second with 32 in flight, by worker processes.
    pub runs_per_s_32: BTreeMap<String, f64>,
    /// Group commits of the log per run (transactions that appended),
    /// by worker processes.
    pub write_commits_per_run: BTreeMap<String, f64>,
    /// Every committed transaction per run, reads and lease renewals too
    /// (`pg_stat_database.xact_commit`), by worker processes.
    pub commits_per_run: BTreeMap<String, f64>,
    /// `runs_per_s_32["2"] / runs_per_s_32["1"]` (target ≥ 1).
    pub scaling_2: f64,
    /// `runs_per_s_32["4"] / runs_per_s_32["1"]`.
    pub scaling_4: f64,
    /// Runs measured per figure (after 64 warm-up runs).
    pub runs: usize,
}

fn workflow() -> Workflow {
    parse_definition(
        "bench.yaml",
        "name: bench\nsteps:\n  - id: a\n    function: chronicle.noop\n  - id: b\n    needs: [a]\n    function: chronicle.noop\n  - id: c\n    needs: [b]\n    function: chronicle.noop\n",
    )
    .expect("the bench workflow is valid")
}

/// Runs that ended, from the live feed: a waiter per run, or the runs
/// that ended before anyone waited.
#[derive(Clone, Default)]
#[allow(clippy::type_complexity)]
struct Tracker(
    Arc<
        Mutex<(
            HashMap<uuid::Uuid, oneshot::Sender<bool>>,
            HashMap<uuid::Uuid, bool>,
        )>,
    >,
);

impl Tracker {
    fn start(engine: &Engine) -> Self {
        let t = Self::default();
        let mut feed = engine.subscribe();
        let tracker = t.clone();
        tokio::spawn(async move {
            while let Ok(batch) = feed.recv().await {
                for env in batch.iter() {
                    let Some(run) = env.stream.as_run() else {
                        continue;
                    };
                    let Ok(p) = serde_json::from_slice::<Value>(&env.payload) else {
                        continue;
                    };
                    let ok = match p["type"].as_str() {
                        Some("RunSucceeded") => true,
                        Some("RunFailed" | "RunCanceled") => false,
                        _ => continue,
                    };
                    let mut g = tracker.0.lock().expect("tracker lock");
                    match g.0.remove(&run) {
                        Some(tx) => {
                            let _ = tx.send(ok);
                        }
                        None => {
                            g.1.insert(run, ok);
                        }
                    }
                }
            }
        });
        t
    }

    fn wait(&self, run: uuid::Uuid) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let mut g = self.0.lock().expect("tracker lock");
        if let Some(ok) = g.1.remove(&run) {
            let _ = tx.send(ok);
        } else {
            g.0.insert(run, tx);
        }
        rx
    }
}

/// Offer `total` runs, `parallel` in flight, each followed to its end;
/// the seconds it took.
async fn measure(
    engine: &Engine,
    tracker: &Tracker,
    wf: &Workflow,
    total: usize,
    parallel: usize,
) -> Result<f64, EngineError> {
    crate::steps::in_flight_with(total, parallel, || {
        let (engine, wf, tracker) = (engine.clone(), wf.clone(), tracker.clone());
        async move {
            let run = engine.start(wf, json!({}), None).await?;
            let done = tracker.wait(run.0);
            Ok(tokio::time::timeout(Duration::from_secs(120), done)
                .await
                .map(|r| r.unwrap_or(false))
                .unwrap_or(false))
        }
    })
    .await
}

/// Run the benchmark: `exe` is the `chronicle` binary the workers run,
/// `server` the PostgreSQL server (a database on it is created per worker
/// count and dropped after), `runs` the runs measured per count.
pub fn run(exe: &Path, server: &str, runs: usize) -> Result<WorkersBench, EngineError> {
    run_counts(exe, server, runs, &[1, 2, 4])
}

/// [`run`] for the worker counts `counts` (`scaling_2`/`scaling_4` are 0
/// unless 1 and 2 / 4 are among them).
pub fn run_counts(
    exe: &Path,
    server: &str,
    runs: usize,
    counts: &[usize],
) -> Result<WorkersBench, EngineError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            EngineError::Stopped(
                chronicle_engine::ids::RunId(uuid::Uuid::nil()),
                e.to_string(),
            )
        })?;
    let wf = workflow();
    let mut out = WorkersBench {
        pg_commit_ms: 0.0,
        runs_per_s_32: BTreeMap::new(),
        write_commits_per_run: BTreeMap::new(),
        commits_per_run: BTreeMap::new(),
        scaling_2: 0.0,
        scaling_4: 0.0,
        runs,
    };
    let mut baseline = Vec::new();
    for &n in counts {
        let (url, name) = fresh_database(server, &format!("w{n}"))?;
        let r = rt.block_on(async {
            let engine = EngineBuilder::new().db(&url).executes(false).build()?;
            let probe = CommitProbe::new(&url).await?;
            baseline.extend(probe.sample(100).await?);
            let mut workers = Vec::new();
            for _ in 0..n {
                workers.push(
                    std::process::Command::new(exe)
                        .args([
                            "--db",
                            &url,
                            "-q",
                            "worker",
                            "--concurrency",
                            "256",
                            "--grace",
                            "1s",
                        ])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .map_err(|e| {
                            EngineError::Stopped(
                                chronicle_engine::ids::RunId(uuid::Uuid::nil()),
                                format!("cannot start {}: {e}", exe.display()),
                            )
                        })?,
                );
            }
            let tracker = Tracker::start(&engine);
            let result = async {
                measure(&engine, &tracker, &wf, 64, 32).await?;
                tokio::time::sleep(Duration::from_millis(1200)).await;
                let before = probe.commits().await?;
                let secs = measure(&engine, &tracker, &wf, runs, 32).await?;
                tokio::time::sleep(Duration::from_millis(1200)).await;
                let after = probe.commits().await?;
                baseline.extend(probe.sample(100).await?);
                Ok::<_, EngineError>((secs, before, after))
            }
            .await;
            for w in &mut workers {
                let _ = w.kill();
                let _ = w.wait();
            }
            drop(engine);
            result
        });
        rt.block_on(drop_database(server, &name))?;
        let (secs, before, after) = r?;
        let key = n.to_string();
        out.runs_per_s_32.insert(key.clone(), runs as f64 / secs);
        out.write_commits_per_run
            .insert(key.clone(), (after.0 - before.0) as f64 / runs as f64);
        out.commits_per_run
            .insert(key, (after.1 - before.1) as f64 / runs as f64);
    }
    out.pg_commit_ms = crate::store::percentile(&mut baseline, 0.5);
    let ratio = |k: &str| match (out.runs_per_s_32.get(k), out.runs_per_s_32.get("1")) {
        (Some(a), Some(b)) => a / b,
        _ => 0.0,
    };
    out.scaling_2 = ratio("2");
    out.scaling_4 = ratio("4");
    Ok(out)
}
