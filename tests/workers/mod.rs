//! Workers on PostgreSQL, as real processes: the CLI and the API on a
//! PostgreSQL database, and commands reaching the worker that holds a run;
//! agents shared by workers are in `agents`, what befalls workers (killed,
//! paused, cut off) in `failures`.

mod agents;
mod bench;
mod connections;
mod directory;
mod failures;
mod tamper;
mod tls;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chronicle_store::{Seq, Store, StoreOptions};
use serde_json::Value;

use crate::support::{BIN, Env, marked_processes, root};

/// The test server (`scripts/test` starts one with pg_virtualenv).
fn postgres_server() -> String {
    std::env::var("CHRONICLE_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "CHRONICLE_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL (pg_virtualenv, Debian package postgresql-common) and sets it"
        )
    })
}

/// A superuser's statement on the test server (autocommit).
pub fn admin(sql: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&postgres_server(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.simple_query(sql).await.unwrap()
    })
}

/// The first column of the first row of `sql`.
pub fn admin_value(sql: &str) -> String {
    admin(sql)
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default()
}

/// Offer `n` runs of the workflow file `wf` to the workers of `url`, from
/// an engine that executes nothing (input `{"i": i}`); their ids.
pub fn offer_runs(url: &str, wf: &std::path::Path, n: usize) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = chronicle_engine::runtime::EngineBuilder::new()
            .db(url)
            .executes(false)
            .build()
            .unwrap();
        let workflow = chronicle_engine::model::load_file(wf).unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let run = engine
                .start(workflow.clone(), serde_json::json!({ "i": i }), None)
                .await
                .unwrap();
            ids.push(run.to_string());
        }
        ids
    })
}

