//! Agents shared by workers on PostgreSQL: their circuit breakers and
//! their concurrency hold across worker processes, as on one engine.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use chronicle_store::Store;

use super::{chronicle, fresh_postgres, histories, wait_succeeded, worker};
use crate::support::{BIN, Env, root};

/// Two workers on `url` (`--lease LEASE`; logs `NAME-w1.log`, `NAME-w2.log`).
fn two_workers(env: &Env, url: &str, lease: &str, name: &str) -> [std::process::Child; 2] {
    [
        worker(env, url, lease, &format!("{name}-w1.log")),
        worker(env, url, lease, &format!("{name}-w2.log")),
    ]
}

/// `n` runs of the workflow `file` submitted for the workers (`run
/// --detach`): their ids.
fn submit(env: &Env, url: &str, file: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let out = chronicle(env, url, &["run", file, "--detach"]);
            assert_eq!(out.code, 0, "{out:?}");
            out.stdout.trim().to_string()
        })
        .collect()
}

/// Runs whose agents have circuit breakers, executed by two workers at
/// once: both append to the agents' streams (optimistic concurrency, a
/// conflict refolds the stream and decides again); every run ends as on
/// one engine, and every chain verifies.
#[test]
fn two_workers_share_the_agents_circuit_breakers() {
    let url = fresh_postgres();
    let spawn = |log: &str| {
        let err = std::fs::File::create(std::env::temp_dir().join(log)).unwrap();
        Command::new(BIN)
            .current_dir(root())
            .args(["--db", &url, "worker", "--lease", "5s", "--grace", "1s"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    };
    let mut workers = [spawn("agents-w1.log"), spawn("agents-w2.log")];
    let mut runs = Vec::new();
    for _ in 0..6 {
        let mut c = Command::new(BIN);
        c.current_dir(root())
            .args(["--db", &url, "run", "examples/agents.yaml", "--detach"]);
        let out = crate::support::Out::from(c.output().unwrap());
        assert_eq!(out.code, 0, "{out:?}");
        runs.push(out.stdout.trim().to_string());
    }
    let env = Env::new();
    wait_succeeded(&env, &url, &runs);
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let verify = chronicle(&env, &url, &["verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let agents = Store::open_read_only(&url)
        .unwrap()
        .streams_with_prefix("agent:")
        .unwrap();
    assert!(!agents.is_empty(), "no agent stream was written");
}

const ONE_GPU: &str = r#"
name: one-gpu
agents:
  gpu:
    skills: [render]
    concurrency: 2
    shell: 'sleep 0.3; echo "{\"worker\": $PPID}"'
steps:
  - id: a
    skills: [render]
  - id: b
    skills: [render]
  - id: c
    skills: [render]
"#;

/// An agent's `concurrency` holds across workers: two workers (one of them
/// SIGKILLed and restarted), eight runs of three steps each on an agent
/// with `concurrency: 2`; from the histories, never more than two attempts
/// on it ran at once — while each worker alone would have allowed two —
/// and every slot is given back.
#[test]
fn an_agents_concurrency_holds_across_workers() {
    let url = fresh_postgres();
    let env = Env::new();
    env.write("gpu.yaml", ONE_GPU);
    let mut workers = two_workers(&env, &url, "2s", "gpu");
    let runs = submit(&env, &url, "gpu.yaml", 8);
    // A worker dies holding slots: the runs it held are taken over when
    // its leases expire, and the abandoning write gives its slots back
    // (a leaked slot would leave the agent busy for ever). The one killed
    // is the first to finish an attempt (its pid is in the outputs then,
    // whatever the machine's load: a fixed delay left it none under CI).
    let t = std::time::Instant::now();
    let first = loop {
        let done = histories(&url)
            .values()
            .flatten()
            .find_map(|(_, _, p)| p["output"]["worker"].as_u64());
        if let Some(pid) = done {
            break pid;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no attempt ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    let i = workers
        .iter()
        .position(|w| u64::from(w.id()) == first)
        .expect("a step's parent is one of the workers");
    workers[i].kill().unwrap();
    workers[i].wait().unwrap();
    workers[i] = worker(&env, &url, "2s", "gpu-w1b.log");
    wait_succeeded(&env, &url, &runs);
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    // Every attempt on the agent as (start, end), from the histories.
    let mut spans = Vec::new();
    let mut pids = std::collections::HashSet::new();
    for (run, events) in histories(&url) {
        let mut started: HashMap<(String, u64), chrono::DateTime<chrono::Utc>> = HashMap::new();
        for (_, at, p) in &events {
            let (Some(step), Some(attempt)) = (p["step"].as_str(), p["attempt"].as_u64()) else {
                continue;
            };
            match p["type"].as_str() {
                Some("StepStarted") => {
                    assert_eq!(p["agent"], "gpu", "{p}");
                    started.insert((step.to_string(), attempt), *at);
                }
                Some("StepSucceeded" | "StepFailed" | "StepTimedOut" | "StepAbandoned") => {
                    if let Some(pid) = p["output"]["worker"].as_u64() {
                        pids.insert(pid);
                    }
                    let start = started
                        .remove(&(step.to_string(), attempt))
                        .unwrap_or_else(|| panic!("run {run}: {step} ended unstarted"));
                    spans.push((start, *at));
                }
                _ => {}
            }
        }
        assert!(started.is_empty(), "run {run}: attempts never ended");
    }
    assert!(
        spans.len() >= 24,
        "8 runs x 3 steps: {} attempts",
        spans.len()
    );
    // The most attempts running at one moment (ends before starts at a tie).
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = spans
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    assert!(
        most <= 2,
        "{most} attempts on the agent at once (concurrency 2)"
    );
    assert_eq!(most, 2, "the agent's two slots were used together");
    // Several workers executed attempts (each step prints its worker's
    // pid), so the limit was shared, not each worker's own.
    assert!(pids.len() >= 2, "attempts ran on workers {pids:?}");
    let store = Store::open_read_only(&url).unwrap();
    assert!(
        store.index_scan("agent_slots", "").unwrap().is_empty(),
        "every slot was given back"
    );
}

const FLAKY_FIRST: &str = r#"
name: flaky-first
agents:
  a_flaky:
    skills: [work]
    shell: 'echo "upstream unavailable" >&2; exit 1'
    circuit_breaker: { failure_threshold: 2, cool_down: 10m }
  b_steady:
    skills: [work]
    shell: 'sleep 1; echo "{\"worker\": $PPID}"'
defaults:
  strategy: first
  retry: { max_attempts: 5, initial_backoff: 50ms, multiplier: 1, max_backoff: 50ms }
steps:
  - id: s
    skills: [work]
"#;

/// An agent's circuit opened by one worker holds on every worker. One
/// run's two failures on `a_flaky` open its circuit (for 10 minutes) on
/// the worker executing it, and that run ends on `b_steady`. Six runs
/// submitted after — spread over both workers, one of which has not
/// executed anything on `a_flaky` since it started, when the circuit
/// was closed — must never start an attempt on `a_flaky`: routing
/// (`strategy: first`) would pick it whenever its circuit looked closed.
#[test]
fn a_circuit_opened_on_one_worker_holds_on_every_worker() {
    let url = fresh_postgres();
    let env = Env::new();
    env.write("flaky.yaml", FLAKY_FIRST);
    let mut workers = two_workers(&env, &url, "5s", "flaky");
    let first = submit(&env, &url, "flaky.yaml", 1).remove(0);
    wait_succeeded(&env, &url, std::slice::from_ref(&first));
    // The circuit opened on the agent's stream.
    let store = Store::open_read_only(&url).unwrap();
    let agent = chronicle_store::StreamId::named("agent:a_flaky").unwrap();
    let opened = store
        .read_stream(&agent, chronicle_store::Seq(1))
        .unwrap()
        .into_iter()
        .filter(|e| e.decode::<serde_json::Value>().unwrap()["type"] == "CircuitOpened")
        .count();
    assert_eq!(opened, 1, "the first run's failures opened the circuit");
    let runs = submit(&env, &url, "flaky.yaml", 6);
    wait_succeeded(&env, &url, &runs);
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let histories = histories(&url);
    // The worker of a run: `b_steady` prints its parent, the worker.
    let worker_of = |run: &String| {
        histories[run]
            .iter()
            .find_map(|(_, _, p)| p["output"]["worker"].as_u64())
            .unwrap_or_else(|| panic!("run {run} has no output from b_steady"))
    };
    let opener = worker_of(&first);
    let mut on_flaky = Vec::new();
    for run in &runs {
        for (_, _, p) in &histories[run] {
            if p["type"] == "StepStarted" && p["agent"] == "a_flaky" {
                on_flaky.push(run.clone());
            }
        }
    }
    assert!(
        on_flaky.is_empty(),
        "attempts started on a_flaky while its circuit was open, in runs {on_flaky:?}"
    );
    // The worker that did not open the circuit executed some of them (at
    // most 4 runs a worker, each held a second): its view was tested.
    let others = runs.iter().filter(|r| worker_of(r) != opener).count();
    assert!(
        others >= 1,
        "every run went to the worker that opened the circuit ({opener})"
    );
}

const ALWAYS_FAILING: &str = r#"
name: always-failing
agents:
  a_flaky:
    skills: [work]
    shell: 'sleep 0.2; echo "worker $PPID: upstream unavailable" >&2; exit 1'
    circuit_breaker: { failure_threshold: 1, cool_down: 500ms }
defaults:
  retry: { max_attempts: 3, initial_backoff: 50ms, multiplier: 1, max_backoff: 50ms }
steps:
  - id: s
    skills: [work]
"#;

/// After its cool-down an agent's circuit lets one probe through — one
/// across all workers, not one per worker. Six runs of one always failing
/// step on two workers: the first failure opens the circuit; from then
/// on, every attempt on the agent is a half-open probe, and no two of
/// them run at once (from the histories), while both workers had runs
/// waiting for the circuit.
#[test]
fn a_half_open_circuit_lets_one_probe_through_across_workers() {
    let url = fresh_postgres();
    let env = Env::new();
    env.write("failing.yaml", ALWAYS_FAILING);
    let mut workers = two_workers(&env, &url, "5s", "probe");
    let runs = submit(&env, &url, "failing.yaml", 6);
    // Every run ends failed (its three attempts failed).
    let t = std::time::Instant::now();
    for run in &runs {
        loop {
            let s = chronicle(&env, &url, &["status", run, "--json"]).json();
            if s["status"] == "failed" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "run {run} did not fail: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let store = Store::open_read_only(&url).unwrap();
    let agent = chronicle_store::StreamId::named("agent:a_flaky").unwrap();
    let circuit: Vec<(chrono::DateTime<chrono::Utc>, String)> = store
        .read_stream(&agent, chronicle_store::Seq(1))
        .unwrap()
        .into_iter()
        .map(|e| {
            let p = e.decode::<serde_json::Value>().unwrap();
            (e.recorded_at, p["type"].as_str().unwrap().to_string())
        })
        .collect();
    let opened = circuit
        .iter()
        .find(|(_, t)| t == "CircuitOpened")
        .map(|(at, _)| *at)
        .expect("the first failure opened the circuit");
    assert!(
        circuit.iter().any(|(_, t)| t == "CircuitHalfOpened"),
        "the circuit half-opened: {circuit:?}"
    );
    // Attempts on the agent as (start, end); the probes start after the
    // circuit first opened.
    let mut probes = Vec::new();
    let mut probers = std::collections::HashSet::new();
    let histories = super::histories(&url);
    for run in &runs {
        let mut started: HashMap<u64, chrono::DateTime<chrono::Utc>> = HashMap::new();
        for (_, at, p) in &histories[run] {
            match p["type"].as_str() {
                Some("StepStarted") => {
                    started.insert(p["attempt"].as_u64().unwrap(), *at);
                }
                Some("StepFailed" | "StepTimedOut" | "StepAbandoned") => {
                    let start = started[&p["attempt"].as_u64().unwrap()];
                    if start > opened {
                        probes.push((start, *at, run.clone()));
                        // The step's stderr names its worker (its parent).
                        probers.insert(p["stderr"]["text"].as_str().unwrap_or("").to_string());
                    }
                }
                _ => {}
            }
        }
    }
    assert!(
        probes.len() >= 6,
        "probes after the circuit opened: {probes:?}"
    );
    probes.sort();
    for pair in probes.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two probes ran at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(
        probers.len() >= 2,
        "the probes came from both workers: {probers:?}"
    );
}

const HALF_FAILING: &str = r#"
name: half-failing
agents:
  a_flaky:
    skills: [work]
    shell: 'n=$(od -An -N1 -tu1 /dev/urandom); if [ $((n % 2)) -eq 0 ]; then echo "{}"; else exit 1; fi'
    circuit_breaker: { failure_threshold: 2, cool_down: 300ms }
  b_steady:
    skills: [work]
    shell: 'echo "{}"'
defaults:
  strategy: first
  retry: { max_attempts: 8, initial_backoff: 20ms, multiplier: 1, max_backoff: 20ms }
steps:
  - id: a
    skills: [work]
  - id: b
    needs: [a]
    skills: [work]
  - id: c
    needs: [b]
    skills: [work]
"#;

/// Many runs on two workers through an agent whose circuit keeps opening
/// and closing (half its attempts fail; 300 ms cool-down): both workers'
/// decisions race on the agent's stream all along — outcomes appended,
/// starts checked against it — and every run still succeeds, no step has
/// two attempts at once, and every chain verifies.
#[test]
fn runs_through_a_flapping_circuit_on_two_workers_all_succeed() {
    let url = fresh_postgres();
    let env = Env::new();
    env.write("half.yaml", HALF_FAILING);
    let mut workers = two_workers(&env, &url, "5s", "flap");
    let runs = submit(&env, &url, "half.yaml", 24);
    wait_succeeded(&env, &url, &runs);
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let histories = histories(&url);
    let mut transitions = 0;
    for run in &runs {
        super::assert_no_overlap(run, &histories[run]);
    }
    let store = Store::open_read_only(&url).unwrap();
    let agent = chronicle_store::StreamId::named("agent:a_flaky").unwrap();
    for e in store.read_stream(&agent, chronicle_store::Seq(1)).unwrap() {
        let p = e.decode::<serde_json::Value>().unwrap();
        if p["type"] == "CircuitOpened" {
            transitions += 1;
        }
    }
    assert!(transitions >= 1, "the circuit never opened");
    let verify = chronicle(&env, &url, &["verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}
