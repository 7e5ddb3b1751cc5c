//! The state of a run for people: a header and one row per step.

use chronicle_engine::state::{AttemptOutcome, RunState};
use serde_json::Value;

fn summary(v: &Value) -> String {
    let s = match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("stdout") => {
            m["stdout"].as_str().unwrap_or("").trim().to_string()
        }
        other => other.to_string(),
    };
    let s = s.replace('\n', " ");
    if s.chars().count() > 48 {
        format!("{}…", s.chars().take(47).collect::<String>())
    } else {
        s
    }
}

/// A plain-text table: run header, then `STEP STATUS ATTEMPTS AGENT
/// LAST-ERROR OUTPUT` rows in definition order.
pub fn render_state(state: &RunState) -> String {
    let mut out = String::new();
    let run = state
        .run_id
        .map(|r| r.to_string())
        .unwrap_or_else(|| "-".into());
    let wf = state
        .workflow
        .as_ref()
        .map(|w| w.name.as_str())
        .unwrap_or("-");
    out.push_str(&format!(
        "run {run}  workflow {wf}  status {}  seq {}\n",
        state.status.as_str(),
        state.seq
    ));
    if let Some(l) = &state.lineage {
        out.push_str(&format!(
            "forked from {} at seq {}\n",
            l.forked_from, l.at_seq
        ));
    }
    if let Some(q) = &state.quarantine {
        out.push_str(&format!("quarantine: {}\n", q.reason));
    }
    if let Some(f) = &state.failure {
        out.push_str(&format!("failure: {f}\n"));
    }
    let mut rows = vec![
        [
            "STEP",
            "STATUS",
            "ATTEMPTS",
            "AGENT",
            "LAST ERROR",
            "OUTPUT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let order: Vec<String> = match &state.workflow {
        Some(w) => w.steps.iter().map(|s| s.id.clone()).collect(),
        None => state.steps.keys().cloned().collect(),
    };
    for id in order {
        let Some(st) = state.steps.get(&id) else {
            continue;
        };
        let agent = st
            .attempts
            .last()
            .and_then(|a| a.agent.clone())
            .unwrap_or_default();
        let abandoned = st
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Abandoned)
            .count();
        let attempts = if abandoned > 0 {
            format!("{} ({abandoned} abandoned)", st.attempts.len())
        } else {
            st.attempts.len().to_string()
        };
        let mut err = st
            .last_error()
            .or(st.reason.as_deref())
            .unwrap_or("")
            .replace('\n', " ");
        if err.chars().count() > 60 {
            err = format!("{}…", err.chars().take(59).collect::<String>());
        }
        let output = st.output.as_ref().map(summary).unwrap_or_default();
        rows.push(vec![
            id,
            st.status.as_str().to_string(),
            attempts,
            agent,
            err,
            output,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
