//! `decide(state, command, ctx) -> events`: where every rule of the
//! engine lives. Pure: time, capacity and agent availability come in
//! through [`Ctx`]; randomness comes from the run's seed.
//!
//! After applying a command, `decide` advances the run: it skips the
//! dependents of failed steps, starts ready and due steps (routing
//! `skills` steps to agents) within the capacity given, and ends the run
//! when every step is done. One command therefore returns every event of
//! one durable commit (a step's result and the next step's start).

use std::collections::BTreeMap;

use chrono::TimeDelta;
use serde_json::{Value, json};

use crate::backoff::delay_ms;
use crate::circuit::CircuitState;
use crate::event::{ApprovalDecision, Captured, RunEvent};
use crate::ids::idempotency_key;
use crate::model::template::{Scope, resolve};
use crate::model::{ErrorKind, OnExhausted, RetryOn, TimerSpec, WaitSpec, Workflow};
use crate::state::{RunState, RunStatus, StepStatus, Wait, evolve};

mod circuit;
mod fork;
mod routing;
mod types;
mod waits;

pub use types::{AgentView, AttemptResult, Command, Ctx, Rejected};

pub use circuit::decide_circuit;
pub use fork::decide_fork;
use routing::{Route, route};
use waits::{approve, begin_wait, describe, poll_of, settle_waits};

/// Events being decided, with the state they lead to.
struct Draft<'c> {
    state: RunState,
    events: Vec<RunEvent>,
    ctx: &'c Ctx,
    agents: BTreeMap<String, AgentView>,
    slots: usize,
}

impl Draft<'_> {
    /// The run's definition (shared, cheap to clone).
    fn wf(&self) -> std::sync::Arc<Workflow> {
        self.state
            .workflow
            .clone()
            .expect("a created run has a workflow")
    }

    fn push(&mut self, e: RunEvent) -> Result<(), Rejected> {
        let seq = self.state.seq + 1;
        self.state = evolve(std::mem::take(&mut self.state), seq, self.ctx.now, &e)?;
        self.events.push(e);
        Ok(())
    }
}

