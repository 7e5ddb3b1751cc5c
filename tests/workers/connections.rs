//! Lost connections: the server ends the workers' connections at random
//! during 500 runs, an API node's while runs are submitted to it, and
//! refuses every connection for 1.5 s (an outage shorter than the lease).
//! A lost connection costs latency: nothing is lost, nothing is written
//! twice, no attempt is abandoned.

use std::process::Child;
use std::time::{Duration, Instant};

use chronicle_store::Store;
use serde_json::Value;

use super::failures::THREE_STEPS;
use super::*;
use crate::support::Env;

/// The database ends the workers' connections at random while two of them
/// run 500 runs (`pg_terminate_backend` on one of their connections every
/// 100 ms: the writer's in the middle of a group commit, the listener's,
/// a claim's, a heartbeat's). A commit whose connection dies may or may
/// not have been applied; either way nothing is lost and nothing is
/// written twice: every run succeeds (with the default poison-run rule),
/// `verify` passes, each step of each run succeeded exactly once, and no
/// step had two attempts at once.
///
/// Found (twelfth session): a run claimed by a worker whose recovery of it
/// then failed on the lost connection stayed in the worker's held leases
/// with no actor, renewed by every heartbeat and executed by no one — 2 of
/// 3 runs of this test left 13–251 runs unfinished after 5 minutes. A
/// claimed run that gets no actor now gives its lease back. And each cut
/// commit stopped its run (its attempts killed, recorded abandoned by the
/// next holder: 9–14 per test run); a commit whose connection is lost is
/// now tried again when it did not take effect and answered when it did
/// (`pg_xact_status`), and none is abandoned.
#[test]
fn connections_ended_under_load_lose_nothing_and_write_nothing_twice() {
    const RUNS: usize = 500;
    let env = Env::new();
    let url = fresh_postgres();
    let name = url.rsplit('/').next().unwrap().to_string();
    let app = format!("chronicle_cut_{}", uuid::Uuid::now_v7().simple());
    let worker_url = format!("{url}?application_name={app}");
    // The default `quarantine_after_crashes` (3): a lost connection is
    // not a crash, and must not make a healthy run look poisoned.
    let wf = env.write(
        "three.yaml",
        &THREE_STEPS.replace("defaults:\n  quarantine_after_crashes: 10\n", ""),
    );
    assert!(!std::fs::read_to_string(&wf).unwrap().contains("quarantine"));
    let submitted = offer_runs(&url, &wf, RUNS);
    // Killed when the test ends, also when it fails.
    let workers = Workers(
        (0..2)
            .map(|i| worker(&env, &worker_url, "2s", &format!("w{i}.log")))
            .collect(),
    );
    // The server ends one of the workers' connections every 100 ms.
    let cutter = Cutter::start(&name, &app, Duration::from_millis(100));
    let store = Store::open_read_only(&url).unwrap();
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let rows = run_rows(&store);
        if let Some(q) = rows
            .iter()
            .find(|v| v["status"] == "quarantined" || v["status"] == "failed")
        {
            panic!("a run did not succeed: {q}");
        }
        let done = rows.iter().filter(|v| v["status"] == "succeeded").count();
        if done == submitted.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let stuck: Vec<&Value> = rows
                .iter()
                .filter(|v| v["status"] != "succeeded")
                .take(3)
                .collect();
            panic!(
                "only {done} of {RUNS} runs succeeded in 5 minutes ({} connections ended); \
                 not done, for example: {stuck:?}; worker logs in {}",
                cutter.ended(),
                env.dir.path().display()
            );
        }
    }
    let ended = cutter.stop();
    drop(workers);
    eprintln!(
        "{RUNS} runs, {ended} connections ended: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(ended >= 5, "only {ended} connections were ended");
    let verify = chronicle(&env, &url, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let histories = histories(&url);
    assert_eq!(histories.len(), RUNS);
    let abandoned: usize = histories
        .values()
        .map(|h| {
            h.iter()
                .filter(|(_, _, p)| p["type"] == "StepAbandoned")
                .count()
        })
        .sum();
    eprintln!("attempts abandoned (their worker's write failed, the run recovered): {abandoned}");
    for (run, events) in &histories {
        assert_no_overlap(run, events);
        assert_each_succeeded_once(run, events, &["fetch", "transform", "store"]);
        let last = &events.last().unwrap().2;
        assert_eq!(last["type"], "RunSucceeded", "run {run}: {last}");
    }
}

/// Worker processes, SIGKILLed on drop (a failing test leaves none).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// An API node (`serve --no-worker`) whose connections the server ends at
/// random (one every 100 ms) while runs are submitted to it: every request
/// is answered — created (202), or 503 `storage` with a problem document —
/// never left hanging; a submission retried with its `Idempotency-Key`
/// after a 503 creates its run once; the node is still up and ready after,
/// and a worker executes every run.
#[test]
fn an_api_node_whose_connections_end_answers_and_creates_each_run_once() {
    let env = Env::new();
    let url = fresh_postgres();
    let name = url.rsplit('/').next().unwrap().to_string();
    let app = format!("chronicle_api_cut_{}", uuid::Uuid::now_v7().simple());
    // Killed when the test ends, also when it fails.
    let (node, base) = api_node(&env, &format!("{url}?application_name={app}"));
    let _serve = Workers(vec![node]);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |key: &str| {
        let wf = serde_json::json!({"name": "echo", "steps": [
            {"id": "a", "function": "chronicle.echo", "with": {"x": 1}}
        ]});
        let r = http
            .post(format!("{base}/v1/runs"))
            .bearer_auth("api-token")
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({"workflow": wf, "input": {}}))
            .send()
            .expect("every request is answered");
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let t = Instant::now();
    while http
        .get(format!("{base}/readyz"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(t.elapsed() < Duration::from_secs(20), "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server ends one of the node's connections every 100 ms.
    let cutter = Cutter::start(&name, &app, Duration::from_millis(100));
    let mut runs = std::collections::BTreeMap::new();
    let mut refused = 0;
    // Submissions for 3 s (at least 50).
    let submitting = Instant::now();
    let mut i = 0;
    while i < 50 || submitting.elapsed() < Duration::from_secs(3) {
        i += 1;
        let key = format!("submission-{i}");
        let mut tries = 0;
        let run = loop {
            let (code, body) = post(&key);
            match code {
                200 | 202 => break body["run_id"].as_str().unwrap().to_string(),
                503 => {
                    assert_eq!(
                        body["type"].as_str().map(|t| t.ends_with("storage")),
                        Some(true),
                        "{body}"
                    );
                    refused += 1;
                    tries += 1;
                    assert!(tries < 50, "submission {i} refused 50 times: {body}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => panic!("submission {i}: {code} {body}"),
            }
        };
        runs.insert(key, run);
    }
    let ended = cutter.stop();
    eprintln!("{i} submissions, {refused} answered 503, {ended} connections ended");
    assert!(ended >= 10, "only {ended} connections were ended");
    // Up and ready; one run per key.
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(ready, 200);
    let distinct: std::collections::BTreeSet<&String> = runs.values().collect();
    assert_eq!(distinct.len(), i, "a key's retries gave different runs");
    let w = Workers(vec![worker(&env, &url, "5s", "w.log")]);
    let t = Instant::now();
    let listed = loop {
        let listed = chronicle(&env, &url, &["list", "--json"]).json();
        let rows = listed.as_array().cloned().unwrap_or_default();
        if rows.len() == i && rows.iter().all(|r| r["status"] == "succeeded") {
            break rows;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not all succeeded: {listed}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    drop(w);
    // One run per submission, none twice.
    let listed: std::collections::BTreeSet<&str> = listed
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, distinct.iter().map(|r| r.as_str()).collect());
}

/// The database refuses every connection of the workers for 1.5 s (all
/// ended, none allowed: a server restart, a failover) while their runs'
/// steps execute. Shorter than the lease, the outage costs latency only:
/// every run succeeds, each step succeeded once, no attempt was abandoned
/// (the writes of the outage were tried again once the database was back),
/// and `verify` passes.
#[test]
fn a_database_outage_shorter_than_the_lease_abandons_no_attempt() {
    const RUNS: usize = 60;
    let env = Env::new();
    let url = fresh_postgres();
    let name = url.rsplit('/').next().unwrap().to_string();
    let wf = env.write(
        "slow.yaml",
        "name: slow\nsteps:\n  - id: a\n    command: [sh, -c, 'sleep 0.3; echo 1']\n  - id: b\n    needs: [a]\n    command: [sh, -c, 'sleep 0.3; echo 2']\n",
    );
    offer_runs(&url, &wf, RUNS);
    let workers = Workers(
        (0..2)
            .map(|i| worker(&env, &url, "10s", &format!("w{i}.log")))
            .collect(),
    );
    let statuses = || -> Vec<Value> {
        let listed = chronicle(&env, &url, &["list", "--json"]);
        listed.json().as_array().cloned().unwrap_or_default()
    };
    // Mid-flight: some runs done, steps running.
    let t = Instant::now();
    while statuses()
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .count()
        < 8
    {
        assert!(t.elapsed() < Duration::from_secs(60), "no run succeeded");
        std::thread::sleep(Duration::from_millis(50));
    }
    admin(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    std::thread::sleep(Duration::from_millis(1500));
    admin(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"));
    let t = Instant::now();
    loop {
        let rows = statuses();
        if rows.len() == RUNS && rows.iter().all(|r| r["status"] == "succeeded") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not all succeeded after the outage: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(workers);
    let verify = chronicle(&env, &url, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    let histories = histories(&url);
    assert_eq!(histories.len(), RUNS);
    for (run, events) in &histories {
        assert_no_overlap(run, events);
        assert_each_succeeded_once(run, events, &["a", "b"]);
        let abandoned: Vec<&Value> = events
            .iter()
            .filter(|(_, _, p)| p["type"] == "StepAbandoned")
            .map(|(_, _, p)| p)
            .collect();
        assert!(abandoned.is_empty(), "run {run}: {abandoned:?}");
    }
}

/// The server ends one connection of database `name` whose
/// `application_name` is `app`, at random, every `every` — from a thread
/// of its own, until stopped.
struct Cutter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ended: std::sync::Arc<std::sync::atomic::AtomicI64>,
    thread: std::thread::JoinHandle<()>,
}

impl Cutter {
    fn start(name: &str, app: &str, every: Duration) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let (name, app) = (name.to_string(), app.to_string());
        let thread = {
            let (stop, ended) = (stop.clone(), ended.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                let admin = rt.block_on(async {
                    let (c, conn) =
                        tokio_postgres::connect(&postgres_server(), tokio_postgres::NoTls)
                            .await
                            .unwrap();
                    tokio::spawn(conn);
                    c
                });
                while !stop.load(Relaxed) {
                    std::thread::sleep(every);
                    let row = rt
                        .block_on(admin.query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM \
                             pg_stat_activity WHERE datname = $1 AND application_name = $2 \
                             ORDER BY random() LIMIT 1) p",
                            &[&name, &app],
                        ))
                        .unwrap();
                    ended.fetch_add(row.get::<_, i64>(0), Relaxed);
                }
            })
        };
        Self {
            stop,
            ended,
            thread,
        }
    }

    /// Connections ended so far.
    fn ended(&self) -> i64 {
        self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stop ending connections; how many were ended.
    fn stop(self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap();
        self.ended.load(std::sync::atomic::Ordering::Relaxed)
    }
}
