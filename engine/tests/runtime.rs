//! The runtime against real processes, a real local HTTP server and a real
//! redb file.

use chronicle_engine::ids::RunStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chronicle_engine::event::RunEvent;
use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{Engine, EngineBuilder, EngineError, FunctionError};
use chronicle_engine::state::RunStatus;
use chronicle_store::Seq;
use serde_json::{Value, json};

fn engine(dir: &std::path::Path) -> Engine {
    EngineBuilder::new()
        .db(dir.join("db.redb"))
        .workdir(dir)
        .build()
        .unwrap()
}

fn history(
    engine: &Engine,
    run: chronicle_engine::ids::RunId,
) -> Vec<(chrono::DateTime<chrono::Utc>, RunEvent)> {
    engine
        .store()
        .read_stream(&run.stream(), Seq(1))
        .unwrap()
        .into_iter()
        .map(|e| (e.recorded_at, e.decode::<RunEvent>().unwrap()))
        .collect()
}

/// A process that exists and is not a zombie (a killed orphan stays a
/// zombie until its new parent reaps it; it runs nothing).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_fails_twice_then_succeeds_with_backoff_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "flaky.yaml",
        r#"
name: flaky
steps:
  - id: flaky
    shell: |
      n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
      if [ $n -lt 3 ]; then echo "attempt $n fails" >&2; exit 1; fi
      echo '{"attempts": '$n'}'
    retry: { max_attempts: 5, initial_backoff: 200ms, multiplier: 2 }
