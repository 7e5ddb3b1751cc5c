//! The operations behind both the CLI and the API: each command's data is
//! computed here once, so `chronicle status --json` on the file and
//! `GET /v1/runs/{id}` on a server give the same object, and the CLI
//! renders text from the same data either way.

use chronicle_engine::ids::{RunId, RunStream, StepId};
use chronicle_engine::runtime::{Engine, RunSummary};
use chronicle_engine::state::{RunState, RunStatus};
use chronicle_replay::rebuild::{Target, fold_envelopes, state_at};
use chronicle_replay::timeline::{TimelineEntry, timeline_from};
use chronicle_store::{RawEnvelope, Seq, Store};

use serde_json::{Value, json};

use crate::problem::Problem;

mod agent_view;
mod audit;
mod gantt;

pub use agent_view::{agents, render_agents};
pub use audit::{render_upgrade, render_verify, upgrade_report, verify};
pub use gantt::{AttemptView, AttemptsView, Decision, attempts};

/// The run statuses, as `list --status` and `GET /v1/runs?status=` take them.
pub const STATUSES: [&str; 7] = [
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "canceled",
    "quarantined",
];

/// Longest signal name, signal id or approver name accepted, bytes.
pub const MAX_NAME: usize = 200;

/// Check a name given from outside (a signal's name or id, an approver):
/// not empty, at most [`MAX_NAME`] bytes, no control characters.
/// Errors: 400 naming `what`.
pub fn check_name(what: &str, name: &str) -> Result<(), Problem> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Problem::bad_request(format!(
            "{what} must be 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Check a status filter. Errors: 400 naming the statuses.
pub fn check_status(status: Option<&str>) -> Result<(), Problem> {
    match status {
        Some(s) if !STATUSES.contains(&s) => Err(Problem::bad_request(format!(
            "unknown status {s:?}: use one of {}",
            STATUSES.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Every run, newest first (by creation time, then run id), filtered by
/// status and workflow name.
pub fn list_runs(
    engine: &Engine,
    status: Option<&str>,
    workflow: Option<&str>,
) -> Result<Vec<RunSummary>, Problem> {
    check_status(status)?;
    let mut rows: Vec<RunSummary> = engine
        .list()?
        .into_iter()
        .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
        .filter(|r| workflow.is_none_or(|w| r.workflow == w))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.run_id.0)));
    Ok(rows)
}

/// The rows of `rows` whose run id starts with `q` or whose idempotency
/// key contains it (all of them for no `q` or an empty one).
pub fn search_runs(rows: Vec<RunSummary>, q: Option<&str>) -> Vec<RunSummary> {
    let Some(q) = q.map(str::trim).filter(|q| !q.is_empty()) else {
        return rows;
    };
    let lower = q.to_ascii_lowercase();
    rows.into_iter()
        .filter(|r| {
            r.run_id.to_string().starts_with(&lower)
                || r.idempotency_key.as_deref().is_some_and(|k| k.contains(q))
        })
        .collect()
}

/// How many of `rows` have each status (every status named, 0 included).
pub fn count_by_status(rows: &[RunSummary]) -> std::collections::BTreeMap<&'static str, usize> {
    let mut counts: std::collections::BTreeMap<&'static str, usize> =
        STATUSES.iter().map(|s| (*s, 0)).collect();
    for r in rows {
        *counts.entry(r.status.as_str()).or_default() += 1;
    }
    counts
}

/// The cursor that follows `row` in a newest-first listing: opaque to
/// clients (`MICROS_RUNID`).
pub fn cursor_of(row: &RunSummary) -> String {
    let micros = row.created_at.map(|t| t.timestamp_micros()).unwrap_or(0);
    format!("{micros}_{}", row.run_id)
}

/// The rows after `cursor` in `rows` (sorted by [`list_runs`]).
///
/// Errors: 400 for a cursor that is not one [`cursor_of`] made.
pub fn after_cursor(rows: Vec<RunSummary>, cursor: &str) -> Result<Vec<RunSummary>, Problem> {
    let bad = || Problem::bad_request(format!("cursor {cursor:?} is not one this server gave"));
    let (micros, run) = cursor.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let run: RunId = run.parse().map_err(|_| bad())?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            let m = r.created_at.map(|t| t.timestamp_micros()).unwrap_or(0);
            (m, r.run_id.0) < (micros, run.0)
        })
        .collect())
}

