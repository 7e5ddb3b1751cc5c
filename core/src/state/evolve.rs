//! `evolve`: one event onto the state, and `fold`: a whole history.
//! Pure and without business rules beyond "can this event follow this
//! state"; the same function folds live and replayed histories.

use chrono::{DateTime, Utc};

use super::{
    Attempt, AttemptOutcome, BufferedSignal, Quarantine, RunState, RunStatus, StepState,
    StepStatus, TransitionError, Wait,
};
use crate::event::{ApprovalDecision, RunEvent};
use crate::model::{ErrorKind, OnExhausted};

/// What `RunCreated` and `RunForked` both set: the pinned definition, its
/// steps (all waiting), the input and the seed.
fn begin_run(
    state: &mut RunState,
    run_id: crate::ids::RunId,
    workflow: &std::sync::Arc<crate::model::Workflow>,
    workflow_sha256: &str,
    input: &serde_json::Value,
    seed: u64,
    at: DateTime<Utc>,
) {
    state.run_id = Some(run_id);
    state.steps = workflow
        .steps
        .iter()
        .map(|s| (s.id.clone(), StepState::default()))
        .collect();
    state.workflow = Some(workflow.clone());
    state.workflow_sha256 = workflow_sha256.to_string();
    state.input = input.clone();
    state.seed = seed;
    state.created_at = Some(at);
}

/// The step whose running attempt is `attempt`, if that is so.
fn running_step<'s>(
    state: &'s mut RunState,
    step: &str,
    attempt: u32,
) -> Option<&'s mut StepState> {
    let st = state.steps.get_mut(step)?;
    let running =
        st.status == StepStatus::Running && st.last_attempt().is_some_and(|a| a.number == attempt);
    running.then_some(st)
}

/// The step whose running attempt is `attempt`, or the transition error
/// naming what is wrong (an unknown step, or an attempt that is not running).
fn running_or_fail<'s>(
    state: &'s mut RunState,
    step: &str,
    attempt: u32,
    fail: &impl Fn(String) -> TransitionError,
) -> Result<&'s mut StepState, TransitionError> {
    if !state.steps.contains_key(step) {
        return Err(fail(format!("unknown step {step}")));
    }
    running_step(state, step, attempt)
        .ok_or_else(|| fail(format!("step {step} attempt {attempt} is not running")))
}

