//! Attempts: a step's attempt started (its inputs resolved, its deadline
//! set, its agent's slot taken) and an attempt's failure judged by the
//! step's retry policy — retried after a backoff, or exhausted and, when
//! the step says so, the run quarantined.

use chrono::TimeDelta;
use serde_json::{Value, json};

use super::waits::begin_wait;
use super::{AgentView, Draft, Rejected};
use crate::backoff::delay_ms;
use crate::circuit::CircuitState;
use crate::event::{Captured, RunEvent};
use crate::ids::idempotency_key;
use crate::model::template::{Scope, resolve};
use crate::model::{ErrorKind, OnExhausted, RetryOn, Workflow};
use crate::state::RunStatus;

/// Refine an executor's failure kind by the step's retry policy.
pub(super) fn classify(
    on: &RetryOn,
    kind: ErrorKind,
    exit_code: Option<i32>,
    http: Option<u16>,
) -> ErrorKind {
    if kind != ErrorKind::Transient && kind != ErrorKind::Permanent {
        return kind;
    }
    if let Some(code) = exit_code {
        if on.permanent_exit_codes.contains(&code) {
            return ErrorKind::Permanent;
        }
        if let Some(list) = &on.exit_codes {
            return if list.contains(&code) {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            };
        }
    }
    if let (Some(status), Some(list)) = (http, &on.http_statuses) {
        return if list.contains(&status) {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
    }
    kind
}

/// Record attempt `attempt` of `step` as failed: its kind refined by the
/// step's `retry_on`, a retry due after the backoff while the budget
/// lasts, else the step exhausted (and the run quarantined when the step
/// is `on_exhausted: quarantine`).
#[allow(clippy::too_many_arguments)]
pub(super) fn fail_attempt(
    d: &mut Draft<'_>,
    step: &str,
    attempt: u32,
    kind: ErrorKind,
    message: String,
    exit_code: Option<i32>,
    http_status: Option<u16>,
    duration_ms: u64,
    stderr: Option<Captured>,
) -> Result<(), Rejected> {
    let wf = d.wf();
    let def = wf.step(step).expect("a running step is in the workflow");
    let policy = wf.retry_of(def);
    let kind = classify(&policy.retry_on, kind, exit_code, http_status);
    let used = d.state.steps[step].budget_used();
    let retryable = policy.retry_on.kinds.contains(&kind)
        && !matches!(kind, ErrorKind::Canceled | ErrorKind::Unassigned)
        && !d.state.cancel_requested
        && def.wait().is_none();
    let next_retry_at = (retryable && used < policy.max_attempts).then(|| {
        let ms = delay_ms(&policy, used, d.state.seed, step);
        d.ctx.now + TimeDelta::milliseconds(ms.min(i64::MAX as u64) as i64)
    });
    d.push(RunEvent::StepFailed {
        step: step.into(),
        attempt,
        kind,
        message,
        exit_code,
        http_status,
        next_retry_at,
        duration_ms,
        stderr,
    })?;
    if next_retry_at.is_none()
        && def.on_exhausted == OnExhausted::Quarantine
        && !matches!(kind, ErrorKind::Canceled)
        && !d.state.cancel_requested
        && d.state.status != RunStatus::Quarantined
    {
        let st = &d.state.steps[step];
        d.push(RunEvent::RunQuarantined {
            reason: format!(
                "step {step} failed after {used} attempt(s) and is set to on_exhausted: quarantine"
            ),
            evidence: evidence(step, st),
        })?;
    }
    Ok(())
}

/// What a quarantine shows of `step`: each attempt's outcome, error and
/// times.
pub(super) fn evidence(step: &str, st: &crate::state::StepState) -> Value {
    json!({
        "step": step,
        "attempts": st.attempts.iter().map(|a| json!({
            "attempt": a.number,
            "outcome": a.outcome,
            "error": a.error,
            "exit_code": a.exit_code,
            "started_at": a.started_at,
            "ended_at": a.ended_at,
        })).collect::<Vec<_>>(),
    })
}

/// Start the next attempt of step `id`, on `agent` when routed: its
/// inputs resolved from the run's input and outputs (an input that cannot
/// be resolved fails the attempt at once, permanently), its deadline from
/// the step's timeout, its wait begun when it is a waiting step.
pub(super) fn start_attempt(
    d: &mut Draft<'_>,
    wf: &Workflow,
    id: &str,
    agent: Option<String>,
) -> Result<(), Rejected> {
    let def = wf.step(id).expect("step ids come from the workflow");
    let st = &d.state.steps[id];
    let attempt = st.attempts.len() as u32 + 1;
    let run_id = d.state.run_id.expect("a created run has an id");
    let run_text = run_id.to_string();
    let outputs = d.state.outputs();
    let scope = Scope {
        run_id: &run_text,
        input: &d.state.input,
        outputs: &outputs,
    };
    let with = Value::Object(
        def.with
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let resolved = resolve(&with, &scope);
    // A waiting step's timeout is its own (`timeout:`), not the
    // workflow's default per-attempt timeout: a wait is not an attempt
    // at running something.
    let timeout = match def.wait() {
        Some(_) => def.timeout,
        None => wf.timeout_of(def),
    };
    let deadline =
        timeout.map(|t| d.ctx.now + TimeDelta::milliseconds(t.ms.min(i64::MAX as u64) as i64));
    let input = resolved.clone().unwrap_or(Value::Null);
    if let Some(a) = &agent
        && let Some(v) = d.agents.get_mut(a)
    {
        v.running += 1;
    } else if let Some(a) = &agent {
        d.agents.insert(
            a.clone(),
            AgentView {
                running: 1,
                circuit: CircuitState::Closed,
            },
        );
    }
    d.push(RunEvent::StepStarted {
        step: id.into(),
        attempt,
        agent,
        input,
        idempotency_key: idempotency_key(run_id, id),
        deadline,
    })?;
    if resolved.is_ok()
        && let Some(wait) = def.wait()
    {
        begin_wait(d, id, attempt, wait)?;
    }
    if let Err(message) = resolved {
        // The input cannot be built: the attempt fails at once, permanently.
        fail_attempt(
            d,
            id,
            attempt,
            ErrorKind::Permanent,
            format!("cannot resolve inputs: {message}"),
            None,
            None,
            0,
            None,
        )?;
    }
    Ok(())
}