/// `chronicle serve --no-worker` on `db` (token `api-token`, its log in
/// `serve.log`): the process and the base URL it listens on.
pub fn api_node(env: &Env, db: &str) -> (Child, String) {
    let mut serve = Command::new(BIN)
        .current_dir(env.dir.path())
        .args([
            "--db",
            db,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-worker",
        ])
        .env("CHRONICLE_TOKEN", "api-token")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(env.path("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (serve, base)
}

/// A new, empty database; its URL.
pub fn fresh_postgres() -> String {
    let name = format!("chronicle_t_{}", uuid::Uuid::now_v7().simple());
    chronicle_store::create_postgres_database(&postgres_server(), &name).unwrap()
}

/// A `chronicle worker` on `url`, its log in `log`. At most 4 attempts at
/// once: on 2 cores, hundreds of processes at once stretch each attempt to
/// seconds, and an attempt cut by 3 kills in a row quarantines its run (as
/// it should: a step that keeps taking its engine down is a poison run).
fn worker(env: &Env, url: &str, lease: &str, log: &str) -> Child {
    let err = std::fs::File::create(env.path(log)).unwrap();
    Command::new(BIN)
        .current_dir(env.dir.path())
        .args(["--db", url, "worker", "--lease", lease, "--grace", "1s"])
        .args(["--concurrency", "4"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap()
}

fn chronicle(env: &Env, url: &str, args: &[&str]) -> crate::support::Out {
    let mut c = Command::new(BIN);
    c.current_dir(env.dir.path())
        .arg("--db")
        .arg(url)
        .args(args);
    crate::support::Out::from(c.output().unwrap())
}

/// Wait until a process whose command line holds `marker` runs (a step
/// started; at most 30 s).
fn wait_started(marker: &str) {
    let t = Instant::now();
    while marked_processes(marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the step marked {marker} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until every one of `runs` has succeeded (at most 120 s in all).
fn wait_succeeded(env: &Env, url: &str, runs: &[String]) {
    let t = Instant::now();
    for run in runs {
        loop {
            let s = chronicle(env, url, &["status", run, "--json"]).json();
            if s["status"] == "succeeded" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "run {run} did not succeed: {s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Every run's events as JSON payloads with their seq and time.
fn histories(url: &str) -> HashMap<String, Vec<(u64, chrono::DateTime<chrono::Utc>, Value)>> {
    let store = Store::open_read_only(url).unwrap();
    let mut out = HashMap::new();
    for head in store.streams().unwrap() {
        if head.stream.as_run().is_none() {
            continue;
        }
        let events = store
            .read_stream(&head.stream, Seq(1))
            .unwrap()
            .into_iter()
            .map(|e| (e.seq.0, e.recorded_at, e.decode::<Value>().unwrap()))
            .collect();
        out.insert(head.stream.key(), events);
    }
    out
}

/// Every row of the run index (`RunSummary` as JSON), as `store` reads it
/// now.
fn run_rows(store: &Store) -> Vec<Value> {
    store
        .index_scan("runs", "")
        .unwrap()
        .iter()
        .map(|(_, v)| serde_json::from_slice(v).unwrap())
        .collect()
}

/// Each of `steps` succeeded exactly once in `run`'s `events`.
fn assert_each_succeeded_once(
    run: &str,
    events: &[(u64, chrono::DateTime<chrono::Utc>, Value)],
    steps: &[&str],
) {
    for step in steps {
        let succeeded = events
            .iter()
            .filter(|(_, _, p)| p["type"] == "StepSucceeded" && p["step"] == *step)
            .count();
        assert_eq!(
            succeeded, 1,
            "run {run}: step {step} succeeded {succeeded} times"
        );
    }
}

/// No step of `events` has two attempts running at once: in seq order a
/// step's attempt starts only after its previous attempt's outcome, and
/// its recorded start is not before that outcome's time.
fn assert_no_overlap(run: &str, events: &[(u64, chrono::DateTime<chrono::Utc>, Value)]) {
    // step -> (attempt running, since)
    let mut running: HashMap<String, (u64, chrono::DateTime<chrono::Utc>)> = HashMap::new();
    let mut ended: HashMap<String, chrono::DateTime<chrono::Utc>> = HashMap::new();
    for (seq, at, p) in events {
        let (Some(step), Some(attempt)) = (p["step"].as_str(), p["attempt"].as_u64()) else {
            continue;
        };
        let kind = p["type"].as_str().unwrap_or("");
        if kind == "StepStarted" {
            if let Some((other, _)) = running.get(step) {
                panic!(
                    "run {run} seq {seq}: step {step} attempt {attempt} started while attempt {other} runs"
                );
            }
            if let Some(end) = ended.get(step) {
                assert!(
                    at >= end,
                    "run {run} seq {seq}: step {step} attempt {attempt} starts at {at}, before the previous attempt ended at {end}"
                );
            }
            running.insert(step.to_string(), (attempt, *at));
        } else if running.get(step).is_some_and(|(a, _)| *a == attempt) {
            running.remove(step);
            ended.insert(step.to_string(), *at);
        }
    }
}

/// An export's lines without their `position`: where an event sits in
/// one database's global order, given anew by the database importing it
/// (dense from 1 on redb, numbered by transaction on PostgreSQL); the
/// rest — stream, seq, time, payload, hash — is the history.
fn without_positions(export: &str) -> Vec<Value> {
    export
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let position = v.as_object_mut().unwrap().remove("position");
            assert!(position.and_then(|p| p.as_u64()).is_some(), "{l}");
            v
        })
        .collect()
}

/// The CLI on a PostgreSQL database: run the log-audit example in the
/// foreground, then list, status, verify, replay and export it; the export
/// imports into a redb file and verifies there, byte for byte the same
/// history; and an exported redb history imports into PostgreSQL.
#[test]
fn the_cli_works_on_postgres_and_histories_move_between_backends() {
    let env = Env::new();
    let url = fresh_postgres();
    let mut c = Command::new(BIN);
    c.current_dir(root())
        .args(["--db", &url, "run", "examples/log-audit.yaml"]);
    let out = crate::support::Out::from(c.output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    let list = chronicle(&env, &url, &["list", "--json"]);
    assert_eq!(list.json()[0]["status"], "succeeded");
    assert_eq!(chronicle(&env, &url, &["verify"]).code, 0);
    let at = chronicle(&env, &url, &["replay", &run, "--at", "3", "--json"]);
    assert_eq!(at.code, 0, "{at:?}");
    assert_eq!(at.json()["seq"], 3);
    let export = chronicle(&env, &url, &["export", &run]);
    assert_eq!(export.code, 0);
    let file = env.write("history.jsonl", &export.stdout);
    let redb = env.path("copy.redb");
    let mut c = Command::new(BIN);
    c.current_dir(env.dir.path())
        .arg("--db")
        .arg(&redb)
        .args(["import", file.to_str().unwrap()]);
    assert_eq!(c.status().unwrap().code(), Some(0));
    let mut c = Command::new(BIN);
    c.current_dir(env.dir.path())
        .arg("--db")
        .arg(&redb)
        .args(["export", &run]);
    let back = crate::support::Out::from(c.output().unwrap());
    assert_eq!(
        without_positions(&back.stdout),
        without_positions(&export.stdout),
        "the history changed on the way"
    );
    // And from redb into another PostgreSQL database.
    let other = fresh_postgres();
    let imported = chronicle(&env, &other, &["import", file.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{imported:?}");
    assert_eq!(
        without_positions(&chronicle(&env, &other, &["export", &run]).stdout),
        without_positions(&export.stdout)
    );
    assert_eq!(chronicle(&env, &other, &["verify"]).code, 0);
    drop(Store::open(&other, StoreOptions::default()).unwrap());
}

/// Commands from other processes reach the worker executing the run: a
/// signal sent with the CLI lets the run go on in the worker, and a cancel
/// sent with the CLI makes the worker kill the running step; the history
/// records both, and no attempt is abandoned.
#[test]
fn signals_and_cancels_from_the_cli_reach_the_worker_holding_the_run() {
    let env = Env::new();
    let url = fresh_postgres();
    let marker = format!("remote-{}", uuid::Uuid::now_v7().simple());
    let wf = env.write(
        "waits.yaml",
        &format!(
            "name: waits\nsteps:\n  - id: go\n    signal: go\n  - id: long\n    needs: [go]\n    command: [sh, -c, 'sleep 60; echo {{}}', {marker}]\n"
        ),
    );
    let mut w = worker(&env, &url, "5s", "w.log");
    let run = chronicle(&env, &url, &["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = run.stdout.trim().to_string();
    let status = |step: &str| -> String {
        let s = chronicle(&env, &url, &["status", &run, "--json"]).json();
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        let st = steps
            .iter()
            .find(|x| x["id"] == step)
            .cloned()
            .unwrap_or_default();
        st["status"].as_str().unwrap_or("").to_string()
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("the worker waits for the signal", &|| {
        status("go") == "running"
    });
    let sent = chronicle(&env, &url, &["signal", &run, "go", "--data", r#"{"x":1}"#]);
    assert_eq!(sent.code, 0, "{sent:?}");
    wait("the long step runs", &|| {
        !marked_processes(&marker).is_empty()
    });
    let canceled = chronicle(&env, &url, &["cancel", &run]);
    assert_eq!(canceled.code, 0, "{canceled:?}");
    wait("the run ends canceled", &|| {
        chronicle(&env, &url, &["status", &run, "--json"]).json()["status"] == "canceled"
    });
    wait("the step's process is gone", &|| {
        marked_processes(&marker).is_empty()
    });
    let _ = w.kill();
    let _ = w.wait();
    let h = histories(&url).remove(&run).unwrap();
    let types: Vec<&str> = h
        .iter()
        .map(|(_, _, p)| p["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"SignalReceived"), "{types:?}");
    assert!(types.contains(&"RunCancelRequested"), "{types:?}");
    assert!(!types.contains(&"StepAbandoned"), "{types:?}");
    assert_eq!(*types.last().unwrap(), "RunCanceled");
    let go = h
        .iter()
        .find(|(_, _, p)| p["type"] == "StepSucceeded")
        .unwrap();
    assert_eq!(go.2["output"], serde_json::json!({"x": 1}));
}

/// `chronicle serve --no-worker` on PostgreSQL answers the API and offers
/// the runs submitted to it; a `chronicle worker` executes them; the API
/// then shows them succeeded, and cancels a waiting run a worker holds.
#[test]
fn an_api_node_without_a_worker_offers_runs_to_the_workers() {
    let env = Env::new();
    let url = fresh_postgres();
    let (mut serve, base) = api_node(&env, &url);
    let http = reqwest::blocking::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut r = http
            .request(method, format!("{base}{path}"))
            .bearer_auth("api-token");
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().unwrap_or(Value::Null),
        )
    };
    let wait_ready = Instant::now();
    while call(reqwest::Method::GET, "/readyz", None).0 != 200 {
        assert!(
            wait_ready.elapsed() < Duration::from_secs(20),
            "never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let wf = serde_json::json!({"name": "echo", "steps": [
        {"id": "a", "function": "chronicle.echo", "with": {"x": 1}},
        {"id": "gate", "needs": ["a"], "signal": "go"}
    ]});
    let (code, created) = call(
        reqwest::Method::POST,
        "/v1/runs",
        Some(serde_json::json!({"workflow": wf, "input": {}})),
    );
    assert_eq!(code, 202, "{created}");
    let run = created["run_id"].as_str().unwrap().to_string();
    // Nothing executes it until a worker runs.
    std::thread::sleep(Duration::from_millis(500));
    let (_, s) = call(reqwest::Method::GET, &format!("/v1/runs/{run}"), None);
    assert_eq!(s["seq"], 2, "the API node executed the run itself: {s}");
    let mut w = worker(&env, &url, "5s", "w.log");
    let t = Instant::now();
    loop {
        let (_, s) = call(reqwest::Method::GET, &format!("/v1/runs/{run}"), None);
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        if steps
            .iter()
            .any(|x| x["id"] == "gate" && x["status"] == "running")
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the worker never got to the gate: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = call(
        reqwest::Method::POST,
        &format!("/v1/runs/{run}/signals/go"),
        Some(serde_json::json!({"data": {"ok": true}})),
    );
    assert_eq!(code / 100, 2);
    let t = Instant::now();
    loop {
        let (_, s) = call(reqwest::Method::GET, &format!("/v1/runs/{run}"), None);
        if s["status"] == "succeeded" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "not succeeded: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for c in [&mut w, &mut serve] {
        let _ = c.kill();
        let _ = c.wait();
    }
}