/// Fold one event into the state. `seq` and `at` come from the envelope.
///
/// Errors with [`TransitionError`] (naming run, seq, event and state) when
/// the event cannot follow: a first event other than `RunCreated` /
/// `RunForked`, an event after a terminal status, an attempt result for an
/// attempt that is not the running one, and so on.
pub fn evolve(
    mut state: RunState,
    seq: crate::ids::Seq,
    at: DateTime<Utc>,
    event: &RunEvent,
) -> Result<RunState, TransitionError> {
    // What the error needs, copied (not formatted) up front: the hot path
    // of a fold allocates nothing for errors that do not happen.
    let (run_before, status_before) = (state.run_id, state.status);
    let fail = |why: String| TransitionError {
        run: run_before
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into()),
        seq,
        event: event.name().to_string(),
        state: format!("run {}", status_before.as_str()),
        why,
    };
    if seq != state.seq + 1 {
        return Err(fail(format!("expected seq {}, got {seq}", state.seq + 1)));
    }
    let first = state.run_id.is_none();
    match event {
        RunEvent::RunCreated { .. } | RunEvent::RunForked { .. } if !first => {
            return Err(fail("the run already exists".into()));
        }
        RunEvent::RunCreated { .. } | RunEvent::RunForked { .. } => {}
        _ if first => {
            return Err(fail(
                "the first event must be RunCreated or RunForked".into(),
            ));
        }
        _ if state.status.is_terminal() => {
            return Err(fail("the run has ended".into()));
        }
        _ => {}
    }
    let known_step = |state: &RunState, id: &str| -> Result<(), TransitionError> {
        if state.steps.contains_key(id) {
            Ok(())
        } else {
            Err(fail(format!("unknown step {id}")))
        }
    };
    match event {
        RunEvent::RunCreated {
            run_id,
            workflow,
            workflow_sha256,
            input,
            idempotency_key,
            seed,
            trace_id,
            parent,
        } => {
            begin_run(
                &mut state,
                *run_id,
                workflow,
                workflow_sha256,
                input,
                *seed,
                at,
            );
            state.idempotency_key = idempotency_key.clone();
            state.trace_id = trace_id.clone();
            state.parent = parent.clone();
            state.promote();
        }
        RunEvent::RunForked {
            run_id,
            lineage,
            workflow,
            workflow_sha256,
            input,
            carried,
            seed,
        } => {
            begin_run(
                &mut state,
                *run_id,
                workflow,
                workflow_sha256,
                input,
                *seed,
                at,
            );
            for (id, c) in carried {
                let Some(st) = state.steps.get_mut(id.as_str()) else {
                    return Err(fail(format!("carried step {id} is not in the workflow")));
                };
                st.status = StepStatus::Succeeded;
                st.output = Some(c.output.clone());
                st.carried = true;
            }
            state.lineage = Some(lineage.clone());
            state.promote();
        }
        RunEvent::RunStarted {} => {
            if state.status != RunStatus::Pending {
                return Err(fail("only a pending run starts".into()));
            }
            state.status = RunStatus::Running;
        }
        RunEvent::StepAssigned { step, .. } => {
            known_step(&state, step)?;
            let st = state.steps.get_mut(step).expect("checked");
            if !matches!(
                st.status,
                StepStatus::Ready | StepStatus::Blocked | StepStatus::Retrying
            ) {
                return Err(fail(format!(
                    "step {step} is {}, not ready",
                    st.status.as_str()
                )));
            }
            state.assignments += 1;
        }
        RunEvent::StepUnassigned {
            step,
            reason,
            blocked,
        } => {
            known_step(&state, step)?;
            let st = state.steps.get_mut(step).expect("checked");
            if !matches!(
                st.status,
                StepStatus::Ready | StepStatus::Blocked | StepStatus::Retrying
            ) {
                return Err(fail(format!(
                    "step {step} is {}, not ready",
                    st.status.as_str()
                )));
            }
            st.status = if *blocked {
                StepStatus::Blocked
            } else {
                StepStatus::Failed
            };
            st.reason = Some(reason.clone());
        }
        RunEvent::StepStarted {
            step,
            attempt,
            agent,
            input,
            deadline,
            ..
        } => {
            known_step(&state, step)?;
            if state.status != RunStatus::Running || state.cancel_requested {
                return Err(fail(format!(
                    "step {step} cannot start while the run is not running"
                )));
            }
            let st = state.steps.get_mut(step).expect("checked");
            if !matches!(
                st.status,
                StepStatus::Ready | StepStatus::Blocked | StepStatus::Retrying
            ) {
                return Err(fail(format!(
                    "step {step} is {}, not ready",
                    st.status.as_str()
                )));
            }
            let want = st.attempts.len() as u32 + 1;
            if *attempt != want {
                return Err(fail(format!(
                    "step {step}: attempt {attempt}, expected {want}"
                )));
            }
            st.status = StepStatus::Running;
            st.retry_at = None;
            st.reason = None;
            st.attempts.push(Attempt {
                number: *attempt,
                agent: agent.clone(),
                started_at: at,
                ended_at: None,
                outcome: AttemptOutcome::Running,
                error: None,
                exit_code: None,
                deadline: *deadline,
                input: input.clone(),
                child: None,
            });
        }
        RunEvent::StepSucceeded {
            step,
            attempt,
            output,
            ..
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            let a = st.attempts.last_mut().expect("checked");
            a.outcome = AttemptOutcome::Succeeded;
            a.ended_at = Some(at);
            st.status = StepStatus::Succeeded;
            st.output = Some(output.clone());
            st.crash_streak = 0;
            // A signal step's success consumes the oldest buffered signal
            // of its name (the one whose data is its output).
            if let Some(Wait::Signal { name }) = st.wait.take()
                && let Some(i) = state.signals.iter().position(|b| b.name == name)
            {
                state.signals.remove(i);
            }
            state.promote();
        }
        RunEvent::StepFailed {
            step,
            attempt,
            kind,
            message,
            exit_code,
            next_retry_at,
            ..
        } => {
            known_step(&state, step)?;
            let st = state.steps.get_mut(step).expect("checked");
            let ok = st.last_attempt().is_some_and(|a| {
                a.number == *attempt
                    && match a.outcome {
                        AttemptOutcome::Running => st.status == StepStatus::Running,
                        // an at-most-once attempt cut off by a crash
                        AttemptOutcome::Abandoned => *kind == ErrorKind::Interrupted,
                        _ => false,
                    }
            });
            if !ok {
                return Err(fail(format!(
                    "step {step} attempt {attempt} is not running"
                )));
            }
            st.wait = None;
            let a = st.attempts.last_mut().expect("checked");
            if a.outcome == AttemptOutcome::Running {
                a.outcome = AttemptOutcome::Failed { kind: *kind };
                a.ended_at = Some(at);
                st.crash_streak = 0;
            }
            a.error = Some(message.clone());
            a.exit_code = *exit_code;
            match next_retry_at {
                Some(t) => {
                    st.status = StepStatus::Retrying;
                    st.retry_at = Some(*t);
                }
                None => {
                    st.status = StepStatus::Failed;
                    st.retry_at = None;
                    state.promote();
                }
            }
        }
        RunEvent::StepAbandoned {
            step,
            attempt,
            reason,
            stopped,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            st.wait = None;
            let a = st.attempts.last_mut().expect("checked");
            a.outcome = AttemptOutcome::Abandoned;
            a.ended_at = Some(at);
            a.error = Some(reason.clone());
            st.status = StepStatus::Ready;
            // A crash loop counts crashes only: a stop on purpose is not one.
            if !*stopped {
                st.crash_streak += 1;
            }
        }
        RunEvent::ChildRunStarted {
            step,
            attempt,
            child_run_id,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            let a = st.attempts.last_mut().expect("checked");
            if a.child.is_some() {
                return Err(fail(format!(
                    "step {step} attempt {attempt} already has its child"
                )));
            }
            a.child = Some(*child_run_id);
        }
        RunEvent::CallbackIssued {
            step,
            attempt,
            token_sha256,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if st.wait.is_some() {
                return Err(fail(format!("step {step} already waits")));
            }
            st.wait = Some(Wait::Callback {
                token_sha256: token_sha256.clone(),
                accepted: false,
            });
        }
        RunEvent::CallbackAccepted { step, attempt, .. } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            match st.wait.as_mut() {
                Some(Wait::Callback { accepted, .. }) => *accepted = true,
                _ => return Err(fail(format!("step {step} has no callback"))),
            }
        }
        RunEvent::PollStarted {
            step,
            attempt,
            url,
            every_ms,
            ..
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if st.wait.is_some() {
                return Err(fail(format!("step {step} already waits")));
            }
            st.wait = Some(Wait::Poll {
                url: url.clone(),
                every_ms: *every_ms,
            });
        }
        RunEvent::CallbackReceived { step, attempt } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if !matches!(st.wait, Some(Wait::Callback { .. })) {
                return Err(fail(format!("step {step} has no callback")));
            }
        }
        RunEvent::TimerStarted {
            step,
            attempt,
            fire_at,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if st.wait.is_some() {
                return Err(fail(format!("step {step} already waits")));
            }
            st.wait = Some(Wait::Timer { fire_at: *fire_at });
        }
        RunEvent::TimerFired { step, attempt } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if !matches!(st.wait, Some(Wait::Timer { .. })) {
                return Err(fail(format!("step {step} has no timer")));
            }
        }
        RunEvent::SignalAwaited {
            step,
            attempt,
            name,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if st.wait.is_some() {
                return Err(fail(format!("step {step} already waits")));
            }
            st.wait = Some(Wait::Signal { name: name.clone() });
        }
        RunEvent::SignalReceived { name, id, data } => {
            if !state.signal_ids.insert(id.clone()) {
                return Err(fail(format!("signal id {id} was already recorded")));
            }
            state.signals.push(BufferedSignal {
                name: name.clone(),
                id: id.clone(),
                data: data.clone(),
                seq,
            });
        }
        RunEvent::ApprovalRequested {
            step,
            attempt,
            approvers,
            min_approvals,
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            if st.wait.is_some() {
                return Err(fail(format!("step {step} already waits")));
            }
            st.wait = Some(Wait::Approval {
                approvers: approvers.clone(),
                min_approvals: *min_approvals,
                approved_by: Vec::new(),
            });
        }
        RunEvent::ApprovalDecided {
            step,
            attempt,
            by,
            decision,
            ..
        } => {
            let st = running_or_fail(&mut state, step, *attempt, &fail)?;
            let Some(Wait::Approval {
                approvers,
                approved_by,
                ..
            }) = st.wait.as_mut()
            else {
                return Err(fail(format!("step {step} does not wait for approval")));
            };
            if !approvers.is_empty() && !approvers.contains(by) {
                return Err(fail(format!("{by} is not an approver of step {step}")));
            }
            if *decision == ApprovalDecision::Approve && !approved_by.contains(by) {
                approved_by.push(by.clone());
            }
        }
        RunEvent::StepSkipped { step, reason } => {
            known_step(&state, step)?;
            let st = state.steps.get_mut(step).expect("checked");
            if !matches!(
                st.status,
                StepStatus::Waiting | StepStatus::Ready | StepStatus::Blocked
            ) {
                return Err(fail(format!(
                    "step {step} is {}, cannot be skipped",
                    st.status.as_str()
                )));
            }
            st.status = StepStatus::Skipped;
            st.reason = Some(reason.clone());
            state.promote();
        }
        RunEvent::RunPaused {} => {
            if state.status != RunStatus::Running {
                return Err(fail("only a running run pauses".into()));
            }
            state.status = RunStatus::Paused;
        }
        RunEvent::RunResumed {} => {
            if state.status != RunStatus::Paused {
                return Err(fail("only a paused run resumes".into()));
            }
            state.status = RunStatus::Running;
        }
        RunEvent::RunCancelRequested { .. } => {
            state.cancel_requested = true;
        }
        RunEvent::RunCanceled {} => {
            state.status = RunStatus::Canceled;
        }
        RunEvent::RunQuarantined { reason, evidence } => {
            state.status = RunStatus::Quarantined;
            state.quarantine = Some(Quarantine {
                reason: reason.clone(),
                evidence: evidence.clone(),
            });
        }
        RunEvent::RunReleased {} => {
            if state.status != RunStatus::Quarantined {
                return Err(fail("only a quarantined run is released".into()));
            }
            state.status = RunStatus::Running;
            let wf = state.workflow.clone().expect("set by the first event");
            for (id, st) in state.steps.iter_mut() {
                st.crash_streak = 0;
                let quarantining = wf
                    .step(id)
                    .is_some_and(|s| s.on_exhausted == OnExhausted::Quarantine);
                if st.status == StepStatus::Failed && quarantining {
                    st.status = StepStatus::Ready;
                    st.budget_base = st.attempts.len() as u32;
                }
            }
        }
        RunEvent::RunSucceeded {} => {
            if !matches!(state.status, RunStatus::Running) {
                return Err(fail("only a running run succeeds".into()));
            }
            state.status = RunStatus::Succeeded;
        }
        RunEvent::RunFailed { reason } => {
            state.status = RunStatus::Failed;
            state.failure = Some(reason.clone());
        }
    }
    state.seq = seq;
    state.updated_at = Some(at);
    Ok(state)
}

/// Fold a whole history (`(seq, time, event)` in order) from the empty state.
pub fn fold<'a>(
    events: impl IntoIterator<Item = (crate::ids::Seq, DateTime<Utc>, &'a RunEvent)>,
) -> Result<RunState, TransitionError> {
    events
        .into_iter()
        .try_fold(RunState::default(), |s, (seq, at, e)| evolve(s, seq, at, e))
}
