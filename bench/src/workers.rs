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
    /// 3-step runs per second with 32 in flight, by worker processes: the
    /// median over the rounds.
    pub runs_per_s_32: BTreeMap<String, f64>,
    /// Each round's `runs_per_s_32`, in the order measured.
    pub runs_per_s_32_rounds: BTreeMap<String, Vec<f64>>,
    /// Group commits of the log per run (transactions that appended),
    /// by worker processes (median over the rounds).
    pub write_commits_per_run: BTreeMap<String, f64>,
    /// Every committed transaction per run, reads and lease renewals too
    /// (`pg_stat_database.xact_commit`), by worker processes.
    pub commits_per_run: BTreeMap<String, f64>,
    /// The median over the rounds of each round's `runs_per_s_32["2"] /
    /// runs_per_s_32["1"]` (target ≥ 1).
    pub scaling_2: f64,
    /// The same for `runs_per_s_32["4"] / runs_per_s_32["1"]`.
    pub scaling_4: f64,
    /// Runs measured per measurement (after 64 warm-up runs).
    pub runs: usize,
    /// Rounds: each measured every worker count once, on a fresh database.
    pub rounds: usize,
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
/// `server` the PostgreSQL server (a database on it is created per
/// measurement and dropped after), `runs` the runs measured per
/// measurement, in [`DEFAULT_ROUNDS`] rounds.
pub fn run(exe: &Path, server: &str, runs: usize) -> Result<WorkersBench, EngineError> {
    run_counts(exe, server, runs, &[1, 2, 4], DEFAULT_ROUNDS)
}

/// Rounds [`run`] measures: each round measures every worker count once,
/// so a noisy minute of a shared machine skews one round, not one count.
pub const DEFAULT_ROUNDS: usize = 3;

/// One measurement: `runs` runs with `n` worker processes on a fresh
/// database of `server`. Returns (runs/s, write commits, every commit),
/// the commits counted over the measured runs.
fn measure_count(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    server: &str,
    n: usize,
    runs: usize,
    baseline: &mut Vec<f64>,
) -> Result<(f64, i64, i64), EngineError> {
    let wf = workflow();
    let (url, name) = fresh_database(server, &format!("w{n}"))?;
    let r = rt.block_on(async {
        let engine = EngineBuilder::new().db(&url).executes(false).build()?;
        let probe = CommitProbe::new(&url).await?;
        baseline.extend(probe.sample(100).await?);
        let mut workers = Vec::new();
        for _ in 0..n {
            let spawned = std::process::Command::new(exe)
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
                .spawn();
            match spawned {
                Ok(child) => workers.push(child),
                Err(e) => {
                    for w in &mut workers {
                        let _ = w.kill();
                        let _ = w.wait();
                    }
                    return Err(EngineError::Stopped(
                        chronicle_engine::ids::RunId(uuid::Uuid::nil()),
                        format!("cannot start {}: {e}", exe.display()),
                    ));
                }
            }
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
    Ok((runs as f64 / secs, after.0 - before.0, after.1 - before.1))
}

/// [`run`] for the worker counts `counts` in `rounds` rounds (at least
/// one). Round `r` measures the counts starting from the `r`-th, so that
/// no count is always measured first (on a database created right after
/// the previous one was dropped). Each figure is the median over the
/// rounds; `scaling_2`/`scaling_4` are the medians of each round's own
/// ratio (0 unless 1 and 2 / 4 are among the counts).
pub fn run_counts(
    exe: &Path,
    server: &str,
    runs: usize,
    counts: &[usize],
    rounds: usize,
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
    let rounds = rounds.max(1);
    let mut baseline = Vec::new();
    // By count: each round's (runs/s, write commits, every commit).
    let mut by_count: BTreeMap<usize, Vec<(f64, i64, i64)>> = BTreeMap::new();
    for round in 0..rounds {
        for i in 0..counts.len() {
            let n = counts[(round + i) % counts.len()];
            let m = measure_count(&rt, exe, server, n, runs, &mut baseline)?;
            by_count.entry(n).or_default().push(m);
        }
    }
    let median = |mut v: Vec<f64>| crate::store::percentile(&mut v, 0.5);
    let mut out = WorkersBench {
        pg_commit_ms: median(baseline),
        runs_per_s_32: BTreeMap::new(),
        runs_per_s_32_rounds: BTreeMap::new(),
        write_commits_per_run: BTreeMap::new(),
        commits_per_run: BTreeMap::new(),
        scaling_2: 0.0,
        scaling_4: 0.0,
        runs,
        rounds,
    };
    for (n, ms) in &by_count {
        let key = n.to_string();
        let per_run = |c: i64| c as f64 / runs as f64;
        let rates: Vec<f64> = ms.iter().map(|m| m.0).collect();
        out.runs_per_s_32.insert(key.clone(), median(rates.clone()));
        out.runs_per_s_32_rounds.insert(key.clone(), rates);
        out.write_commits_per_run.insert(
            key.clone(),
            median(ms.iter().map(|m| per_run(m.1)).collect()),
        );
        out.commits_per_run
            .insert(key, median(ms.iter().map(|m| per_run(m.2)).collect()));
    }
    let scaling = |k: usize| match (by_count.get(&k), by_count.get(&1)) {
        (Some(a), Some(b)) => median(a.iter().zip(b).map(|(a, b)| a.0 / b.0).collect()),
        _ => 0.0,
    };
    out.scaling_2 = scaling(2);
    out.scaling_4 = scaling(4);
    Ok(out)
}
