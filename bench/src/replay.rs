//! The replay benchmark behind `chronicle bench replay`.

use chronicle_engine::ids::RunStream;
use std::path::Path;
use std::time::Instant;

use chronicle_engine::decide::{AttemptResult, Command, Ctx, decide};
use chronicle_engine::event::SCHEMA_VERSION;
use chronicle_engine::ids::RunId;
use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{EngineBuilder, RunSummary};
use chronicle_engine::state::{RunState, evolve};
use chronicle_store::{NewEvent, Seq, Store, StoreOptions, WriteRequest};
use serde::Serialize;
use serde_json::json;

use chronicle_replay::ReplayError;

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayBench {
    /// Events folded per second: 1,000,000 events of real-shaped runs,
    /// read from the database after a cold open.
    pub fold_events_per_s: f64,
    /// Milliseconds from engine start until 10,000 in-flight runs of 10
    /// events each are all resumed.
    pub recover_10k_ms: f64,
    /// Events verified per second (hash chain, fold, snapshots, index).
    pub verify_events_per_s: f64,
    /// Baseline: records of the same events iterated per second by redb
    /// itself (the `log` table, no decoding), on as many threads as the
    /// fold uses.
    pub raw_scan_events_per_s: f64,
    /// `fold_events_per_s / raw_scan_events_per_s`.
    pub fold_per_scan: f64,
    /// `verify_events_per_s / raw_scan_events_per_s`.
    pub verify_per_scan: f64,
}

/// Iterate the `log` table of the database at `path` (closed) on
/// `threads` threads, each over its share of the positions; returns the
/// records per second.
fn raw_scan(path: &Path, threads: usize) -> Result<f64, ReplayError> {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    let err = |e: redb::Error| {
        ReplayError::Store(chronicle_store::StoreError::Storage(format!(
            "{}: {e}",
            path.display()
        )))
    };
    let log = redb::TableDefinition::<u64, &[u8]>::new("log");
    let db = redb::ReadOnlyDatabase::open(path).map_err(|e| err(e.into()))?;
    let t = Instant::now();
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let table = txn.open_table(log).map_err(|e| err(e.into()))?;
    let n = table.len().map_err(|e| err(e.into()))?;
    let chunk = n.div_ceil(threads as u64).max(1);
    let counted: Result<Vec<u64>, redb::Error> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|i| {
                let table = &table;
                s.spawn(move || -> Result<u64, redb::Error> {
                    let mut bytes = 0u64;
                    let mut records = 0u64;
                    for item in table.range(1 + i * chunk..1 + (i + 1) * chunk)? {
                        let (_, v) = item?;
                        bytes += v.value().len() as u64;
                        records += 1;
                    }
                    std::hint::black_box(bytes);
                    Ok(records)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan threads do not panic"))
            .collect()
    });
    let records: u64 = counted.map_err(err)?.into_iter().sum();
    Ok(records as f64 / t.elapsed().as_secs_f64())
}

const WORKFLOW: &str = "
name: bench-replay
steps:
  - id: fetch
    command: [sh, -c, 'echo fetch']
  - id: count
    needs: [fetch]
    command: [wc, -l]
  - id: grep
    needs: [count]
    command: [grep, -c, ERROR]
  - id: report
    needs: [grep]
    command: [sh, -c, 'echo report']
";

/// The history of one run decided by the real decider: created, started,
/// and `steps_done` steps succeeded (the next one left running).
fn history(run: RunId, steps_done: usize) -> Vec<chronicle_engine::event::RunEvent> {
    let wf = parse_definition("bench.yaml", WORKFLOW).expect("the bench workflow is valid");
    let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("fixed time");
    let ctx = Ctx::at(now);
    let mut state = RunState::default();
    let mut all = Vec::new();
    let apply = |state: &mut RunState, cmd: Command, all: &mut Vec<_>| {
        for e in decide(state, cmd, &ctx).expect("the bench history is valid") {
            let seq = state.seq + 1;
            *state = evolve(std::mem::take(state), seq, now, &e).expect("decided events fold");
            all.push(e);
        }
    };
    let create = Command::Create {
        run_id: run,
        workflow: std::sync::Arc::new(wf),
        input: json!({"file": "HDFS_2k.log"}),
        idempotency_key: None,
        seed: 1,
        trace_id: None,
        parent: None,
    };
    apply(&mut state, create, &mut all);
    apply(&mut state, Command::Start, &mut all);
    for _ in 0..steps_done {
        let (step, attempt) = state
            .running()
            .first()
            .map(|(s, a)| (s.to_string(), *a))
            .expect("a step runs");
        let result = AttemptResult::Succeeded {
            output: json!({"lines": 2000, "file": "HDFS_2k.log"}),
            duration_ms: 12,
            stdout: None,
            stderr: None,
        };
        apply(
            &mut state,
            Command::Finished {
                step: step.into(),
                attempt,
                result,
            },
            &mut all,
        );
    }
    all
}

/// Write `runs` copies of a history (fresh run ids) into `store`.
fn fill(store: &Store, runs: usize, steps_done: usize) -> Result<Vec<RunId>, ReplayError> {
    let mut ids = Vec::with_capacity(runs);
    let mut req = WriteRequest::default();
    for i in 0..runs {
        let run = RunId(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0000 | (i as u128 + 1),
        ));
        let events = history(run, steps_done);
        let mut state = RunState::default();
        let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).expect("fixed time");
        for e in &events {
            let seq = state.seq + 1;
            state = evolve(state, seq, now, e)?;
        }
        let new: Vec<NewEvent> = events
            .iter()
            .map(|e| NewEvent {
                recorded_at: Some(now),
                ..NewEvent::json(SCHEMA_VERSION, e).expect("events serialize")
            })
            .collect();
        req.appends.push(chronicle_store::Append {
            stream: run.stream(),
            expected: Seq(0),
            events: new,
        });
        req.index
            .push(RunSummary::of(&state).expect("a run has a summary").put());
        ids.push(run);
        if req.appends.len() == 500 {
            store.write_blocking(std::mem::take(&mut req))?;
        }
    }
    if !req.appends.is_empty() {
        store.write_blocking(req)?;
    }
    Ok(ids)
}

