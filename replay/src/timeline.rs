//! A timeline: each event with its seq, time, and what it changed.

use chronicle_engine::event::RunEvent;
use chronicle_engine::state::{RunState, evolve};
use chronicle_store::RawEnvelope;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ReplayError;

/// One line of a timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Seq of the event.
    pub seq: u64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// The event name.
    pub event: String,
    /// The step it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What changed: `run running -> succeeded`, `step a ready -> running`.
    pub changes: Vec<String>,
}

/// Fold `envelopes` and describe each event's effect on the state.
pub fn timeline(envelopes: &[RawEnvelope]) -> Result<Vec<TimelineEntry>, ReplayError> {
    timeline_from(RunState::default(), envelopes)
}

/// Fold `envelopes` onto `state` (the fold of the events before them) and
/// describe each one's effect: the entries of [`timeline`] for a part of
/// a history, without describing the events before it.
pub fn timeline_from(
    mut state: RunState,
    envelopes: &[RawEnvelope],
) -> Result<Vec<TimelineEntry>, ReplayError> {
    let mut out = Vec::with_capacity(envelopes.len());
    for env in envelopes {
        let ev = RunEvent::from_json(&env.payload)
            .map_err(|e| chronicle_engine::runtime::decode_error(env, e))?;
        let before = state.clone();
        state = evolve(
            state,
            chronicle_engine::ids::Seq(env.seq.0),
            env.recorded_at,
            &ev,
        )?;
        out.push(TimelineEntry {
            seq: env.seq.0,
            at: env.recorded_at,
            event: ev.name().to_string(),
            step: ev.step().map(str::to_string),
            changes: diff(&before, &state),
        });
    }
    Ok(out)
}

fn diff(a: &RunState, b: &RunState) -> Vec<String> {
    let mut out = Vec::new();
    if a.status != b.status {
        let from = if a.run_id.is_none() {
            "-"
        } else {
            a.status.as_str()
        };
        out.push(format!("run {from} -> {}", b.status.as_str()));
    }
    if a.cancel_requested != b.cancel_requested {
        out.push("cancel requested".into());
    }
    for (id, sb) in &b.steps {
        let sa = a.steps.get(id);
        let status_a = sa.map(|s| s.status.as_str()).unwrap_or("-");
        if status_a != sb.status.as_str() {
            let extra = match (sb.status.as_str(), sb.attempts.last()) {
                ("running", Some(at)) => format!(" (attempt {})", at.number),
                ("retrying", _) => sb
                    .retry_at
                    .map(|t| format!(" (until {})", t.to_rfc3339()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            out.push(format!(
                "step {id} {status_a} -> {}{extra}",
                sb.status.as_str()
            ));
        } else if sa.map(|s| s.attempts.len()) != Some(sb.attempts.len()) {
            out.push(format!("step {id} attempt {}", sb.attempts.len()));
        }
    }
    out
}

/// Render a timeline as text lines.
pub fn render_timeline(entries: &[TimelineEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!(
            "{:>5}  {}  {:<19} {}\n",
            e.seq,
            e.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.event,
            e.changes.join("; ")
        ));
    }
    s
}
