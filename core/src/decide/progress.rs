//! How a run moves on after a command: recovery after a crash (attempts
//! in flight abandoned, poison runs quarantined), dependents of failed
//! steps skipped, ready and due steps started within the capacity given
//! (routing `skills` steps to agents), and the run ended when every step
//! is done.

use super::attempts::{evidence, start_attempt};
use super::routing::{Route, route};
use super::waits::settle_waits;
use super::{Draft, Rejected};
use crate::event::RunEvent;
use crate::model::{ErrorKind, Workflow};
use crate::state::{RunStatus, StepStatus};

/// After a crash: every attempt in flight abandoned; a step abandoned
/// `quarantine_after_crashes` times in a row quarantines the run; an
/// `at_most_once` step fails rather than run again.
pub(super) fn recover(d: &mut Draft<'_>) -> Result<(), Rejected> {
    let wf = d.wf();
    let k = wf.quarantine_after_crashes();
    // Waiting steps survive the crash: their timers and waits are in the
    // fold and go on.
    let running = super::executing(d);
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
pub(super) fn skip_dependents(d: &mut Draft<'_>) -> Result<(), Rejected> {
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

/// Move the run on: settle waits, start what is ready (again while a wait
/// ends at once), and end the run when everything is done.
pub(super) fn advance(d: &mut Draft<'_>) -> Result<(), Rejected> {
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
pub(super) fn start_ready(
    d: &mut Draft<'_>,
    wf: &std::sync::Arc<Workflow>,
) -> Result<(), Rejected> {
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
pub(super) fn end_run(d: &mut Draft<'_>, wf: &Workflow) -> Result<(), Rejected> {
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
