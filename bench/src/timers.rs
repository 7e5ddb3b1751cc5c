//! `chronicle bench timers`: durable timers. Runs of one `sleep: 0s` step
//! against runs of one no-op function step, in alternated slices of the
//! same engine; and the recovery of many runs each waiting on a timer due
//! in an hour (what `chronicle serve` does before it is ready).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_engine::runtime::{EngineBuilder, EngineError};

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct TimersBench {
    /// Runs of one `sleep: 0s` step per second, 256 in flight.
    pub timers_per_s: f64,
    /// Runs of one no-op function step per second, 256 in flight (the
    /// baseline, same engine, alternated slices).
    pub runs_per_s_256: f64,
    /// `timers_per_s / runs_per_s_256` (target ≥ 0.5).
    pub timers_ratio: f64,
    /// Runs left waiting on a timer due in an hour.
    pub pending_timers: usize,
    /// Time for a new engine to recover them all (each timer re-armed),
    /// milliseconds (target ≤ 5,000 for 100,000).
    pub pending_timers_recover_ms: f64,
    /// Resident set growth of that recovery over the pending timers,
    /// bytes per timer.
    pub rss_bytes_per_timer: f64,
    /// Resident set size after the recovery, MiB.
    pub rss_mib: f64,
}

fn wf(name: &str, step: &str) -> Workflow {
    parse_definition(
        "bench.yaml",
        &format!("name: {name}\nsteps:\n  - id: a\n{step}\n"),
    )
    .expect("the bench workflow is valid")
}

/// Runs per second of `wf`, `parallel` in flight.
async fn in_flight(
    engine: &chronicle_engine::runtime::Engine,
    wf: &Workflow,
    total: usize,
    parallel: usize,
) -> Result<f64, EngineError> {
    Ok(total as f64 / crate::steps::in_flight(engine, wf, total, parallel).await?)
}

fn rss_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb * 1024.0)
        .unwrap_or(0.0)
}

/// Run the benchmark in `dir` with `pending` runs left waiting on a timer
/// (100,000 for the target figure).
pub fn run(dir: &Path, pending: usize) -> Result<TimersBench, EngineError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| chronicle_store::StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    rt.block_on(async {
        let path = dir.join("bench-timers.redb");
        chronicle_store::remove_database(&path);
        let engine = EngineBuilder::new()
            .db(&path)
            .workdir(dir)
            .max_parallel(4096)
            .snapshot_every(0)
            .watchdog(false)
            .function("noop", |_c| async { Ok(json!(null)) })
            .build()?;
        let timer = wf("timer", "    sleep: 0s");
        let noop = wf("noop", "    function: noop");
        let (mut t, mut n) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            t.push(in_flight(&engine, &timer, 1000, 256).await?);
            n.push(in_flight(&engine, &noop, 1000, 256).await?);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (timers_per_s, runs_per_s_256) = (median(t), median(n));
        // Runs left waiting on a timer due in an hour.
        let hour = wf("hour", "    sleep: 1h");
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..pending {
            let permit = sem.clone().acquire_owned().await.expect("never closed");
            let (engine, wf) = (engine.clone(), hour.clone());
            tasks.spawn(async move {
                let r = engine.start(wf, json!({}), None).await;
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| {
                EngineError::Stopped(
                    chronicle_engine::ids::RunId(uuid::Uuid::nil()),
                    e.to_string(),
                )
            })??;
        }
        engine.shutdown().await;
        drop(engine);
        // A new engine on the same file: recover every run (as `serve`
        // does before it answers /readyz).
        let before = rss_bytes();
        let t0 = Instant::now();
        let engine = EngineBuilder::new()
            .db(&path)
            .workdir(dir)
            .max_parallel(4096)
            .snapshot_every(0)
            .watchdog(false)
            .build()?;
        let report = engine.recover_runs(None).await?;
        let pending_timers_recover_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let after = rss_bytes();
        assert!(
            report.resumed.len() >= pending,
            "every waiting run is recovered ({} of {pending})",
            report.resumed.len()
        );
        engine.shutdown().await;
        drop(engine);
        chronicle_store::remove_database(&path);
        Ok(TimersBench {
            timers_per_s,
            runs_per_s_256,
            timers_ratio: timers_per_s / runs_per_s_256,
            pending_timers: pending,
            pending_timers_recover_ms,
            rss_bytes_per_timer: (after - before).max(0.0) / pending.max(1) as f64,
            rss_mib: after / (1024.0 * 1024.0),
        })
    })
}
