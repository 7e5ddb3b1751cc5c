//! `chronicle bench scheduler`: the measurement behind the runtime's choice
//! of one actor task per run over a sharded scheduler.
//!
//! Both shapes drive the same work — the real `decide` and `evolve` of a
//! 3-step run, its events encoded to JSON as for the log, each attempt a
//! spawned task that reports back by message (as an in-process function
//! does) — with no store, so that only the cost of scheduling differs:
//!
//! - **actor**: one task per run, owning its state, fed by its own channel
//!   (what `chronicle_engine::runtime` does);
//! - **sharded**: one task per core, each owning the states of the runs
//!   hashed to it, fed by one channel per shard.
//!
//! Each figure is runs per second with 256 runs in flight, 20,000 runs,
//! measured in the same process one after the other; their ratio is the
//! figure to read (the machine is shared and noisy).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use chronicle_engine::decide::{AttemptResult, Command, Ctx, decide};
use chronicle_engine::ids::RunId;
use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_engine::state::{RunState, RunStatus, evolve};

/// The figures; `--json` prints exactly these keys.
#[derive(Clone, Debug, Serialize)]
pub struct SchedulerBench {
    /// Runs per second, one actor task per run.
    pub actor_runs_per_s: f64,
    /// Runs per second, one scheduler task per core.
    pub sharded_runs_per_s: f64,
    /// Shards used (the number of cores).
    pub shards: usize,
    /// `actor_runs_per_s / sharded_runs_per_s`.
    pub actor_over_sharded: f64,
}

const RUNS: usize = 20_000;
const IN_FLIGHT: usize = 256;

/// One run's state as either shape keeps it.
struct Run {
    state: RunState,
    /// Attempts started and not yet finished.
    live: HashSet<(String, u32)>,
    /// Told when the run ends (sharded shape).
    done: Option<oneshot::Sender<bool>>,
}

/// Apply `cmd`: decide, fold, encode the events; then the attempts to
/// start (running in the state, not yet live).
fn step(run: &mut Run, cmd: Command, now: DateTime<Utc>) -> Vec<(String, u32)> {
    let events = decide(&run.state, cmd, &Ctx::at(now)).expect("the bench run is valid");
    for e in &events {
        let seq = run.state.seq + 1;
        run.state = evolve(std::mem::take(&mut run.state), seq, now, e).expect("events fold");
        std::hint::black_box(serde_json::to_vec(e).expect("events serialize"));
    }
    let mut start = Vec::new();
    for (s, a) in run.state.running() {
        let key = (s.to_string(), a);
        if run.live.insert(key.clone()) {
            start.push(key);
        }
    }
    start
}

fn new_run(wf: &Arc<Workflow>, i: usize, now: DateTime<Utc>) -> (RunId, Run) {
    let id = RunId(uuid::Uuid::from_u128(i as u128 + 1));
    let mut run = Run {
        state: RunState::default(),
        live: HashSet::new(),
        done: None,
    };
    let create = Command::Create {
        run_id: id,
        workflow: wf.clone(),
        input: json!({}),
        idempotency_key: None,
        seed: 1,
        trace_id: None,
        parent: None,
    };
    let _ = step(&mut run, create, now);
    (id, run)
}

fn ok() -> AttemptResult {
    AttemptResult::Succeeded {
        output: json!(null),
        duration_ms: 0,
        stdout: None,
        stderr: None,
    }
}

/// One task per run; `(runs per second, runs that succeeded)`.
async fn actors(wf: Arc<Workflow>, now: DateTime<Utc>, runs: usize) -> (f64, usize) {
    let succeeded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let (slot_tx, mut slot_rx) = mpsc::channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        slot_tx.send(()).await.expect("open");
    }
    let mut waits = Vec::with_capacity(runs);
    for i in 0..runs {
        slot_rx.recv().await.expect("open");
        let (_, mut run) = new_run(&wf, i, now);
        let slot = slot_tx.clone();
        let succeeded = succeeded.clone();
        waits.push(tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
            let mut start = step(&mut run, Command::Start, now);
            loop {
                for (s, a) in start.drain(..) {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send((s, a));
                    });
                }
                if run.state.status.is_terminal() {
                    if run.state.status == RunStatus::Succeeded {
                        succeeded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
                let Some((s, a)) = rx.recv().await else { break };
                run.live.remove(&(s.clone(), a));
                start = step(
                    &mut run,
                    Command::Finished {
                        step: s.into(),
                        attempt: a,
                        result: ok(),
                    },
                    now,
                );
            }
            let _ = slot.send(()).await;
        }));
    }
    for w in waits {
        let _ = w.await;
    }
    (
        runs as f64 / t.elapsed().as_secs_f64(),
        succeeded.load(std::sync::atomic::Ordering::Relaxed),
    )
}

