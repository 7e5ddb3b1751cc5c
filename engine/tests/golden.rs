//! Golden histories: whole runs of the example workflows with an injected
//! clock and id source, their event histories pinned with insta. Steps run
//! one at a time (max_parallel 1) so the order of events is fixed.

use chronicle_engine::ids::RunStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chronicle_engine::model::load_file;
use chronicle_engine::runtime::{EngineBuilder, FunctionError, IdSource};
use chronicle_store::{ManualClock, Seq};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Payloads of a run, with the wall-time measurements zeroed and the
/// temporary directory named `[TMP]`.
fn history(
    engine: &chronicle_engine::runtime::Engine,
    run: chronicle_engine::ids::RunId,
    tmp: &str,
) -> Vec<Value> {
    engine
        .store()
        .read_stream(&run.stream(), Seq(1))
        .unwrap()
        .into_iter()
        .map(|env| {
            let text = String::from_utf8(env.payload)
                .unwrap()
                .replace(tmp, "[TMP]");
            let mut v: Value = serde_json::from_str(&text).unwrap();
            if let Some(m) = v.as_object_mut() {
                if m.contains_key("duration_ms") {
                    m.insert("duration_ms".into(), json!(0));
                }
                if m.get("type") == Some(&json!("RunCreated")) {
                    m.insert("workflow".into(), json!("<definition>"));
                }
            }
            json!({ "seq": env.seq.0, "at": env.recorded_at.to_rfc3339(), "event": v })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_audit_golden_history() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = EngineBuilder::new()
        .db(tmp.path().join("golden.redb"))
        .workdir(root())
        .clock(Arc::new(ManualClock::epoch()))
        .ids(IdSource::Sequential(AtomicU64::new(0)))
        .max_parallel(1)
        .build()
        .unwrap();
    let wf = load_file(&root().join("examples/log-audit.yaml")).unwrap();
    let out = tmp.path().join("out");
    let run = engine.start(wf, json!({ "out": out }), None).await.unwrap();
    let state = engine.wait(run).await.unwrap();
    assert_eq!(state.status.as_str(), "succeeded");
    let tmp_text = tmp.path().to_string_lossy().to_string();
    insta::assert_yaml_snapshot!("golden_log_audit", history(&engine, run, &tmp_text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_with_a_retry_golden_history() {
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let tmp = tempfile::tempdir().unwrap();
    let engine = EngineBuilder::new()
        .db(tmp.path().join("golden.redb"))
        .clock(Arc::new(ManualClock::epoch()))
        .ids(IdSource::Sequential(AtomicU64::new(0)))
        .max_parallel(1)
        .function("flaky", move |c| {
            let calls = c2.clone();
            async move {
                if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    Err(FunctionError::transient("first call fails"))
                } else {
                    Ok(json!({ "echo": c.input, "attempt": c.attempt }))
                }
            }
        })
        .build()
        .unwrap();
    let wf = chronicle_engine::model::parse_definition(
        "golden.yaml",
        "name: golden\ninput: { word: chronicle }\nsteps:\n  - id: one\n    function: flaky\n    with: { w: '${{ input.word }}' }\n    retry: { max_attempts: 3, initial_backoff: 1ms }\n  - id: two\n    needs: [one]\n    function: flaky\n    with: { prev: '${{ steps.one.output.attempt }}' }\n",
    )
    .unwrap();
    let run = engine
        .start(wf, json!({}), Some("golden-1".into()))
        .await
        .unwrap();
    engine.wait(run).await.unwrap();
    insta::assert_yaml_snapshot!(
        "golden_functions_retry",
        history(&engine, run, "/nonexistent")
    );
}