/// Decide the events of `command` on `state`.
///
/// Errors: [`Rejected`] when the command does not apply (run ended, wrong
/// status); `Ok(vec![])` when it changes nothing (a stale attempt result,
/// a repeated pause).
pub fn decide(state: &RunState, command: Command, ctx: &Ctx) -> Result<Vec<RunEvent>, Rejected> {
    let mut d = Draft {
        state: state.clone(),
        events: Vec::new(),
        ctx,
        agents: ctx.agents.clone(),
        slots: ctx.slots,
    };
    let name = command.name();
    let run = state.run_id.map(|r| r.to_string()).unwrap_or_default();
    if let Command::Create {
        run_id,
        workflow,
        input,
        idempotency_key,
        seed,
        trace_id,
        parent,
    } = command
    {
        if state.run_id.is_some() {
            return Err(Rejected::AlreadyExists(run));
        }
        let input = merge_input(&workflow, input);
        let sha = workflow.sha256();
        d.push(RunEvent::RunCreated {
            run_id,
            workflow,
            workflow_sha256: sha,
            input,
            idempotency_key,
            seed,
            trace_id,
            parent,
        })?;
        return Ok(d.events);
    }
    if state.run_id.is_none() {
        return Err(Rejected::NoRun);
    }
    if state.status.is_terminal() {
        return Err(Rejected::Ended {
            run,
            status: state.status.as_str(),
            command: name,
        });
    }
    let wrong = |needs: &'static str| Rejected::WrongStatus {
        run: run.clone(),
        status: state.status.as_str(),
        command: name,
        needs,
    };
    match command {
        Command::Create { .. } => unreachable!("handled above"),
        Command::Start => {
            if state.status != RunStatus::Pending {
                return Err(wrong("pending"));
            }
            d.push(RunEvent::RunStarted {})?;
        }
        Command::Finished {
            step,
            attempt,
            result,
        } => {
            let current = state.steps.get(&step).is_some_and(|s| {
                s.status == StepStatus::Running
                    && s.last_attempt().is_some_and(|a| a.number == attempt)
            });
            if !current {
                return Ok(vec![]); // stale: the attempt already ended (timeout, cancel)
            }
            match result {
                AttemptResult::Succeeded { output, .. }
                    if state.steps[&step].wait.is_none()
                        && poll_of(state.wf(), &step).is_some() =>
                {
                    // Accepted: now the engine polls.
                    let spec = poll_of(state.wf(), &step).expect("checked");
                    let run_text = state.run_id.map(|r| r.to_string()).unwrap_or_default();
                    let mut outputs = state.outputs();
                    outputs.insert(step.to_string(), output.clone());
                    let scope = Scope {
                        run_id: &run_text,
                        input: &state.input,
                        outputs: &outputs,
                    };
                    match resolve(&Value::String(spec.url.clone()), &scope) {
                        Ok(Value::String(url)) => d.push(RunEvent::PollStarted {
                            step,
                            attempt,
                            url,
                            every_ms: spec.every.ms,
                            response: output,
                        })?,
                        other => fail_attempt(
                            &mut d,
                            &step,
                            attempt,
                            ErrorKind::Permanent,
                            format!(
                                "cannot resolve poll.url {:?}: {}",
                                spec.url,
                                match other {
                                    Err(e) => e,
                                    Ok(v) => format!("it is {v}, not text"),
                                }
                            ),
                            None,
                            None,
                            0,
                            None,
                        )?,
                    }
                }
                AttemptResult::Succeeded { output, .. }
                    if matches!(
                        state.steps[&step].wait,
                        Some(Wait::Callback {
                            accepted: false,
                            ..
                        })
                    ) =>
                {
                    // The service accepted the request: now the callback.
                    d.push(RunEvent::CallbackAccepted {
                        step,
                        attempt,
                        response: output,
                    })?;
                }
                AttemptResult::Succeeded {
                    output,
                    duration_ms,
                    stdout,
                    stderr,
                } => {
                    d.push(RunEvent::StepSucceeded {
                        step,
                        attempt,
                        output,
                        duration_ms,
                        stdout,
                        stderr,
                    })?;
                }
                AttemptResult::Failed {
                    kind,
                    message,
                    exit_code,
                    http_status,
                    duration_ms,
                    stderr,
                } => {
                    fail_attempt(
                        &mut d,
                        &step,
                        attempt,
                        kind,
                        message,
                        exit_code,
                        http_status,
                        duration_ms,
                        stderr,
                    )?;
                }
            }
        }
        Command::Tick => {
            let overdue: Vec<(crate::ids::StepId, u32, i64)> = state
                .steps
                .iter()
                .filter(|(_, s)| s.status == StepStatus::Running)
                .filter_map(|(k, s)| {
                    let a = s.last_attempt()?;
                    let dl = a.deadline?;
                    (dl <= ctx.now)
                        .then(|| (k.clone(), a.number, (dl - a.started_at).num_milliseconds()))
                })
                .collect();
            for (step, attempt, ms) in overdue {
                let message = match &state.steps[&step].wait {
                    Some(w) => format!(
                        "waited longer than its timeout of {} ms for {}",
                        ms.max(0),
                        describe(w)
                    ),
                    None => format!(
                        "attempt exceeded its timeout of {} ms and was killed",
                        ms.max(0)
                    ),
                };
                fail_attempt(
                    &mut d,
                    &step,
                    attempt,
                    ErrorKind::Timeout,
                    message,
                    None,
                    None,
                    ms.max(0) as u64,
                    None,
                )?;
            }
        }
        Command::Recover => recover(&mut d)?,
        Command::Stop { reason } => {
            // Waiting steps run nothing: they keep waiting across the stop.
            let running: Vec<(crate::ids::StepId, u32)> = d
                .state
                .executing()
                .into_iter()
                .map(|(s, a)| (crate::ids::StepId::from(s), a))
                .collect();
            for (step, attempt) in running {
                d.push(RunEvent::StepAbandoned {
                    step,
                    attempt,
                    reason: reason.clone(),
                    stopped: true,
                })?;
            }
            // Nothing is scheduled: the engine is stopping.
            return Ok(d.events);
        }
        Command::Cancel { reason } => {
            if state.cancel_requested {
                return Ok(vec![]);
            }
            d.push(RunEvent::RunCancelRequested { reason })?;
        }
        Command::Pause => match state.status {
            RunStatus::Paused => return Ok(vec![]),
            RunStatus::Running => d.push(RunEvent::RunPaused {})?,
            _ => return Err(wrong("running")),
        },
        Command::Resume => match state.status {
            RunStatus::Paused => d.push(RunEvent::RunResumed {})?,
            RunStatus::Running => return Ok(vec![]),
            _ => return Err(wrong("paused")),
        },
        Command::Release => match state.status {
            RunStatus::Quarantined => d.push(RunEvent::RunReleased {})?,
            _ => return Err(wrong("quarantined")),
        },
        Command::Signal { name, id, data } => {
            if state.signal_ids.contains(&id) {
                return Ok(vec![]); // a repeated signal id is recorded once
            }
            d.push(RunEvent::SignalReceived { name, id, data })?;
        }
        Command::Approval {
            step,
            by,
            decision,
            comment,
        } => approve(&mut d, &run, step, by, decision, comment)?,
        Command::CallbackIssued {
            step,
            attempt,
            token_sha256,
        } => {
            let current = state.steps.get(&step).is_some_and(|s| {
                s.status == StepStatus::Running
                    && s.wait.is_none()
                    && s.last_attempt().is_some_and(|a| a.number == attempt)
            });
            if !current {
                return Ok(vec![]);
            }
            d.push(RunEvent::CallbackIssued {
                step,
                attempt,
                token_sha256,
            })?;
        }
        Command::Callback {
            token_sha256,
            output,
        } => {
            let waiting = state.steps.iter().find_map(|(id, s)| {
                let holds = s.status == StepStatus::Running
                    && matches!(&s.wait, Some(Wait::Callback { token_sha256: t, .. }) if *t == token_sha256);
                let a = s.last_attempt()?;
                holds.then(|| (id.clone(), a.number, a.started_at))
            });
            let Some((step, attempt, started)) = waiting else {
                return Err(Rejected::CallbackDone { run });
            };
            d.push(RunEvent::CallbackReceived {
                step: step.clone(),
                attempt,
            })?;
            d.push(RunEvent::StepSucceeded {
                step,
                attempt,
                output,
                duration_ms: (ctx.now - started).num_milliseconds().max(0) as u64,
                stdout: None,
                stderr: None,
            })?;
        }
        Command::ChildStarted {
            step,
            attempt,
            child_run_id,
        } => {
            let current = state.steps.get(&step).is_some_and(|s| {
                s.status == StepStatus::Running
                    && s.last_attempt()
                        .is_some_and(|a| a.number == attempt && a.child.is_none())
            });
            if !current {
                return Ok(vec![]); // stale, or already recorded
            }
            d.push(RunEvent::ChildRunStarted {
                step,
                attempt,
                child_run_id,
            })?;
        }
    }
    advance(&mut d)?;
    Ok(d.events)
}

