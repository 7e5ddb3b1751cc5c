//! Embedding Chronicle in a Rust program: register two functions, run a
//! workflow that uses them, and read the history back.
//!
//! ```sh
//! cargo run --example embed
//! ```

use chronicle_engine::ids::RunStream;
use chronicle_engine::model::parse_definition;
use chronicle_engine::runtime::{EngineBuilder, FunctionError};
use serde_json::json;

const WORKFLOW: &str = r#"
name: embedded
input: { file: examples/data/Linux_2k.log }
steps:
  - id: read
    function: count_lines
    with: { path: "${{ input.file }}" }
  - id: grade
    needs: [read]
    function: grade
    with: { lines: "${{ steps.read.output.lines }}", failures: "${{ steps.read.output.failures }}" }
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let engine = EngineBuilder::new()
        .db(dir.path().join("embedded.redb"))
        // A function gets the step's resolved input and its idempotency key.
        .function("count_lines", |call| async move {
            let path = call.input["path"].as_str().ok_or_else(|| FunctionError::permanent("path must be a string"))?;
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| FunctionError::transient(format!("cannot read {path}: {e}")))?;
            let failures = text.lines().filter(|l| l.contains("failure")).count();
            Ok(json!({ "lines": text.lines().count(), "failures": failures }))
        })
        .function("grade", |call| async move {
            let lines = call.input["lines"].as_u64().unwrap_or(0).max(1);
            let failures = call.input["failures"].as_u64().unwrap_or(0);
            let ratio = failures as f64 / lines as f64;
            Ok(json!({ "failure_ratio": ratio, "grade": if ratio > 0.1 { "noisy" } else { "quiet" } }))
        })
        .build()?;
    let workflow = parse_definition("embedded.yaml", WORKFLOW)?;
    let run = engine
        .start(workflow, json!({}), Some("embed-example".into()))
        .await?;
    let state = engine.wait(run).await?;
    println!("run {run}: {}", state.status.as_str());
    for (step, s) in &state.steps {
        println!(
            "  {step}: {} -> {}",
            s.status.as_str(),
            s.output.clone().unwrap_or_default()
        );
    }
    println!("history:");
    let envelopes = engine
        .store()
        .read_stream(&run.stream(), chronicle_store::Seq(1))?;
    let timeline = chronicle_replay::timeline::timeline(&envelopes)?;
    print!("{}", chronicle_replay::timeline::render_timeline(&timeline));
    Ok(())
}
