//! One contract, every executor: success with output, failure with a kind
//! and message, and kill → canceled. Real processes, a real local HTTP
//! server, a registered function.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chronicle_engine::decide::AttemptResult;
use chronicle_engine::ids::RunId;
use chronicle_engine::model::{ErrorKind, ExecSpec, HttpSpec};
use chronicle_engine::runtime::FunctionError;
use chronicle_engine::runtime::exec::function::{Function, FunctionExecutor, FunctionFuture};
use chronicle_engine::runtime::exec::http::HttpExecutor;
use chronicle_engine::runtime::exec::process::ProcessExecutor;
use chronicle_engine::runtime::exec::{AttemptRequest, Dispatcher, Executor, OutputSink, Secrets};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The three behaviours every executor must show.
struct Case {
    name: &'static str,
    ok: ExecSpec,
    fail: ExecSpec,
    slow: ExecSpec,
}

fn req(exec: ExecSpec) -> AttemptRequest {
    AttemptRequest {
        hidden_env: Vec::new(),
        run_id: RunId(uuid::Uuid::from_u128(1)),
        step: "s".into(),
        attempt: 1,
        idempotency_key: "run:s".into(),
        traceparent: Some("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01".into()),
        input: json!({"n": 2}),
        exec,
        deadline: None,
        workdir: std::env::temp_dir(),
        env: BTreeMap::new(),
    }
}

async fn serve() -> String {
    use axum::{Json, Router, http::StatusCode, routing::post};
    let app = Router::new()
        .route(
            "/ok",
            post(|Json(b): Json<Value>| async move {
                Json(json!({"doubled": b["n"].as_i64().unwrap_or(0) * 2}))
            }),
        )
        .route(
            "/fail",
            post(|| async { (StatusCode::BAD_REQUEST, "bad input") }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn spec(f: impl FnOnce(&mut ExecSpec)) -> ExecSpec {
    let mut s = ExecSpec::default();
    f(&mut s);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_executor_honours_the_contract() {
    let base = serve().await;
    let http = |path: &str| HttpSpec {
        method: "POST".into(),
        url: format!("{base}{path}"),
        headers: BTreeMap::new(),
        body: None,
    };
    let sink = OutputSink {
        dir: None,
        secrets: Secrets::default(),
    };
    let mut functions: BTreeMap<String, Function> = BTreeMap::new();
    functions.insert(
        "double".into(),
        Arc::new(|c| -> FunctionFuture {
            Box::pin(async move { Ok(json!({"doubled": c.input["n"].as_i64().unwrap_or(0) * 2})) })
        }),
    );
    functions.insert(
        "fail".into(),
        Arc::new(|_| -> FunctionFuture {
            Box::pin(async { Err(FunctionError::permanent("bad input")) })
        }),
    );
    functions.insert(
        "slow".into(),
        Arc::new(|_| -> FunctionFuture {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(json!(null))
            })
        }),
    );
    let dispatcher = Dispatcher {
        process: ProcessExecutor {
            sink: sink.clone(),
            ledger: None,
            parent_death_signal: false,
        },
        http: HttpExecutor::new(sink.clone()),
        function: FunctionExecutor {
            functions,
            sink: Some(sink),
        },
    };
    let cases = vec![
        Case {
            name: "command",
            ok: spec(|s| {
                s.command = Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo \"{\\\"doubled\\\": $((INPUT_N * 2))}\"".into(),
                ])
            }),
            fail: spec(|s| {
                s.command = Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo bad input >&2; exit 64".into(),
                ])
            }),
            slow: spec(|s| s.command = Some(vec!["sleep".into(), "30".into()])),
        },
        Case {
            name: "shell",
            ok: spec(|s| s.shell = Some("echo \"{\\\"doubled\\\": $((INPUT_N * 2))}\"".into())),
            fail: spec(|s| s.shell = Some("echo bad input >&2; exit 64".into())),
            slow: spec(|s| s.shell = Some("sleep 30".into())),
        },
        Case {
            name: "http",
            ok: spec(|s| s.http = Some(http("/ok"))),
            fail: spec(|s| s.http = Some(http("/fail"))),
            slow: spec(|s| s.http = Some(http("/slow"))),
        },
        Case {
            name: "function",
            ok: spec(|s| s.function = Some("double".into())),
            fail: spec(|s| s.function = Some("fail".into())),
            slow: spec(|s| s.function = Some("slow".into())),
        },
    ];
    for c in cases {
        let (_keep, never) = oneshot::channel::<()>();
        match dispatcher.run(req(c.ok), never).await {
            AttemptResult::Succeeded { output, .. } => {
                assert_eq!(output, json!({"doubled": 4}), "{}", c.name)
            }
            other => panic!("{}: expected success, got {other:?}", c.name),
        }
        let (_keep, never) = oneshot::channel::<()>();
        match dispatcher.run(req(c.fail), never).await {
            AttemptResult::Failed { kind, message, .. } => {
                assert!(
                    matches!(kind, ErrorKind::Transient | ErrorKind::Permanent),
                    "{}: {kind:?}",
                    c.name
                );
                assert!(!message.is_empty(), "{}", c.name);
                assert!(
                    message.contains("bad input") || message.contains("64"),
                    "{}: {message}",
                    c.name
                );
            }
            other => panic!("{}: expected failure, got {other:?}", c.name),
        }
        let (kill, killed) = oneshot::channel();
        let t = std::time::Instant::now();
        let attempt = tokio::spawn(dispatcher_run(&dispatcher, req(c.slow), killed));
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill.send(()).unwrap();
        match attempt.await.unwrap() {
            AttemptResult::Failed {
                kind: ErrorKind::Canceled,
                ..
            } => {}
            other => panic!("{}: expected canceled, got {other:?}", c.name),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{}: kill took {:?}",
            c.name,
            t.elapsed()
        );
    }
}