/// The `status --json` object of a run (documented in the README).
pub fn status_json(state: &RunState, forks: &[(RunId, u64)]) -> Value {
    let order: Vec<StepId> = state.wf().steps.iter().map(|s| s.id.clone()).collect();
    let steps: Vec<Value> = order
        .iter()
        .filter_map(|id| {
            let st = state.steps.get(id)?;
            Some(json!({
                "id": id,
                "status": st.status.as_str(),
                "attempts": st.attempts.len(),
                "agent": st.attempts.last().and_then(|a| a.agent.clone()),
                "last_error": st.last_error(),
                "reason": st.reason,
                "output": st.output,
                "wait": wait_json(st),
                "child": st.attempts.last().and_then(|a| a.child),
            }))
        })
        .collect();
    json!({
        "run_id": state.run_id,
        "workflow": state.wf().name,
        "workflow_sha256": state.workflow_sha256,
        "status": state.status.as_str(),
        "seq": state.seq,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "input": state.input,
        "steps": steps,
        "quarantine": state.quarantine,
        "failure": state.failure,
        "parent": state.parent.as_ref().map(|p| json!({"run_id": p.run_id, "step": p.step})),
        "forked_from": state.lineage.as_ref().map(|l| json!({"run_id": l.forked_from, "at_seq": l.at_seq})),
        "forks": forks.iter().map(|(r, at)| json!({"run_id": r, "at_seq": at})).collect::<Vec<_>>(),
        "signals": state.signals.iter().map(|b| json!({"name": b.name, "id": b.id, "seq": b.seq.0})).collect::<Vec<_>>(),
    })
}

/// What a waiting step waits for, as `status --json` shows it (null when
/// it does not wait): `{for: "timer", fire_at}`, `{for: "signal", name}`
/// or `{for: "approval", approvers, min_approvals, approved_by, pending}`,
/// each with `since` (the wait's start), `timeout_at` and `text` (the
/// same in words).
pub fn wait_json(st: &chronicle_engine::state::StepState) -> Value {
    use chronicle_engine::state::Wait;
    let Some(wait) = &st.wait else {
        return Value::Null;
    };
    let mut v = serde_json::to_value(wait).unwrap_or(Value::Null);
    if let (
        Wait::Approval {
            approvers,
            approved_by,
            ..
        },
        Some(o),
    ) = (wait, v.as_object_mut())
    {
        let pending: Vec<&String> = approvers
            .iter()
            .filter(|a| !approved_by.contains(a))
            .collect();
        o.insert("pending".into(), json!(pending));
        o.insert("approved_by".into(), json!(approved_by));
    }
    if let Some(o) = v.as_object_mut() {
        let a = st.attempts.last();
        o.insert("since".into(), json!(a.map(|a| a.started_at)));
        o.insert("timeout_at".into(), json!(a.and_then(|a| a.deadline)));
        o.insert(
            "text".into(),
            json!(chronicle_replay::render::describe_wait(st)),
        );
    }
    v
}

/// A run's state at its head and the `status --json` object.
///
/// Errors: 404 unknown run; 503 for a history that does not fold.
pub fn status(store: &Store, run: RunId) -> Result<(RunState, Value), Problem> {
    let state = state_at(store, run, Target::Head)?;
    let v = status_of(store, &state)?;
    Ok((state, v))
}

/// The `status --json` object of `state` (its forks read from the store).
pub fn status_of(store: &Store, state: &RunState) -> Result<Value, Problem> {
    let forks = match state.run_id {
        Some(run) => chronicle_replay::fork::forks_of(store, run)?,
        None => Vec::new(),
    };
    Ok(status_json(state, &forks))
}

/// Whether a run needs nothing more from the engine to settle: ended, or
/// quarantined (it waits for a person to release it).
pub fn settled(status: RunStatus) -> bool {
    status.is_terminal() || status == RunStatus::Quarantined
}

/// One event as `history --json` prints it: the envelope on one line
/// (its payload byte for byte), or for an event that does not decode
/// `{stream, seq, position, error}`; the second value is that decode
/// error.
pub fn event_line(env: &RawEnvelope) -> (String, Option<String>) {
    match serde_json::from_slice::<serde::de::IgnoredAny>(&env.payload) {
        Ok(_) => (
            serde_json::to_string(env).expect("a payload that parses serializes"),
            None,
        ),
        Err(e) => (
            json!({
                "stream": env.stream.to_string(),
                "seq": env.seq.0,
                "position": env.position.0,
                "error": format!("the event does not decode: {e}"),
            })
            .to_string(),
            Some(e.to_string()),
        ),
    }
}