enum ShardMsg {
    New(RunId, Box<Run>),
    Done(RunId, String, u32),
}

/// One task per core, each owning its share of the runs; `(runs per
/// second, runs that succeeded)`.
async fn sharded(
    wf: Arc<Workflow>,
    now: DateTime<Utc>,
    shards: usize,
    runs: usize,
) -> (f64, usize) {
    let t = Instant::now();
    let (slot_tx, mut slot_rx) = mpsc::channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        slot_tx.send(()).await.expect("open");
    }
    let mut senders = Vec::with_capacity(shards);
    let mut tasks = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, mut rx) = mpsc::unbounded_channel::<ShardMsg>();
        senders.push(tx.clone());
        let slot = slot_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut runs: HashMap<RunId, Run> = HashMap::new();
            while let Some(msg) = rx.recv().await {
                let (id, start) = match msg {
                    ShardMsg::New(id, run) => {
                        let mut run = *run;
                        let start = step(&mut run, Command::Start, now);
                        runs.insert(id, run);
                        (id, start)
                    }
                    ShardMsg::Done(id, s, a) => {
                        let run = runs.get_mut(&id).expect("a live run");
                        run.live.remove(&(s.clone(), a));
                        let cmd = Command::Finished {
                            step: s.into(),
                            attempt: a,
                            result: ok(),
                        };
                        (id, step(run, cmd, now))
                    }
                };
                for (s, a) in start {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(ShardMsg::Done(id, s, a));
                    });
                }
                if runs[&id].state.status.is_terminal() {
                    let mut run = runs.remove(&id).expect("present");
                    if let Some(d) = run.done.take() {
                        let _ = d.send(run.state.status == RunStatus::Succeeded);
                    }
                    let _ = slot.send(()).await;
                }
            }
        }));
    }
    let mut waits = Vec::with_capacity(runs);
    for i in 0..runs {
        slot_rx.recv().await.expect("open");
        let (id, mut run) = new_run(&wf, i, now);
        let (done_tx, done_rx) = oneshot::channel();
        run.done = Some(done_tx);
        waits.push(done_rx);
        let shard = (id.0.as_u128() % shards as u128) as usize;
        senders[shard]
            .send(ShardMsg::New(id, Box::new(run)))
            .expect("shard open");
    }
    let mut succeeded = 0;
    for w in waits {
        succeeded += usize::from(w.await.unwrap_or(false));
    }
    let rate = runs as f64 / t.elapsed().as_secs_f64();
    drop(senders);
    for task in tasks {
        task.abort();
    }
    (rate, succeeded)
}

fn bench_workflow() -> Arc<Workflow> {
    Arc::new(
        parse_definition(
            "bench.yaml",
            "name: bench\nsteps:\n  - id: a\n    function: noop\n  - id: b\n    needs: [a]\n    function: noop\n  - id: c\n    needs: [b]\n    function: noop\n",
        )
        .expect("the bench workflow is valid"),
    )
}

/// Run both shapes on a multi-threaded runtime (one worker per core).
///
/// Errors: only if the runtime cannot start (I/O).
pub fn run() -> std::io::Result<SchedulerBench> {
    let shards = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let wf = bench_workflow();
    let now = DateTime::from_timestamp(1_767_225_600, 0).expect("fixed time");
    let (actor_runs_per_s, sharded_runs_per_s) = rt.block_on(async {
        // Warm up both, then measure each.
        let _ = actors(wf.clone(), now, RUNS).await;
        let _ = sharded(wf.clone(), now, shards, RUNS).await;
        let (a, _) = actors(wf.clone(), now, RUNS).await;
        let (s, _) = sharded(wf.clone(), now, shards, RUNS).await;
        (a, s)
    });
    Ok(SchedulerBench {
        actor_runs_per_s,
        sharded_runs_per_s,
        shards,
        actor_over_sharded: actor_runs_per_s / sharded_runs_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_shapes_drive_every_run_to_success() {
        let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let (_, a) = actors(bench_workflow(), now, 600).await;
        let (_, s) = sharded(bench_workflow(), now, 2, 600).await;
        assert_eq!((a, s), (600, 600));
    }
}