/// Run the benchmark in `dir`.
pub fn run(dir: &Path) -> Result<ReplayBench, ReplayError> {
    std::fs::create_dir_all(dir).map_err(|source| chronicle_store::StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // 1,000,000 events: 100,000 runs of 10 events (4 steps, all succeeded).
    let path = dir.join("bench-fold.redb");
    chronicle_store::remove_database(&path);
    let ids = {
        let store = Store::open(&path, StoreOptions::default())?;
        fill(&store, 100_000, 4)?
    };
    let t = Instant::now();
    // Read-only, as `replay` and `status` open it.
    let store = Store::open_read_only(&path)?;
    // Each thread folds its share of the runs, each run from its stream.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let chunk = ids.len().div_ceil(threads);
    let counted: Result<Vec<u64>, ReplayError> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(chunk)
            .map(|part| {
                let store = store.clone();
                s.spawn(move || -> Result<u64, ReplayError> {
                    let mut n = 0;
                    for run in part {
                        n += chronicle_replay::rebuild::state_at(
                            &store,
                            *run,
                            chronicle_replay::rebuild::Target::Head,
                        )?
                        .seq
                        .0;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fold threads do not panic"))
            .collect()
    });
    let events: u64 = counted?.into_iter().sum();
    let fold_events_per_s = events as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let reports = chronicle_replay::verify::verify(&store, None)?;
    let verified: u64 = reports.iter().map(|r| r.events).sum();
    assert!(
        reports.iter().all(|r| r.ok()),
        "the bench database verifies"
    );
    let verify_events_per_s = verified as f64 / t.elapsed().as_secs_f64();
    drop(store);
    let raw_scan_events_per_s = raw_scan(&path, threads)?;
    chronicle_store::remove_database(&path);

    // 10,000 in-flight runs of 10 events (the fifth event onwards: step 4 running).
    let rpath = dir.join("bench-recover.redb");
    chronicle_store::remove_database(&rpath);
    {
        let store = Store::open(&rpath, StoreOptions::default())?;
        fill(&store, 10_000, 3)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| chronicle_store::StoreError::Io {
            path: rpath.clone(),
            source,
        })?;
    let recover_10k_ms = rt.block_on(async {
        let t = Instant::now();
        // Recovered steps go nowhere: no parallel slots, so the bench
        // measures recovery, not the steps it restarts.
        let engine = EngineBuilder::new()
            .db(&rpath)
            .workdir(dir)
            .max_parallel(1)
            .snapshot_every(0)
            .build()?;
        let report = engine.recover().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(
            report.resumed.len(),
            10_000,
            "every in-flight run is resumed"
        );
        Ok::<f64, ReplayError>(ms)
    })?;
    rt.shutdown_background();
    chronicle_store::remove_database(&rpath);
    Ok(ReplayBench {
        fold_events_per_s,
        recover_10k_ms,
        verify_events_per_s,
        raw_scan_events_per_s,
        fold_per_scan: fold_events_per_s / raw_scan_events_per_s,
        verify_per_scan: verify_events_per_s / raw_scan_events_per_s,
    })
}