fn dispatcher_run(
    d: &Dispatcher,
    r: AttemptRequest,
    kill: oneshot::Receiver<()>,
) -> chronicle_engine::runtime::exec::AttemptFuture {
    d.run(r, kill)
}

/// The process executor's pipes: the input reaches stdin as JSON; output
/// larger than a pipe's buffer is read whole while the process runs
/// (counted, capped in the event); and a process that exits without
/// reading a large input does not hold the attempt up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pipes_carry_input_and_large_output() {
    let process = ProcessExecutor {
        ledger: None,
        parent_death_signal: false,
        sink: OutputSink {
            dir: None,
            secrets: Secrets::default(),
        },
    };
    let run = |shell: &str, input: Value| {
        let mut r = req(spec(|s| s.shell = Some(shell.into())));
        r.input = input;
        let (_keep, never) = oneshot::channel::<()>();
        let fut = process.run(r, never);
        async move { (fut.await, _keep) }
    };
    // stdin → stdout: the output is the input.
    let input = json!({"n": 2, "text": "x".repeat(1000)});
    match run("cat", input.clone()).await.0 {
        AttemptResult::Succeeded { output, .. } => assert_eq!(output, input),
        other => panic!("expected success, got {other:?}"),
    }
    // 300,000 bytes of stdout and 100,000 of stderr: all counted, the
    // event keeps 64 KiB of each.
    let shell = "head -c 300000 /dev/zero | tr '\\0' a; head -c 100000 /dev/zero | tr '\\0' b >&2";
    match run(shell, json!({})).await.0 {
        AttemptResult::Succeeded { stdout, stderr, .. } => {
            let (out, err) = (stdout.unwrap(), stderr.unwrap());
            assert_eq!(out.total_bytes, 300_000);
            assert!(out.truncated && out.text.len() == 64 * 1024);
            assert!(out.text.bytes().all(|b| b == b'a'));
            assert_eq!(err.total_bytes, 100_000);
            assert!(err.truncated && err.text.bytes().all(|b| b == b'b'));
        }
        other => panic!("expected success, got {other:?}"),
    }
    // 1 MB of input to a process that never reads it: no INPUT_BLOB
    // (over the environment's limit), INPUT_N still set.
    let t = std::time::Instant::now();
    let big = json!({"blob": "z".repeat(1 << 20), "n": 7});
    let shell = r#"echo "{\"blob\": \"${INPUT_BLOB:-none}\", \"n\": $INPUT_N}""#;
    match tokio::time::timeout(Duration::from_secs(20), run(shell, big)).await {
        Ok((AttemptResult::Succeeded { output, .. }, _)) => {
            assert_eq!(output, json!({"blob": "none", "n": 7}))
        }
        Ok((other, _)) => panic!("expected success, got {other:?}"),
        Err(_) => panic!("an unread input held the attempt for {:?}", t.elapsed()),
    }
}

/// Every executor that reaches out gets the attempt's `traceparent`: an
/// HTTP step as the header, a process as `TRACEPARENT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempts_traceparent_reaches_http_and_process_steps() {
    use axum::{Json, Router, http::HeaderMap, routing::post};
    let app = Router::new().route(
        "/trace",
        post(|h: HeaderMap| async move {
            Json(json!({"traceparent": h.get("traceparent").and_then(|v| v.to_str().ok())}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let sink = OutputSink {
        dir: None,
        secrets: Secrets::default(),
    };
    let want = req(ExecSpec::default()).traceparent.unwrap();
    let http = HttpExecutor::new(sink.clone());
    let r = req(spec(|s| {
        s.http = Some(HttpSpec {
            method: "POST".into(),
            url: format!("http://{addr}/trace"),
            headers: BTreeMap::new(),
            body: None,
        })
    }));
    let (_keep, never) = oneshot::channel::<()>();
    match http.run(r, never).await {
        AttemptResult::Succeeded { output, .. } => assert_eq!(output["traceparent"], want),
        other => panic!("expected success, got {other:?}"),
    }
    let process = ProcessExecutor {
        ledger: None,
        parent_death_signal: false,
        sink,
    };
    let r = req(spec(|s| {
        s.shell = Some("printf '{\"tp\": \"%s\"}' \"$TRACEPARENT\"".into())
    }));
    let (_keep, never) = oneshot::channel::<()>();
    match process.run(r, never).await {
        AttemptResult::Succeeded { output, .. } => assert_eq!(output["tp"], want),
        other => panic!("expected success, got {other:?}"),
    }
}
