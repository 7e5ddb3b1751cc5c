//! Waiting steps in the decider: what a wait is recorded as when its
//! step starts, which waits end (a due timer, a buffered signal, enough
//! approvals; all of them on cancel), and decisions on approvals.

use super::*;

/// What a wait waits for, in words (for messages).
pub(super) fn describe(w: &Wait) -> String {
    match w {
        Wait::Timer { fire_at } => format!("its timer (due at {})", fire_at.to_rfc3339()),
        Wait::Signal { name } => format!("the signal {name:?}"),
        Wait::Approval {
            min_approvals,
            approved_by,
            ..
        } => format!("approval ({} of {min_approvals} so far)", approved_by.len()),
        Wait::Callback { accepted, .. } => {
            if *accepted {
                "its callback".into()
            } else {
                "the service to accept its request".into()
            }
        }
        Wait::Poll { url, .. } => format!("a terminal state from {url}"),
    }
}

/// The polling spec of step `id`, for `completion: { poll }`.
pub(super) fn poll_of(wf: &Workflow, id: &str) -> Option<crate::model::PollSpec> {
    wf.step(id)?.completion.as_ref()?.poll().cloned()
}

/// Record what a waiting step's attempt waits for.
pub(super) fn begin_wait(
    d: &mut Draft<'_>,
    step: &str,
    attempt: u32,
    wait: WaitSpec,
) -> Result<(), Rejected> {
    match wait {
        WaitSpec::Timer(t) => {
            let fire_at = match t {
                TimerSpec::For(dur) => {
                    d.ctx.now + TimeDelta::milliseconds(dur.ms.min(i64::MAX as u64) as i64)
                }
                TimerSpec::Until(text) => chrono::DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    // Validation checked it; a bad one fires at once.
                    .unwrap_or(d.ctx.now),
            };
            d.push(RunEvent::TimerStarted {
                step: step.into(),
                attempt,
                fire_at,
            })
        }
        WaitSpec::Signal(name) => d.push(RunEvent::SignalAwaited {
            step: step.into(),
            attempt,
            name,
        }),
        WaitSpec::Approval(a) => d.push(RunEvent::ApprovalRequested {
            step: step.into(),
            attempt,
            approvers: a.approvers,
            min_approvals: a.min_approvals,
        }),
    }
}

/// End the waits that can end: a due timer fires, a buffered signal is
/// consumed, enough approvals succeed the step; on cancel every wait
/// ends as canceled. Any non-terminal run (a paused run's timers fire
/// too, as its running attempts finish).
pub(super) fn settle_waits(d: &mut Draft<'_>) -> Result<(), Rejected> {
    if d.state.status.is_terminal() {
        return Ok(());
    }
    let wf = d.wf();
    for s in &wf.steps {
        let st = &d.state.steps[&s.id];
        if st.status != StepStatus::Running {
            continue;
        }
        let (Some(wait), Some(a)) = (st.wait.clone(), st.last_attempt()) else {
            continue;
        };
        let (attempt, started) = (a.number, a.started_at);
        let ms = (d.ctx.now - started).num_milliseconds().max(0) as u64;
        if d.state.cancel_requested {
            fail_attempt(
                d,
                &s.id,
                attempt,
                ErrorKind::Canceled,
                format!("canceled while waiting for {}", describe(&wait)),
                None,
                None,
                ms,
                None,
            )?;
            continue;
        }
        let output = match &wait {
            Wait::Timer { fire_at } if *fire_at <= d.ctx.now => {
                d.push(RunEvent::TimerFired {
                    step: s.id.clone(),
                    attempt,
                })?;
                Some(json!({ "fired_at": fire_at }))
            }
            Wait::Signal { name } => d
                .state
                .signals
                .iter()
                .find(|b| &b.name == name)
                .map(|b| b.data.clone()),
            Wait::Approval {
                min_approvals,
                approved_by,
                ..
            } if approved_by.len() >= *min_approvals as usize => {
                Some(json!({ "approved_by": approved_by }))
            }
            _ => None,
        };
        if let Some(output) = output {
            d.push(RunEvent::StepSucceeded {
                step: s.id.clone(),
                attempt,
                output,
                duration_ms: ms,
                stdout: None,
                stderr: None,
            })?;
        }
    }
    Ok(())
}

/// A decision on an approval step: refused when the step does not wait
/// for one or `by` is not a listed approver (nothing recorded); a repeated
/// approval by the same person changes nothing; a rejection fails the
/// step (and follows `on_exhausted`).
pub(super) fn approve(
    d: &mut Draft<'_>,
    run: &str,
    step: crate::ids::StepId,
    by: String,
    decision: ApprovalDecision,
    comment: Option<String>,
) -> Result<(), Rejected> {
    let not_waiting = |now: String| Rejected::NotWaiting {
        run: run.to_string(),
        step: step.to_string(),
        now,
    };
    let Some(st) = d.state.steps.get(&step) else {
        return Err(not_waiting("; the workflow has no such step".into()));
    };
    let Some(Wait::Approval {
        approvers,
        approved_by,
        ..
    }) = &st.wait
    else {
        return Err(not_waiting(format!("; it is {}", st.status.as_str())));
    };
    if !approvers.is_empty() && !approvers.contains(&by) {
        return Err(Rejected::NotApprover {
            step: step.to_string(),
            by,
            approvers: approvers.join(", "),
        });
    }
    if decision == ApprovalDecision::Approve && approved_by.contains(&by) {
        return Ok(()); // already counted
    }
    let attempt = st.last_attempt().map(|a| a.number).unwrap_or(1);
    let ms = st
        .last_attempt()
        .map(|a| (d.ctx.now - a.started_at).num_milliseconds().max(0) as u64)
        .unwrap_or(0);
    d.push(RunEvent::ApprovalDecided {
        step: step.clone(),
        attempt,
        by: by.clone(),
        decision,
        comment: comment.clone(),
    })?;
    if decision == ApprovalDecision::Reject {
        let why = comment.map(|c| format!(": {c}")).unwrap_or_default();
        fail_attempt(
            d,
            &step,
            attempt,
            ErrorKind::Permanent,
            format!("rejected by {by}{why}"),
            None,
            None,
            ms,
            None,
        )?;
    }
    Ok(())
}