"#,
    )
    .unwrap();
    let e = engine(dir.path());
    let run = e.start(wf, json!({}), None).await.unwrap();
    let state = e.wait(run).await.unwrap();
    assert_eq!(state.status, RunStatus::Succeeded);
    let step = &state.steps["flaky"];
    assert_eq!(step.attempts.len(), 3);
    assert_eq!(step.output, Some(json!({"attempts": 3})));
    // Each retry started no earlier than the time recorded in StepFailed.
    let h = history(&e, run);
    let mut due = None;
    for (at, ev) in &h {
        match ev {
            RunEvent::StepFailed {
                next_retry_at,
                message,
                ..
            } => {
                assert!(message.contains("fails"), "{message}");
                due = *next_retry_at;
            }
            RunEvent::StepStarted { attempt, .. } if *attempt > 1 => {
                assert!(
                    *at >= due.unwrap(),
                    "attempt {attempt} started at {at}, before {due:?}"
                );
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "slow.yaml",
        r#"
name: slow
steps:
  - id: slow
    shell: |
      sleep 30 &
      echo $! >> children
      sleep 30
    timeout: 400ms
    retry: { max_attempts: 2, initial_backoff: 10ms }
"#,
    )
    .unwrap();
    let e = engine(dir.path());
    let started = Instant::now();
    let run = e.start(wf, json!({}), None).await.unwrap();
    let state = e.wait(run).await.unwrap();
    e.wait_all().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(state.status, RunStatus::Failed);
    let attempts = &state.steps["slow"].attempts;
    assert_eq!(attempts.len(), 2, "the timed-out attempt is retried");
    for a in attempts {
        assert!(
            a.error.as_deref().unwrap().contains("timeout"),
            "{:?}",
            a.error
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let children = std::fs::read_to_string(dir.path().join("children")).unwrap();
    for pid in children.lines() {
        let pid: i32 = pid.trim().parse().unwrap();
        assert!(!pid_alive(pid), "child {pid} of a timed-out step survived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_500_then_200_with_the_same_idempotency_key() {
    use axum::{Json, Router, http::HeaderMap, http::StatusCode, routing::post};
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicU32::new(0));
    let app = {
        let seen = seen.clone();
        let calls = calls.clone();
        Router::new().route(
            "/charge",
            post(move |headers: HeaderMap, Json(body): Json<Value>| {
                let seen = seen.clone();
                let calls = calls.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string();
                    seen.lock().unwrap().push(key);
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"error": "try again"})),
                        )
                    } else {
                        (StatusCode::OK, Json(json!({"charged": body["amount"]})))
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let wf = parse_definition(
        "pay.yaml",
        &format!(
            r#"
name: pay
steps:
  - id: charge
    http: {{ url: "http://{addr}/charge" }}
    with: {{ amount: 42 }}
    retry: {{ max_attempts: 3, initial_backoff: 50ms }}
"#
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let run = e.start(wf, json!({}), None).await.unwrap();
    let state = e.wait(run).await.unwrap();
    assert_eq!(state.status, RunStatus::Succeeded);
    assert_eq!(state.steps["charge"].attempts.len(), 2);
    assert_eq!(state.steps["charge"].output, Some(json!({"charged": 42})));
    let keys = seen.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1]);
    assert_eq!(keys[0], format!("{run}:charge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_its_middle_steps_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "diamond.yaml",
        r#"
name: diamond
steps:
  - id: a
    command: ["true"]
  - id: b
    needs: [a]
    command: [sleep, "1"]
  - id: c
    needs: [a]
    command: [sleep, "1"]
  - id: d
    needs: [b, c]
    command: ["true"]
"#,
    )
    .unwrap();
    let e = engine(dir.path());
    let t = Instant::now();
    let run = e.start(wf, json!({}), None).await.unwrap();
    let state = e.wait(run).await.unwrap();
    let took = t.elapsed();
    assert_eq!(state.status, RunStatus::Succeeded);
    assert!(
        took < Duration::from_millis(1800),
        "took {took:?}: b and c did not run in parallel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_running_processes() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "long.yaml",
        "name: long\nsteps:\n  - id: long\n    shell: 'echo $$ > pid; sleep 30'\n  - id: after\n    needs: [long]\n    command: ['true']\n",
    )
    .unwrap();
    let e = engine(dir.path());
    let run = e.start(wf, json!({}), None).await.unwrap();
    let pid_file = dir.path().join("pid");
    while !pid_file.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(pid));
    e.cancel(run, "test").await.unwrap();
    let state = e.wait(run).await.unwrap();
    assert_eq!(state.status, RunStatus::Canceled);
    assert_eq!(state.steps["after"].status.as_str(), "waiting");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pid_alive(pid), "the canceled step's process survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_lets_the_running_attempt_finish_and_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "paused.yaml",
        "name: paused\nsteps:\n  - id: first\n    shell: 'touch started; sleep 0.3'\n  - id: second\n    needs: [first]\n    shell: 'touch second'\n",
    )
    .unwrap();
    let e = engine(dir.path());
    let run = e.start(wf, json!({}), None).await.unwrap();
    while !dir.path().join("started").exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    e.pause(run).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = e.state(run).unwrap();
    assert_eq!(s.status, RunStatus::Paused);
    assert_eq!(s.steps["first"].status.as_str(), "succeeded");
    assert_eq!(s.steps["second"].status.as_str(), "ready");
    assert!(!dir.path().join("second").exists());
    e.resume(run).await.unwrap();
    let s = e.wait(run).await.unwrap();
    assert_eq!(s.status, RunStatus::Succeeded);
    assert!(dir.path().join("second").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_existing_run() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "one.yaml",
        "name: one\nsteps:\n  - id: a\n    command: ['true']\n",
    )
    .unwrap();
    let e = engine(dir.path());
    let a = e
        .start(wf.clone(), json!({}), Some("order-17".into()))
        .await
        .unwrap();
    let (b, created) = e
        .submit(wf.clone(), json!({}), Some("order-17".into()))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert!(!created);
    // The same key with another input names a different request: refused.
    let other = e
        .start(wf, json!({"n": 1}), Some("order-17".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&other, EngineError::IdempotencyKeyReused { run, .. } if *run == a),
        "{other}"
    );
    e.wait(a).await.unwrap();
    assert_eq!(e.list().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_in_process_and_feed_templates() {
    let e = EngineBuilder::new()
        .function("double", |c| async move {
            let n = c.input["n"]
                .as_i64()
                .ok_or_else(|| FunctionError::permanent("n must be a number"))?;
            Ok(json!({ "n": n * 2 }))
        })
        .build()
        .unwrap();
    let wf = parse_definition(
        "fn.yaml",
        "name: fn\ninput: { n: 5 }\nsteps:\n  - id: one\n    function: double\n    with: { n: '${{ input.n }}' }\n  - id: two\n    needs: [one]\n    function: double\n    with: { n: '${{ steps.one.output.n }}' }\n  - id: bad\n    function: double\n    with: { n: oops }\n    continue_on_failure: true\n",
    )
    .unwrap();
    let run = e.start(wf, json!({}), None).await.unwrap();
    let s = e.wait(run).await.unwrap();
    assert_eq!(s.steps["two"].output, Some(json!({"n": 20})));
    assert_eq!(s.steps["bad"].status.as_str(), "failed");
    assert_eq!(
        s.steps["bad"].attempts.len(),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!(s.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_never_reaches_the_database_or_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let canary = "canary-7f3a9c-do-not-log";
    let wf = parse_definition(
        "secret.yaml",
        r#"
name: secret
secrets: [API_TOKEN]
steps:
  - id: use
    shell: 'echo "token=$INPUT_TOKEN"; echo "stderr $INPUT_TOKEN" >&2; head -c 70000 /dev/zero | tr "\0" x; echo $INPUT_TOKEN'
    with: { token: '${{ secrets.API_TOKEN }}' }
  - id: fail
    shell: 'echo "bad $INPUT_TOKEN" >&2; exit 3'
    with: { token: '${{ secrets.API_TOKEN }}' }
    retry: { max_attempts: 1 }
"#,
    )
    .unwrap();
    let e = EngineBuilder::new()
        .db(dir.path().join("db.redb"))
        .workdir(dir.path())
        .secret("API_TOKEN", canary)
        .build()
        .unwrap();
    let run = e.start(wf, json!({}), None).await.unwrap();
    let s = e.wait(run).await.unwrap();
    assert_eq!(s.steps["use"].status.as_str(), "succeeded");
    let out = serde_json::to_string(&s.steps["use"].output).unwrap();
    assert!(out.contains("[redacted:API_TOKEN]"), "{out}");
    drop(e);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut files = vec![dir.path().join("db.redb")];
    let outputs = dir.path().join("db.redb.outputs");
    assert!(outputs.exists(), "the 70 KB stdout was stored in full");
    files.extend(
        std::fs::read_dir(&outputs)
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{} contains the secret",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stays_open_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "cb.yaml",
        r#"
name: cb
agents:
  broken:
    skills: [work]
    command: ["false"]
    circuit_breaker: { failure_threshold: 1, cool_down: 1h }
steps:
  - id: job
    skills: [work]
    retry: { max_attempts: 1 }
"#,
    )
    .unwrap();
    {
        let e = engine(dir.path());
        let run = e.start(wf.clone(), json!({}), None).await.unwrap();
        assert_eq!(e.wait(run).await.unwrap().status, RunStatus::Failed);
        e.wait_all().await.unwrap();
        let agent = e
            .store()
            .read_stream(
                &chronicle_engine::ids::agent_stream("broken").unwrap(),
                Seq(1),
            )
            .unwrap();
        assert_eq!(
            agent.len(),
            2,
            "FailureCounted and CircuitOpened were recorded on agent:broken"
        );
    }
    let e = engine(dir.path());
    let run = e.start(wf, json!({}), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = e.state(run).unwrap();
    assert_eq!(
        s.steps["job"].status.as_str(),
        "blocked",
        "the restarted engine remembers the open circuit"
    );
    assert!(
        s.steps["job"].attempts.is_empty(),
        "blocked time spends no attempt"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breakers_failure_count_survives_a_restart_and_is_written_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let wf = parse_definition(
        "cb2.yaml",
        r#"
name: cb2
agents:
  flaky:
    skills: [work]
    command: ["false"]
    circuit_breaker: { failure_threshold: 2, cool_down: 1h }
steps:
  - id: job
    skills: [work]
    retry: { max_attempts: 1 }
"#,
    )
    .unwrap();
    let agent = chronicle_engine::ids::agent_stream("flaky").unwrap();
    // One failure, then a restart, then one more: two in a row open it.
    for round in 0..2 {
        // A write of the engine before may still hold the file a moment.
        let t = Instant::now();
        let e = loop {
            match EngineBuilder::new()
                .db(dir.path().join("db.redb"))
                .workdir(dir.path())
                .build()
            {
                Ok(e) => break e,
                Err(err) if t.elapsed() < Duration::from_secs(5) => {
                    assert!(err.to_string().contains("in use"), "{err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("{err}"),
            }
        };
        let run = e.start(wf.clone(), json!({}), None).await.unwrap();
        assert_eq!(e.wait(run).await.unwrap().status, RunStatus::Failed);
        e.wait_all().await.unwrap();
        let events: Vec<String> = e
            .store()
            .read_stream(&agent, Seq(1))
            .unwrap()
            .iter()
            .map(|env| env.decode::<serde_json::Value>().unwrap()["type"].to_string())
            .collect();
        let opened = events.iter().any(|t| t.contains("CircuitOpened"));
        assert_eq!(opened, round == 1, "round {round}: {events:?}");
        // Each agent event sits in the same commit as the run's StepFailed
        // that caused it: adjacent positions, one time.
        let run_events = e.store().read_stream(&run.stream(), Seq(1)).unwrap();
        let failed = run_events
            .iter()
            .find(|env| env.decode::<serde_json::Value>().unwrap()["type"] == "StepFailed")
            .unwrap();
        let counted = e
            .store()
            .read_stream(&agent, Seq(1))
            .unwrap()
            .into_iter()
            .filter(|env| {
                let v = env.decode::<serde_json::Value>().unwrap();
                v["type"] == "FailureCounted" && v["run_id"] == run.to_string()
            })
            .collect::<Vec<_>>();
        assert_eq!(counted.len(), 1, "round {round}");
        assert_eq!(counted[0].recorded_at, failed.recorded_at);
        assert!(
            counted[0].position.0.abs_diff(failed.position.0) <= 2,
            "round {round}: positions {} and {}",
            counted[0].position.0,
            failed.position.0
        );
        e.shutdown().await;
    }
}
