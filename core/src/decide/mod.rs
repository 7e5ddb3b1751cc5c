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

use crate::event::{ApprovalDecision, RunEvent};
use crate::model::template::{Scope, resolve};
use crate::model::{ErrorKind, TimerSpec, WaitSpec, Workflow};
use crate::state::{RunState, RunStatus, StepStatus, Wait, evolve};

mod attempts;
mod circuit;
mod fork;
mod progress;
mod routing;
mod types;
mod waits;

pub use types::{AgentView, AttemptResult, Command, Ctx, Rejected};

use attempts::fail_attempt;
pub use circuit::decide_circuit;
pub use fork::decide_fork;
use progress::{advance, recover};
use waits::{approve, describe, poll_of};

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
            for (step, attempt) in executing(&d) {
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

/// The attempts whose processes or requests run now (`RunState::executing`),
/// owned: the draft pushes events while going through them.
fn executing(d: &Draft<'_>) -> Vec<(crate::ids::StepId, u32)> {
    d.state
        .executing()
        .into_iter()
        .map(|(s, a)| (crate::ids::StepId::from(s), a))
        .collect()
}