/// A page of events as `GET /v1/runs/{id}/events` answers it: each line
/// of [`event_line`] embedded as is.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EventsPage {
    /// The events, oldest first.
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// The run's last seq when the page was read.
    pub last_seq: u64,
}

/// Up to `limit` events of `run` after seq `after`.
///
/// Errors: 404 when the run has no events; storage errors.
pub fn events_page(
    store: &Store,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<RawEnvelope>, Problem> {
    if store.head(&run.stream())?.is_none() {
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run {run} in this database"),
        ));
    }
    let mut out = Vec::new();
    let to = Seq(after.saturating_add(limit as u64));
    store.for_each_in_stream(&run.stream(), Seq(after + 1), Some(to), |env| {
        out.push(env);
        Ok(())
    })?;
    Ok(out)
}

/// Whether `env` ends its run (succeeded, failed or canceled).
pub fn is_terminal_event(env: &RawEnvelope) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Kind>(&env.payload).is_ok_and(|k| {
        matches!(
            k.kind.as_str(),
            "RunSucceeded" | "RunFailed" | "RunCanceled"
        )
    })
}

/// Parse an `at_time` (RFC 3339). Errors: 400 naming the expected form.
pub fn parse_time(what: &str, t: &str) -> Result<chrono::DateTime<chrono::Utc>, Problem> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            Problem::bad_request(format!(
                "{what} {t:?} is not RFC 3339 (2026-11-21T10:00:00Z): {e}"
            ))
        })
}

/// Check `target` against a history whose last seq is `head`.
/// Errors: 400 when a seq is outside `1..=head`.
pub fn check_target(target: Target, head: u64) -> Result<(), Problem> {
    if let Target::Seq(n) = target
        && (n == 0 || n > head)
    {
        return Err(Problem::bad_request(format!(
            "--at {n} is outside the history (events 1..={head})"
        )));
    }
    Ok(())
}

/// The state folded from `envs` at `target` (`replay --json`).
///
/// Errors: 400 for a target outside the history or before the first
/// event; the fold's errors.
pub fn replay_state(envs: &[RawEnvelope], target: Target) -> Result<RunState, Problem> {
    check_target(target, envs.last().map(|e| e.seq.0).unwrap_or(0))?;
    let state = fold_envelopes(RunState::default(), envs, target)?;
    if state.run_id.is_none() {
        return Err(Problem::bad_request("no event at or before that time"));
    }
    Ok(state)
}

/// The timeline of `envs` up to `target` (`replay --timeline --json`);
/// with `since`, only its entries after that seq (the events up to it are
/// folded, not described).
pub fn replay_timeline(
    envs: &[RawEnvelope],
    target: Target,
    since: Option<u64>,
) -> Result<Vec<TimelineEntry>, Problem> {
    check_target(target, envs.last().map(|e| e.seq.0).unwrap_or(0))?;
    let within = |e: &RawEnvelope| match target {
        Target::Seq(n) => e.seq.0 <= n,
        Target::Time(ts) => e.recorded_at <= ts,
        Target::Head => true,
    };
    let end = envs.iter().position(|e| !within(e)).unwrap_or(envs.len());
    let skip = since.map_or(0, |s| envs[..end].partition_point(|e| e.seq.0 <= s));
    let before = fold_envelopes(RunState::default(), &envs[..skip], Target::Head)?;
    Ok(timeline_from(before, &envs[skip..end])?)
}

/// Every event of a run. Errors: 404 when it has none.
pub fn whole_history(store: &Store, run: RunId) -> Result<Vec<RawEnvelope>, Problem> {
    let envs = store.read_stream(&run.stream(), Seq(1))?;
    if envs.is_empty() {
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run {run} in this database"),
        ));
    }
    Ok(envs)
}

/// A schedule as `schedule list --json` and `/v1/schedules` show it:
/// `{name, workflow, cron, timezone, status, overlap, catch_up_ms, next,
/// fired, skipped, last_run, input}`.
pub fn schedule_json(s: &chronicle_engine::schedule::ScheduleState) -> Value {
    json!({
        "name": s.name,
        "workflow": s.workflow.as_ref().map(|w| w.name.clone()),
        "cron": s.cron,
        "timezone": s.timezone,
        "status": s.status,
        "overlap": s.overlap,
        "catch_up_ms": s.catch_up_ms,
        "next": if s.status == "active" { s.next() } else { None },
        "fired": s.fired,
        "skipped": s.skipped,
        "last_run": s.last_run,
        "input": s.input,
    })
}
