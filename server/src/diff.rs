//! `chronicle diff RUN_A RUN_B`: two runs side by side — definition,
//! input, each step's status, attempts, outcome and output (a structural
//! JSON diff), and the first seq where the histories diverge in meaning.
//!
//! A history's meaning is its sequence of `(event type, step id)`, times
//! and ids ignored. A fork's history means its source's events up to the
//! fork's seq followed by its own after `RunForked` (and the `RunStarted`
//! that follows it), so a run and its fork agree up to the fork and
//! diverge where the fork's execution did.

use chronicle_engine::event::RunEvent;
use chronicle_engine::ids::RunId;
use chronicle_engine::state::{AttemptOutcome, RunState};
use chronicle_replay::rebuild::{Target, fold_envelopes};
use chronicle_store::RawEnvelope;
use serde_json::{Value, json};

use crate::problem::Problem;

/// One difference between two JSON values: where, and the two sides
/// (`null` where one side has nothing).
fn changes(a: &Value, b: &Value, path: &str, out: &mut Vec<Value>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                changes(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &p,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                changes(
                    x.get(i).unwrap_or(&Value::Null),
                    y.get(i).unwrap_or(&Value::Null),
                    &format!("{path}[{i}]"),
                    out,
                );
            }
        }
        _ if a != b => {
            out.push(json!({"path": if path.is_empty() { "." } else { path }, "a": a, "b": b}))
        }
        _ => {}
    }
}

/// The structural differences of `a` and `b`: `[{path, a, b}]`.
pub fn json_changes(a: &Value, b: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    changes(a, b, "", &mut out);
    out
}

/// A history's meaning: `(type, step)` of each event, with the seq it has
/// in the effective history.
fn meaning(envs: &[RawEnvelope]) -> Result<Vec<(String, Option<String>)>, Problem> {
    envs.iter()
        .map(|e| {
            let ev = RunEvent::from_json(&e.payload)
                .map_err(|err| Problem::storage(format!("{} seq {}: {err}", e.stream, e.seq)))?;
            Ok((ev.name().to_string(), ev.step().map(str::to_string)))
        })
        .collect()
}

/// The effective history of a run: for a fork, its source's (effective)
/// events up to the fork's seq, then its own after `RunForked` and the
/// `RunStarted` right after it. `load` gives a run's stored history.
pub fn effective(
    run: RunId,
    load: &mut dyn FnMut(RunId) -> Result<Vec<RawEnvelope>, Problem>,
    depth: usize,
) -> Result<Vec<(String, Option<String>)>, Problem> {
    let envs = load(run)?;
    let Some(first) = envs.first() else {
        return Ok(Vec::new());
    };
    let first_event = RunEvent::from_json(&first.payload)
        .map_err(|err| Problem::storage(format!("{} seq 1: {err}", first.stream)))?;
    let RunEvent::RunForked { lineage, .. } = first_event else {
        return meaning(&envs);
    };
    if depth > 64 {
        return Err(Problem::bad_request("fork lineage deeper than 64 runs"));
    }
    let mut out = effective(lineage.forked_from, load, depth + 1)?;
    out.truncate(lineage.at_seq.0 as usize);
    let own = meaning(&envs[1..])?;
    let skip = usize::from(own.first().is_some_and(|(t, _)| t == "RunStarted"));
    out.extend(own.into_iter().skip(skip));
    Ok(out)
}

fn step_view(state: &RunState, id: &str) -> Value {
    let Some(st) = state.steps.get(id) else {
        return Value::Null;
    };
    let outcome = st.attempts.last().map(|a| match &a.outcome {
        AttemptOutcome::Running => "running".to_string(),
        AttemptOutcome::Succeeded => "succeeded".to_string(),
        AttemptOutcome::Failed { kind } => format!("failed ({})", kind.as_str()),
        AttemptOutcome::Abandoned => "abandoned".to_string(),
    });
    json!({
        "status": st.status.as_str(),
        "attempts": st.attempts.len(),
        "outcome": outcome,
        "output": st.output,
    })
}