/// Top-level keys of `input` over the definition's defaults.
fn merge_input(wf: &Workflow, input: Value) -> Value {
    let mut merged: serde_json::Map<String, Value> = wf
        .input
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    match input {
        Value::Object(m) => merged.extend(m),
        Value::Null => {}
        other => {
            merged.insert("value".into(), other);
        }
    }
    Value::Object(merged)
}

/// Refine an executor's failure kind by the step's retry policy.
fn classify(on: &RetryOn, kind: ErrorKind, exit_code: Option<i32>, http: Option<u16>) -> ErrorKind {
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

#[allow(clippy::too_many_arguments)]
fn fail_attempt(
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

fn evidence(step: &str, st: &crate::state::StepState) -> Value {
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

fn recover(d: &mut Draft<'_>) -> Result<(), Rejected> {
    let wf = d.wf();
    let k = wf.quarantine_after_crashes();
    // Waiting steps survive the crash: their timers and waits are in the
    // fold and go on.
    let running: Vec<(crate::ids::StepId, u32)> = d
        .state
        .executing()
        .into_iter()
        .map(|(s, a)| (crate::ids::StepId::from(s), a))
        .collect();
    let mut poison: Vec<crate::ids::StepId> = Vec::new();
    for (step, attempt) in running {
        d.push(RunEvent::StepAbandoned {
            step: step.clone(),
            attempt,
            reason: "the engine stopped during this attempt (crash or kill); found on recovery"
                .into(),
            stopped: false,
        })?;
        let def = wf.step(&step).expect("a running step is in the workflow");
        if d.state.steps[&step].crash_streak >= k {
            poison.push(step);
        } else if def.at_most_once {
            d.push(RunEvent::StepFailed {
                step: step.clone(),
                attempt,
                kind: ErrorKind::Interrupted,
                message:
                    "interrupted by an engine crash; the step is at_most_once and is not retried"
                        .into(),
                exit_code: None,
                http_status: None,
                next_retry_at: None,
                duration_ms: 0,
                stderr: None,
            })?;
        }
    }
    if let Some(first) = poison.first()
        && d.state.status != RunStatus::Quarantined
    {
        let st = &d.state.steps[first];
        d.push(RunEvent::RunQuarantined {
            reason: format!(
                "step {first} was abandoned {} times in a row: the engine stopped (crashed or was killed) during each of those attempts (limit {k})",
                st.crash_streak
            ),
            evidence: evidence(first, st),
        })?;
    }
    if d.state.status == RunStatus::Pending {
        d.push(RunEvent::RunStarted {})?;
    }
    Ok(())
}

/// Skip the dependents of failed (not continue_on_failure) or skipped steps.
fn skip_dependents(d: &mut Draft<'_>) -> Result<(), Rejected> {
    let wf = d.wf();
    loop {
        let mut skip: Option<(crate::ids::StepId, String)> = None;
        for s in &wf.steps {
            let st = &d.state.steps[&s.id];
            if !matches!(
                st.status,
                StepStatus::Waiting | StepStatus::Ready | StepStatus::Blocked
            ) {
                continue;
            }
            let blocker = s.needs.iter().find_map(|n| {
                let dep = &d.state.steps[n];
                match dep.status {
                    StepStatus::Failed if !wf.step(n).is_some_and(|x| x.continue_on_failure) => {
                        Some(format!("dependency {n} failed"))
                    }
                    StepStatus::Skipped => Some(format!("dependency {n} was skipped")),
                    _ => None,
                }
            });
            if let Some(reason) = blocker {
                skip = Some((s.id.clone(), reason));
                break;
            }
        }
        match skip {
            Some((step, reason)) => d.push(RunEvent::StepSkipped { step, reason })?,
            None => return Ok(()),
        }
    }
}

fn start_attempt(
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

fn advance(d: &mut Draft<'_>) -> Result<(), Rejected> {
    let wf = d.wf();
    settle_waits(d)?;
    // A wait that ends at once (a buffered signal, a timer already due)
    // lets its dependents start in the same decision: go round until
    // nothing more starts (at most once per step).
    for _ in 0..=wf.steps.len() {
        let before = d.events.len();
        start_ready(d, &wf)?;
        let started = d.events.len();
        settle_waits(d)?;
        if d.events.len() == started || started == before {
            break;
        }
    }
    end_run(d, &wf)
}

/// Start the due steps within the capacity given.
fn start_ready(d: &mut Draft<'_>, wf: &std::sync::Arc<Workflow>) -> Result<(), Rejected> {
    let wf = wf.clone();
    if d.state.status == RunStatus::Running && !d.state.cancel_requested {
        skip_dependents(d)?;
        for s in &wf.steps {
            if d.state.status != RunStatus::Running {
                break;
            }
            let st = &d.state.steps[&s.id];
            let due = match st.status {
                StepStatus::Ready | StepStatus::Blocked => true,
                StepStatus::Retrying => st.retry_at.is_none_or(|t| t <= d.ctx.now),
                _ => false,
            };
            if !due || d.slots == 0 {
                continue;
            }
            match &s.skills {
                // A waiting step runs nothing: it takes no slot.
                None if s.wait().is_some() => start_attempt(d, &wf, &s.id, None)?,
                None => {
                    start_attempt(d, &wf, &s.id, None)?;
                    d.slots -= 1;
                }
                Some(skills) => match route(d, &wf, &s.id, skills, wf.strategy_of(s)) {
                    Route::Assigned { agent, why } => {
                        let attempt = d.state.steps[&s.id].attempts.len() as u32 + 1;
                        d.push(RunEvent::StepAssigned {
                            step: s.id.clone(),
                            attempt,
                            agent: agent.clone(),
                            strategy: wf.strategy_of(s),
                            why,
                        })?;
                        start_attempt(d, &wf, &s.id, Some(agent))?;
                        d.slots -= 1;
                    }
                    Route::Blocked(reason) => {
                        let st = &d.state.steps[&s.id];
                        if st.status != StepStatus::Blocked
                            || st.reason.as_deref() != Some(reason.as_str())
                        {
                            d.push(RunEvent::StepUnassigned {
                                step: s.id.clone(),
                                reason,
                                blocked: true,
                            })?;
                        }
                    }
                    Route::Unassigned(reason) => {
                        d.push(RunEvent::StepUnassigned {
                            step: s.id.clone(),
                            reason,
                            blocked: false,
                        })?;
                    }
                },
            }
        }
        skip_dependents(d)?;
    }
    Ok(())
}

/// End the run when it is canceled and nothing runs, or every step is done.
fn end_run(d: &mut Draft<'_>, wf: &Workflow) -> Result<(), Rejected> {
    if d.state.cancel_requested && d.state.running().is_empty() && !d.state.status.is_terminal() {
        d.push(RunEvent::RunCanceled {})?;
    }
    if d.state.status == RunStatus::Running
        && !d.state.cancel_requested
        && d.state.steps.values().all(|s| s.status.is_terminal())
    {
        let failed: Vec<&str> = wf
            .steps
            .iter()
            .filter(|s| d.state.steps[&s.id].status == StepStatus::Failed && !s.continue_on_failure)
            .map(|s| s.id.as_str())
            .collect();
        if failed.is_empty() {
            d.push(RunEvent::RunSucceeded {})?;
        } else {
            d.push(RunEvent::RunFailed {
                reason: format!("step(s) failed: {}", failed.join(", ")),
            })?;
        }
    }
    Ok(())
}
