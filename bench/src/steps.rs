//! The runtime benchmark behind `chronicle bench steps`: durable no-op
//! runs measured against the disk's own fsync latency in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_engine::runtime::{EngineBuilder, EngineError};
use chronicle_engine::state::RunStatus;

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct StepsBench {
    /// Median of one 200-byte write + fdatasync at offset 0 of a file in
    /// the database's directory, milliseconds (sampled between the runs).
    pub fsync_ms: f64,
    /// Median latency of a 3-step no-op run, one after another, ms.
    pub run_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub run_p99_ms: f64,
    /// 3-step runs per second with 32 in flight.
    pub runs_per_s_32: f64,
    /// Steps per second with 256 runs in flight.
    pub steps_per_s_256: f64,
    /// Runs per second with 256 in flight.
    pub runs_per_s_256: f64,
    /// Events appended per second with 256 in flight.
    pub events_per_s_256: f64,
    /// Time per step of a 10-step `command: [true]` run over the time to
    /// spawn `true` directly (10 times with `tokio::process`, inherited
    /// stdio); the median of 11 such pairs.
    pub shell_step_overhead: f64,
    /// Median time of one direct spawn of `true` (to its exit), µs.
    pub spawn_us: f64,
    /// Median time per step of the 10-step `command: [true]` run, µs.
    pub shell_step_us: f64,
    /// `shell_step_us / (spawn_us + 1000 × fsync_ms)`: a step against the
    /// least a step that is written ahead can cost (its `StepStarted` made
    /// durable, then the process) — target ≤ 1.2. The medians come from
    /// the same interleaved samples.
    pub shell_step_overhead_durable: f64,
    /// `runs_per_s_32` with metrics recorded (the Prometheus recorder
    /// installed and recording on), measured in slices alternated with
    /// `runs_per_s_32_no_metrics`.
    pub runs_per_s_32_metrics: f64,
    /// The same without recording, in the alternated slices.
    pub runs_per_s_32_no_metrics: f64,
    /// `1 − runs_per_s_32_metrics / runs_per_s_32_no_metrics`: what
    /// metrics cost (target < 0.03; negative is noise).
    pub metrics_overhead: f64,
}

fn noop_workflow() -> Workflow {
    parse_definition(
        "bench.yaml",
        "name: bench\nsteps:\n  - id: a\n    function: noop\n  - id: b\n    needs: [a]\n    function: noop\n  - id: c\n    needs: [b]\n    function: noop\n",
    )
    .expect("the bench workflow is valid")
}

fn true_workflow() -> Workflow {
    let mut y = String::from("name: true10\nsteps:\n");
    for i in 0..10 {
        y.push_str(&format!("  - id: s{i}\n    command: ['true']\n"));
        if i > 0 {
            y.push_str(&format!("    needs: [s{}]\n", i - 1));
        }
    }
    parse_definition("true10.yaml", &y).expect("the bench workflow is valid")
}

/// Start `total` runs of `wf`, `parallel` at a time, each to its end;
/// the seconds it took. Panics when a run does not succeed.
pub(crate) async fn in_flight(
    engine: &chronicle_engine::runtime::Engine,
    wf: &Workflow,
    total: usize,
    parallel: usize,
) -> Result<f64, EngineError> {
    in_flight_with(total, parallel, || {
        let (engine, wf) = (engine.clone(), wf.clone());
        async move {
            let run = engine.start(wf, json!({}), None).await?;
            let s = engine.wait(run).await?;
            Ok(s.status == RunStatus::Succeeded)
        }
    })
    .await
}

