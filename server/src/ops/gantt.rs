//! The run page's attempt view: every attempt with the seqs of the events
//! that started and ended it (so the Gantt chart and the event list link
//! both ways), its outcome, error, stderr excerpt and backoff, and each
//! step's routing decisions. A projection of the run's events, like the
//! fold, computed here once for the API.

use std::collections::BTreeMap;

use chronicle_engine::event::RunEvent;
use chronicle_engine::model::ErrorKind;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::*;

/// Bytes of stderr an attempt view keeps (its end: where errors are).
pub const STDERR_EXCERPT: usize = 2048;
/// Routing decisions kept per step (the newest).
pub const DECISIONS_KEPT: usize = 20;

/// One attempt of a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptView {
    /// The step.
    pub step: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The agent that ran it, if routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Seq of its `StepStarted`.
    pub started_seq: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Seq of the event that ended it (none while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_seq: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// `running`, `succeeded`, `failed`, `timed_out`, `canceled`,
    /// `interrupted`, `unassigned` or `abandoned` (by a crash or a stop).
    pub outcome: String,
    /// The error (failed) or the reason (abandoned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The process's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When the next attempt is due (the backoff wait ends), after a
    /// failure that will be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<DateTime<Utc>>,
    /// How long it ran, milliseconds (as recorded by the executor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The last `STDERR_EXCERPT` (2,048) bytes of its captured stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Whether `stderr` is shorter than what the attempt wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_cut: bool,
}

/// One routing decision for a step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    /// Seq of the `StepAssigned` or `StepUnassigned` event.
    pub seq: u64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The attempt it routed (assignments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The agent chosen; none when no agent could take the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The strategy that chose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Value>,
    /// Why this agent, or why none.
    pub why: String,
    /// Unassigned because every fitting agent's circuit is open (it waits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocked: bool,
}

/// `GET /v1/runs/{id}/attempts`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AttemptsView {
    /// Every attempt, in the order they started.
    pub attempts: Vec<AttemptView>,
    /// The newest `DECISIONS_KEPT` (20) routing decisions per step.
    pub routing: BTreeMap<String, Vec<Decision>>,
    /// The seq the view is at.
    pub seq: u64,
}

fn excerpt(c: &Option<chronicle_engine::event::Captured>) -> (Option<String>, bool) {
    let Some(c) = c.as_ref().filter(|c| !c.text.is_empty()) else {
        return (None, false);
    };
    let text = &c.text;
    let mut from = text.len().saturating_sub(STDERR_EXCERPT);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    (Some(text[from..].to_string()), from > 0 || c.truncated)
}

fn failed_outcome(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "timed_out",
        ErrorKind::Canceled => "canceled",
        ErrorKind::Interrupted => "interrupted",
        ErrorKind::Unassigned => "unassigned",
        ErrorKind::Transient | ErrorKind::Permanent => "failed",
    }
}

/// The attempts and routing decisions in `envs` up to `target`.
///
/// Errors: 400 for a target outside the history; an event that does not
/// decode (naming its seq).
pub fn attempts(envs: &[RawEnvelope], target: Target) -> Result<AttemptsView, Problem> {
    check_target(target, envs.last().map(|e| e.seq.0).unwrap_or(0))?;
    let mut view = AttemptsView::default();
    let mut open: BTreeMap<(String, u32), usize> = BTreeMap::new();
    for env in envs {
        let within = match target {
            Target::Seq(n) => env.seq.0 <= n,
            Target::Time(t) => env.recorded_at <= t,
            Target::Head => true,
        };
        if !within {
            break;
        }
        view.seq = env.seq.0;
        let ev = RunEvent::from_json(&env.payload)
            .map_err(|e| chronicle_engine::runtime::decode_error(env, e))
            .map_err(chronicle_replay::ReplayError::from)?;
        let mut end = |step: &str, attempt: u32| -> Option<usize> {
            let i = open.remove(&(step.to_string(), attempt))?;
            let a = &mut view.attempts[i];
            a.ended_seq = Some(env.seq.0);
            a.ended_at = Some(env.recorded_at);
            Some(i)
        };
        match &ev {
            RunEvent::StepStarted {
                step,
                attempt,
                agent,
                ..
            } => {
                open.insert((step.to_string(), *attempt), view.attempts.len());
                view.attempts.push(AttemptView {
                    step: step.to_string(),
                    attempt: *attempt,
                    agent: agent.clone(),
                    started_seq: env.seq.0,
                    started_at: env.recorded_at,
                    ended_seq: None,
                    ended_at: None,
                    outcome: "running".into(),
                    error: None,
                    exit_code: None,
                    next_retry_at: None,
                    duration_ms: None,
                    stderr: None,
                    stderr_cut: false,
                });
            }
            RunEvent::StepSucceeded {
                step,
                attempt,
                duration_ms,
                stderr,
                ..
            } => {
                if let Some(i) = end(step.as_ref(), *attempt) {
                    let a = &mut view.attempts[i];
                    a.outcome = "succeeded".into();
                    a.duration_ms = Some(*duration_ms);
                    (a.stderr, a.stderr_cut) = excerpt(stderr);
                }
            }
            RunEvent::StepFailed {
                step,
                attempt,
                kind,
                message,
                exit_code,
                next_retry_at,
                duration_ms,
                stderr,
                ..
            } => {
                if let Some(i) = end(step.as_ref(), *attempt) {
                    let a = &mut view.attempts[i];
                    a.outcome = failed_outcome(*kind).into();
                    a.error = Some(message.clone());
                    a.exit_code = *exit_code;
                    a.next_retry_at = *next_retry_at;
                    a.duration_ms = Some(*duration_ms);
                    (a.stderr, a.stderr_cut) = excerpt(stderr);
                }
            }
            RunEvent::StepAbandoned {
                step,
                attempt,
                reason,
                ..
            } => {
                if let Some(i) = end(step.as_ref(), *attempt) {
                    let a = &mut view.attempts[i];
                    a.outcome = "abandoned".into();
                    a.error = Some(reason.clone());
                }
            }
            RunEvent::StepAssigned {
                step,
                attempt,
                agent,
                strategy,
                why,
            } => view
                .routing
                .entry(step.to_string())
                .or_default()
                .push(Decision {
                    seq: env.seq.0,
                    at: env.recorded_at,
                    attempt: Some(*attempt),
                    agent: Some(agent.clone()),
                    strategy: serde_json::to_value(strategy).ok(),
                    why: why.clone(),
                    blocked: false,
                }),
            RunEvent::StepUnassigned {
                step,
                reason,
                blocked,
            } => view
                .routing
                .entry(step.to_string())
                .or_default()
                .push(Decision {
                    seq: env.seq.0,
                    at: env.recorded_at,
                    attempt: None,
                    agent: None,
                    strategy: None,
                    why: reason.clone(),
                    blocked: *blocked,
                }),
            _ => {}
        }
    }
    for d in view.routing.values_mut() {
        let extra = d.len().saturating_sub(DECISIONS_KEPT);
        d.drain(..extra);
    }
    Ok(view)
}
