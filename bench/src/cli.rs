//! `chronicle bench cli`: what one invocation of the `chronicle` binary
//! costs, as scripts and CI loops call it.
//!
//! Each figure is the median of 50 invocations, each a new process (the
//! benchmark runs the binary it is part of). The baselines are measured
//! in the same run, interleaved with the invocations: three direct spawns
//! of `true` (what the run's steps cost by themselves) and one 200-byte
//! write + fdatasync (`fsync_ms`). Targets (issue 18): `run_3_true_ms` ≤
//! `spawn_3_true_ms` + 4 × `fsync_ms` + 5 ms, and `status_ms` ≤ 5 ms.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{EngineBuilder, EngineError};
use serde::Serialize;
use serde_json::json;

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct CliBench {
    /// Three direct spawns of `true`, one after the other, milliseconds.
    pub spawn_3_true_ms: f64,
    /// `chronicle run` of three `command: [true]` steps (`a → b → c`) as a
    /// new process, milliseconds.
    pub run_3_true_ms: f64,
    /// `chronicle status RUN` on a database with 1,000 runs, milliseconds.
    pub status_ms: f64,
    /// `chronicle list` on the same database, milliseconds.
    pub list_ms: f64,
    /// `chronicle --version`: the process alone, milliseconds.
    pub version_ms: f64,
    /// One 200-byte write + fdatasync in the benchmark's folder, ms.
    pub fsync_ms: f64,
    /// `spawn_3_true_ms + 4 × fsync_ms + 5`: the target for `run_3_true_ms`.
    pub run_target_ms: f64,
}

const SAMPLES: usize = 50;
const WORKFLOW: &str = "name: three\nsteps:\n  - id: a\n    command: ['true']\n  - id: b\n    needs: [a]\n    command: ['true']\n  - id: c\n    needs: [b]\n    command: ['true']\n";

fn io(path: &Path) -> impl Fn(std::io::Error) -> EngineError + '_ {
    move |source| {
        EngineError::Store(chronicle_store::StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Run `exe args` (stdout and stderr discarded); milliseconds. Errors
/// when it cannot start or exits other than 0.
fn time(exe: &Path, args: &[&str]) -> Result<f64, EngineError> {
    let t = Instant::now();
    let status = Command::new(exe)
        .args(args)
        .env_remove("RUST_LOG")
        .env("CHRONICLE_WATCHDOG", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io(exe))?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        return Err(io(exe)(std::io::Error::other(format!(
            "{} {} exited {status}",
            exe.display(),
            args.join(" ")
        ))));
    }
    Ok(ms)
}

fn spawn_3_true() -> Result<f64, EngineError> {
    let t = Instant::now();
    for _ in 0..3 {
        Command::new("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map_err(io(Path::new("true")))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Run the benchmark in `dir` with the `chronicle` binary `exe`.
pub fn run(dir: &Path, exe: &Path) -> Result<CliBench, EngineError> {
    let wf_path = dir.join("three.yaml");
    std::fs::write(&wf_path, WORKFLOW).map_err(io(&wf_path))?;
    let run_db = dir.join("bench-cli-run.redb");
    let many_db = dir.join("bench-cli-1000.redb");
    chronicle_store::remove_database(&run_db);
    chronicle_store::remove_database(&many_db);
    let run_id = fill(&many_db)?;
    let db = |p: &PathBuf| p.to_str().unwrap_or_default().to_string();
    let (run_db_s, many_db_s, wf_s) = (db(&run_db), db(&many_db), db(&wf_path));
    let probe = crate::store::FsyncProbe::new(dir)?;
    let (mut spawn, mut run, mut status, mut list, mut version, mut fsync) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Warm the page cache and the binary.
    time(exe, &["--db", &run_db_s, "-q", "run", &wf_s])?;
    for _ in 0..SAMPLES {
        spawn.push(spawn_3_true()?);
        run.push(time(exe, &["--db", &run_db_s, "-q", "run", &wf_s])?);
        status.push(time(exe, &["--db", &many_db_s, "status", &run_id])?);
        list.push(time(exe, &["--db", &many_db_s, "list"])?);
        version.push(time(exe, &["--version"])?);
        fsync.extend(probe.sample(3)?);
    }
    drop(probe);
    chronicle_store::remove_database(&run_db);
    chronicle_store::remove_database(&many_db);
    let m = |v: &mut Vec<f64>| crate::store::percentile(v, 0.5);
    let (spawn_3_true_ms, fsync_ms) = (m(&mut spawn), m(&mut fsync));
    Ok(CliBench {
        spawn_3_true_ms,
        run_3_true_ms: m(&mut run),
        status_ms: m(&mut status),
        list_ms: m(&mut list),
        version_ms: m(&mut version),
        fsync_ms,
        run_target_ms: spawn_3_true_ms + 4.0 * fsync_ms + 5.0,
    })
}

/// A database with 1,000 finished 3-step runs (in process: no step
/// processes); returns the id of one of them.
fn fill(db: &Path) -> Result<String, EngineError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io(db))?;
    rt.block_on(async {
        let engine = EngineBuilder::new()
            .db(db)
            .snapshot_every(0)
            .function("noop", |_c| async { Ok(json!({"ok": true})) })
            .build()?;
        let wf = parse_definition(
            "noop.yaml",
            "name: noop3\nsteps:\n  - id: a\n    function: noop\n  - id: b\n    needs: [a]\n    function: noop\n  - id: c\n    needs: [b]\n    function: noop\n",
        )
        .expect("the bench workflow is valid");
        let mut last = None;
        for chunk in 0..10 {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..100 {
                let (engine, wf) = (engine.clone(), wf.clone());
                tasks.spawn(async move {
                    let run = engine.start(wf, json!({}), None).await?;
                    engine.wait(run).await?;
                    Ok::<_, EngineError>(run)
                });
            }
            while let Some(r) = tasks.join_next().await {
                let run = r.map_err(|e| io(db)(std::io::Error::other(e.to_string())))??;
                if chunk == 5 {
                    last = Some(run);
                }
            }
        }
        Ok(last.map(|r| r.to_string()).unwrap_or_default())
    })
}