/// Run `one()` `total` times, `parallel` at a time; the seconds it took.
/// Panics when one answers `false` (a bench run that did not succeed).
pub(crate) async fn in_flight_with<F, Fut>(
    total: usize,
    parallel: usize,
    one: F,
) -> Result<f64, EngineError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, EngineError>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let run = one();
        tasks.spawn(async move {
            let ok = run.await;
            drop(permit);
            ok
        });
    }
    while let Some(r) = tasks.join_next().await {
        let ok = r.map_err(|e| {
            EngineError::Stopped(
                chronicle_engine::ids::RunId(uuid::Uuid::nil()),
                e.to_string(),
            )
        })??;
        assert!(ok, "a bench run did not succeed");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The baseline of `fsync_ms`: the disk's own write + fdatasync, or, on
/// PostgreSQL, the server's own durable commit.
enum Baseline {
    File(crate::store::FsyncProbe),
    Pg(crate::pg::CommitProbe),
}

impl Baseline {
    async fn new(dir: &Path, url: Option<&str>) -> Result<Self, EngineError> {
        Ok(match url {
            Some(url) => Self::Pg(crate::pg::CommitProbe::new(url).await?),
            None => Self::File(crate::store::FsyncProbe::new(dir)?),
        })
    }

    async fn sample(&self, n: usize) -> Result<Vec<f64>, EngineError> {
        match self {
            Self::File(p) => Ok(p.sample(n)?),
            Self::Pg(p) => p.sample(n).await,
        }
    }
}

/// Run the benchmark in `dir`, on a redb file there.
pub fn run(dir: &Path) -> Result<StepsBench, EngineError> {
    run_on(dir, None)
}

/// Run the benchmark in `dir`, on a fresh database of the PostgreSQL
/// server `postgres` when given (dropped after; `fsync_ms` is then the
/// server's durable commit latency, see [`crate::pg::CommitProbe`]), else
/// on a redb file in `dir`.
pub fn run_on(dir: &Path, postgres: Option<&str>) -> Result<StepsBench, EngineError> {
    let fresh = match postgres {
        Some(server) => Some(crate::pg::fresh_database(server, "steps")?),
        None => None,
    };
    let url = fresh.as_ref().map(|(u, _)| u.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| chronicle_store::StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    let figures = rt.block_on(async {
        let path = match &url {
            Some(u) => std::path::PathBuf::from(u),
            None => dir.join("bench-steps.redb"),
        };
        chronicle_store::remove_database(&path);
        let engine = EngineBuilder::new()
            .db(&path)
            .workdir(dir)
            .max_parallel(4096)
            .snapshot_every(0)
            .function("noop", |_c| async { Ok(json!(null)) })
            .build()?;
        let wf = noop_workflow();
        // The fsync baseline and the runs in interleaved slices: this
        // disk's speed drifts by ±20 % within a minute.
        let mut lat = Vec::with_capacity(200);
        let mut fsyncs = Vec::with_capacity(300);
        let probe = Baseline::new(dir, url.as_deref()).await?;
        for _ in 0..4 {
            fsyncs.extend(probe.sample(75).await?);
            for _ in 0..50 {
                let t = Instant::now();
                let run = engine.start(wf.clone(), json!({}), None).await?;
                engine.wait(run).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        drop(probe);
        let fsync_ms = crate::store::percentile(&mut fsyncs, 0.5);
        let run_p50_ms = crate::store::percentile(&mut lat, 0.5);
        let run_p99_ms = crate::store::percentile(&mut lat, 0.99);
        let n32 = 2000;
        let runs_per_s_32 = n32 as f64 / in_flight(&engine, &wf, n32, 32).await?;
        let n256 = 6700; // 20,100 steps
        let secs = in_flight(&engine, &wf, n256, 256).await?;
        let runs_per_s_256 = n256 as f64 / secs;
        let steps_per_s_256 = 3.0 * runs_per_s_256;
        let events_per_s_256 = 9.0 * runs_per_s_256; // Created, Started, 3×(StepStarted, StepSucceeded), Succeeded
        // Shell overhead: a 10-step run of `true` against 10 direct spawns.
        let tw = true_workflow();
        // 11 pairs, median ratio: one pair swings by ±10 % on this machine.
        let mut ratios = Vec::new();
        let (mut step_us, mut spawn_us, mut step_fsyncs) = (Vec::new(), Vec::new(), Vec::new());
        let probe = Baseline::new(dir, url.as_deref()).await?;
        for _ in 0..11 {
            let t = Instant::now();
            let run = engine.start(tw.clone(), json!({}), None).await?;
            engine.wait(run).await?;
            let engine_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..10 {
                let _ = tokio::process::Command::new("true").status().await;
            }
            let direct_s = t.elapsed().as_secs_f64();
            ratios.push(engine_s / direct_s);
            step_us.push(engine_s * 1e5);
            spawn_us.push(direct_s * 1e5);
            step_fsyncs.extend(probe.sample(10).await?);
        }
        drop(probe);
        let shell_step_overhead = crate::store::percentile(&mut ratios, 0.5);
        let shell_step_us = crate::store::percentile(&mut step_us, 0.5);
        let spawn_us = crate::store::percentile(&mut spawn_us, 0.5);
        let step_fsync_ms = crate::store::percentile(&mut step_fsyncs, 0.5);
        let shell_step_overhead_durable = shell_step_us / (spawn_us + 1000.0 * step_fsync_ms);
        // Metrics: alternate slices with recording on and off (the
        // recorder stays installed; only the switch changes).
        let was = chronicle_store::metrics::enabled();
        chronicle_server::metrics::install();
        let (mut on_s, mut off_s) = (0.0, 0.0);
        let slice = 1000;
        for _ in 0..4 {
            chronicle_store::metrics::set_enabled(false);
            off_s += in_flight(&engine, &wf, slice, 32).await?;
            chronicle_store::metrics::set_enabled(true);
            on_s += in_flight(&engine, &wf, slice, 32).await?;
        }
        chronicle_store::metrics::set_enabled(was);
        let runs_per_s_32_metrics = 4.0 * slice as f64 / on_s;
        let runs_per_s_32_no_metrics = 4.0 * slice as f64 / off_s;
        drop(engine);
        chronicle_store::remove_database(&path);
        Ok(StepsBench {
            fsync_ms,
            run_p50_ms,
            run_p99_ms,
            runs_per_s_32,
            steps_per_s_256,
            runs_per_s_256,
            events_per_s_256,
            shell_step_overhead,
            spawn_us,
            shell_step_us,
            shell_step_overhead_durable,
            runs_per_s_32_metrics,
            runs_per_s_32_no_metrics,
            metrics_overhead: 1.0 - runs_per_s_32_metrics / runs_per_s_32_no_metrics,
        })
    });
    if let (Some(server), Some((_, name))) = (postgres, &fresh) {
        rt.block_on(crate::pg::drop_database(server, name))?;
    }
    figures
}
