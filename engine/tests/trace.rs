//! One trace per run, a span per attempt, and the `traceparent` a step
//! gets: checked with the OpenTelemetry SDK's in-memory exporter.

use std::collections::BTreeMap;

use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::EngineBuilder;
use opentelemetry::trace::{SpanId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::json;
use tracing_subscriber::prelude::*;

#[test]
fn a_run_is_one_trace_with_a_span_per_attempt_and_steps_get_its_traceparent() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: the default subscriber is this thread's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tp_file = dir.path().join("traceparent");
    let (run, state) = rt.block_on(async {
        let engine = EngineBuilder::new()
            .db(dir.path().join("t.redb"))
            .workdir(dir.path())
            .watchdog(false)
            .build()
            .unwrap();
        let wf = parse_definition(
            "t.yaml",
            &format!(
                "name: t\nsteps:\n  - id: a\n    shell: printf %s \"$TRACEPARENT\" > {}\n  - id: b\n    needs: [a]\n    command: ['false']\n    retry: {{ max_attempts: 2, initial_backoff: 10ms }}\n",
                tp_file.display()
            ),
        )
        .unwrap();
        let run = engine.start(wf, json!({}), None).await.unwrap();
        let state = engine.wait(run).await.unwrap();
        engine.wait_all().await.unwrap();
        (run, state)
    });
    assert_eq!(state.status.as_str(), "failed");
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let trace = chronicle_engine::runtime::trace::trace_id(run);
    let run_span = spans
        .iter()
        .find(|s| s.name == "run")
        .expect("the run's span");
    assert_eq!(
        run_span.span_context.trace_id(),
        trace,
        "the trace id is the run id"
    );
    let attempts: Vec<_> = spans.iter().filter(|s| s.name == "attempt").collect();
    assert_eq!(attempts.len(), 3, "a, and b twice");
    let attr = |s: &opentelemetry_sdk::trace::SpanData| -> BTreeMap<String, String> {
        s.attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    };
    let mut seen = Vec::new();
    for s in &attempts {
        assert_eq!(s.span_context.trace_id(), trace);
        assert_eq!(
            s.parent_span_id,
            run_span.span_context.span_id(),
            "an attempt is the run span's child"
        );
        let a = attr(s);
        assert_eq!(a["run_id"], run.to_string());
        seen.push((
            a["step_id"].clone(),
            a["attempt"].clone(),
            a["outcome"].clone(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("a".into(), "1".into(), "succeeded".into()),
            ("b".into(), "1".into(), "transient".into()),
            ("b".into(), "2".into(), "transient".into()),
        ]
    );
    // Step a saw its own span as the parent of whatever it does.
    let tp = std::fs::read_to_string(&tp_file).unwrap();
    let a_span = attempts
        .iter()
        .find(|s| attr(s)["step_id"] == "a")
        .unwrap()
        .span_context
        .span_id();
    assert_ne!(a_span, SpanId::INVALID);
    assert_eq!(tp, format!("00-{trace}-{a_span}-01"));
}