/// The `diff --json` object of runs `a` and `b`:
/// `{equivalent, a, b, definition: {same, sha256_a, sha256_b, changes},
/// input: {same, changes}, steps: [{id, same, a, b, changes}],
/// diverge_at, diverge}`. `load` gives a run's stored history.
///
/// Errors: 404 for a run with no events; 503 for a history that does
/// not decode or fold.
pub fn diff(
    a: RunId,
    b: RunId,
    load: &mut dyn FnMut(RunId) -> Result<Vec<RawEnvelope>, Problem>,
) -> Result<Value, Problem> {
    let ea = load(a)?;
    let eb = load(b)?;
    let sa = fold_envelopes(RunState::default(), &ea, Target::Head)?;
    let sb = fold_envelopes(RunState::default(), &eb, Target::Head)?;
    let def_changes = json_changes(
        &serde_json::to_value(sa.wf()).expect("a workflow serializes"),
        &serde_json::to_value(sb.wf()).expect("a workflow serializes"),
    );
    let input_changes = json_changes(&sa.input, &sb.input);
    let mut ids: Vec<String> = sa.wf().steps.iter().map(|s| s.id.to_string()).collect();
    for s in &sb.wf().steps {
        if !ids.iter().any(|i| i == s.id.as_str()) {
            ids.push(s.id.to_string());
        }
    }
    let mut all_same = def_changes.is_empty() && input_changes.is_empty();
    let steps: Vec<Value> = ids
        .iter()
        .map(|id| {
            let (va, vb) = (step_view(&sa, id), step_view(&sb, id));
            let ch = json_changes(&va, &vb);
            all_same &= ch.is_empty();
            json!({"id": id, "same": ch.is_empty(), "a": va, "b": vb, "changes": ch})
        })
        .collect();
    let ma = effective(a, load, 0)?;
    let mb = effective(b, load, 0)?;
    let at = (0..ma.len().max(mb.len())).find(|&i| ma.get(i) != mb.get(i));
    let describe = |m: &Vec<(String, Option<String>)>, i: usize| {
        m.get(i).map(|(t, s)| match s {
            Some(s) => format!("{t} {s}"),
            None => t.clone(),
        })
    };
    all_same &= at.is_none();
    Ok(json!({
        "equivalent": all_same,
        "a": a,
        "b": b,
        "definition": {
            "same": def_changes.is_empty(),
            "sha256_a": sa.workflow_sha256,
            "sha256_b": sb.workflow_sha256,
            "changes": def_changes,
        },
        "input": {"same": input_changes.is_empty(), "changes": input_changes},
        "steps": steps,
        "diverge_at": at.map(|i| i as u64 + 1),
        "diverge": at.map(|i| json!({"a": describe(&ma, i), "b": describe(&mb, i)})),
    }))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// The text of `chronicle diff` from its JSON object.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let list = |out: &mut String, changes: &Value| {
        for c in changes.as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {}: {} -> {}",
                c["path"].as_str().unwrap_or("?"),
                short(&c["a"]),
                short(&c["b"])
            );
        }
    };
    let _ = writeln!(
        out,
        "a {}\nb {}",
        v["a"].as_str().unwrap_or("?"),
        v["b"].as_str().unwrap_or("?")
    );
    let d = &v["definition"];
    if d["same"] == true {
        let _ = writeln!(
            out,
            "definition  same (sha256 {})",
            d["sha256_a"].as_str().unwrap_or("?")
        );
    } else {
        let _ = writeln!(out, "definition  changed");
        list(&mut out, &d["changes"]);
    }
    if v["input"]["same"] == true {
        let _ = writeln!(out, "input       same");
    } else {
        let _ = writeln!(out, "input       changed");
        list(&mut out, &v["input"]["changes"]);
    }
    for s in v["steps"].as_array().into_iter().flatten() {
        let id = s["id"].as_str().unwrap_or("?");
        if s["same"] == true {
            let _ = writeln!(
                out,
                "step {id}  same: {}, {} attempt(s)",
                s["a"]["status"].as_str().unwrap_or("-"),
                s["a"]["attempts"]
            );
        } else {
            let _ = writeln!(out, "step {id}  differs");
            list(&mut out, &s["changes"]);
        }
    }
    match v["diverge_at"].as_u64() {
        None => {
            let _ = writeln!(out, "history     same meaning, event by event");
        }
        Some(seq) => {
            let side = |k: &str| v["diverge"][k].as_str().unwrap_or("(ended)").to_string();
            let _ = writeln!(
                out,
                "history     diverges at seq {seq}: a {} / b {}",
                side("a"),
                side("b")
            );
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if v["equivalent"] == true {
            "the runs are equivalent"
        } else {
            "the runs differ"
        }
    );
    out
}
