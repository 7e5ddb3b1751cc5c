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

/// Columns of the table: it fits a terminal of this many.
pub const WIDTH: usize = 80;

/// `s` cut to `w` characters, with `…` where it was cut (columns of a
/// terminal; the CLI's live lines use it too).
pub fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else if w == 0 {
        String::new()
    } else {
        format!("{}…", s.chars().take(w - 1).collect::<String>())
    }
}

/// A plain-text table in [`WIDTH`] columns: the run's header, then `STEP
/// STATUS ATTEMPTS AGENT LAST-ERROR OUTPUT` rows in definition order
/// (AGENT only when a step has one; error and output cut to fit).
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
        "run {run}  {}  seq {}\n",
        state.status.as_str(),
        state.seq
    ));
    out.push_str(&format!("workflow {}\n", fit(wf, WIDTH - 9)));
    if let Some(l) = &state.lineage {
        out.push_str(&format!(
            "forked from {} at seq {}\n",
            l.forked_from, l.at_seq
        ));
    }
    if let Some(p) = &state.parent {
        out.push_str(&format!("child of {} (step {})\n", p.run_id, p.step));
    }
    if let Some(q) = &state.quarantine {
        out.push_str(&fit(&format!("quarantine: {}", q.reason), WIDTH));
        out.push('\n');
    }
    if let Some(f) = &state.failure {
        out.push_str(&fit(&format!("failure: {f}"), WIDTH));
        out.push('\n');
    }
    let order: Vec<chronicle_engine::ids::StepId> = match &state.workflow {
        Some(w) => w.steps.iter().map(|s| s.id.clone()).collect(),
        None => state.steps.keys().cloned().collect(),
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
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
            format!("{} ({abandoned} cut)", st.attempts.len())
        } else {
            st.attempts.len().to_string()
        };
        let err = st
            .last_error()
            .or(st.reason.as_deref())
            .unwrap_or("")
            .replace('\n', " ");
        let output = st.output.as_ref().map(summary).unwrap_or_default();
        rows.push([
            fit(&id, 24),
            st.status.as_str().to_string(),
            attempts,
            fit(&agent, 16),
            err,
            output,
        ]);
    }
    let header = [
        "STEP",
        "STATUS",
        "ATTEMPTS",
        "AGENT",
        "LAST ERROR",
        "OUTPUT",
    ]
    .map(String::from);
    let with_agent = rows.iter().any(|r| !r[3].is_empty());
    let cols: Vec<usize> = if with_agent {
        vec![0, 1, 2, 3, 4, 5]
    } else {
        vec![0, 1, 2, 4, 5]
    };
    let width = |c: usize| {
        std::iter::once(&header)
            .chain(rows.iter())
            .map(|r| r[c].chars().count())
            .max()
            .unwrap_or(0)
    };
    let mut widths: Vec<usize> = cols.iter().map(|&c| width(c)).collect();
    // The fixed columns as they are; error and output share what is left.
    let n = cols.len();
    let fixed: usize = widths[..n - 2].iter().sum::<usize>() + 2 * (n - 1);
    let room = WIDTH.saturating_sub(fixed).max(20);
    let (e, o) = (widths[n - 2], widths[n - 1]);
    let (e, o) = if e + o <= room {
        (e, o)
    } else if e.min(o) <= room / 2 {
        if e < o { (e, room - e) } else { (room - o, o) }
    } else {
        (room / 2, room - room / 2)
    };
    widths[n - 2] = e;
    widths[n - 1] = o;
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = cols
            .iter()
            .zip(&widths)
            .map(|(&c, &w)| format!("{:<w$}", fit(&r[c], w)))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(w) = &state.workflow {
        for s in &w.steps {
            if let Some(st) = state.steps.get(&s.id)
                && let Some(text) = describe_wait(st)
            {
                out.push_str(&fit(&format!("waiting: {} for {text}", s.id), WIDTH));
                out.push('\n');
            }
        }
    }
    if let Some(w) = &state.workflow {
        for s in &w.steps {
            if let Some(child) = state
                .steps
                .get(&s.id)
                .and_then(|st| st.attempts.last())
                .and_then(|a| a.child)
            {
                out.push_str(&format!("child run: {} -> {child}\n", s.id));
            }
        }
    }
    if !state.signals.is_empty() {
        let list: Vec<String> = state
            .signals
            .iter()
            .map(|b| format!("{} (id {})", b.name, b.id))
            .collect();
        out.push_str(&fit(
            &format!("signals buffered: {}", list.join(", ")),
            WIDTH,
        ));
        out.push('\n');
    }
    out
}

/// What a waiting step waits for, in words — `its timer, due at T`,
/// `the signal "deployed"`, `approval: 1 of 2 (alice approved; pending:
/// bob)` — with its timeout; None when it does not wait.
pub fn describe_wait(st: &chronicle_engine::state::StepState) -> Option<String> {
    use chronicle_engine::state::Wait;
    let wait = st.wait.as_ref()?;
    let mut text = match wait {
        Wait::Timer { fire_at } => format!("its timer, due at {}", fire_at.to_rfc3339()),
        Wait::Signal { name } => format!("the signal {name:?}"),
        Wait::Poll { url, every_ms } => {
            format!("a terminal state from {url} (polled every {every_ms} ms)")
        }
        Wait::Callback { accepted, .. } => {
            if *accepted {
                "its callback (the service accepted the request)".to_string()
            } else {
                "the service to accept its request (callback issued)".to_string()
            }
        }
        Wait::Approval {
            approvers,
            min_approvals,
            approved_by,
        } => {
            let pending: Vec<&str> = approvers
                .iter()
                .filter(|a| !approved_by.contains(a))
                .map(String::as_str)
                .collect();
            let mut t = format!("approval: {} of {min_approvals}", approved_by.len());
            if !approved_by.is_empty() {
                t.push_str(&format!(" ({} approved)", approved_by.join(", ")));
            }
            if !pending.is_empty() {
                t.push_str(&format!("; pending: {}", pending.join(", ")));
            }
            t
        }
    };
    if let Some(a) = st.attempts.last() {
        text.push_str(&format!(", since {}", a.started_at.to_rfc3339()));
        if let Some(dl) = a.deadline {
            text.push_str(&format!(", times out at {}", dl.to_rfc3339()));
        }
    }
    Some(text)
}
