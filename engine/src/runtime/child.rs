//! The executor of `workflow:` steps: an attempt starts (or, after a
//! crash, finds again by its idempotency key `PARENT_RUN:STEP`) the child
//! run, records `ChildRunStarted` in the parent, follows the child to its
//! end, and succeeds with the child's outputs. Canceling the parent
//! cancels the child; stopping or crashing the engine does not (the child
//! is a run of its own and is recovered as one).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::actor::Msg;
use super::engine::{Engine, EngineError};
use crate::decide::{AttemptResult, Command};
use crate::effects::StartAttempt;
use crate::event::ParentRef;
use crate::ids::RunId;
use crate::model::ErrorKind;
use crate::model::template::Scope;
use crate::state::{RunState, RunStatus};

/// Run the attempt `sa` of the parent `parent`'s `workflow:` step.
pub(crate) async fn run_child(
    engine: Engine,
    parent: RunId,
    sa: &StartAttempt,
    trace_id: Option<String>,
    tx: &mpsc::UnboundedSender<Msg>,
    mut kill: oneshot::Receiver<()>,
) -> AttemptResult {
    let started = Instant::now();
    let fail = |kind: ErrorKind, message: String| AttemptResult::Failed {
        kind,
        message,
        exit_code: None,
        http_status: None,
        duration_ms: started.elapsed().as_millis() as u64,
        stderr: None,
    };
    let Some(definition) = sa.exec.child.clone() else {
        return fail(
            ErrorKind::Permanent,
            format!(
                "the child workflow {} was not read when the definition was loaded",
                sa.exec.workflow.as_deref().unwrap_or("?")
            ),
        );
    };
    let input = match &sa.input {
        Value::Null => Value::Object(Default::default()),
        other => other.clone(),
    };
    let parent_ref = ParentRef {
        run_id: parent,
        step: sa.step.clone(),
    };
    let child = match engine
        .submit_child((*definition).clone(), input, parent_ref, trace_id)
        .await
    {
        Ok((c, _)) => c,
        Err(e) => {
            return fail(
                ErrorKind::Permanent,
                format!("cannot start the child run: {e}"),
            );
        }
    };
    let (reply, _) = oneshot::channel();
    let _ = tx.send(Msg::Control(
        Command::ChildStarted {
            step: sa.step.clone(),
            attempt: sa.attempt,
            child_run_id: child,
        },
        reply,
    ));
    let end = tokio::select! {
        s = follow(&engine, child) => s,
        _ = &mut kill => {
            // Killed: by a cancel of the parent (then the child is
            // canceled too), or by a stop or shutdown of the engine (then
            // the child goes on as a run of its own).
            let canceling = engine
                .live_state(parent)
                .is_some_and(|s| s.cancel_requested);
            if canceling {
                let _ = engine.cancel(child, "its parent run was canceled").await;
                let _ = tokio::time::timeout(Duration::from_secs(30), engine.wait(child)).await;
                return fail(ErrorKind::Canceled, format!("canceled with its parent; child run {child} canceled"));
            }
            return fail(ErrorKind::Canceled, format!("the engine stopped while child run {child} ran"));
        }
    };
    match end {
        Ok(s) if s.status == RunStatus::Succeeded => AttemptResult::Succeeded {
            output: outputs(&s),
            duration_ms: started.elapsed().as_millis() as u64,
            stdout: None,
            stderr: None,
        },
        Ok(s) => fail(
            ErrorKind::Permanent,
            format!(
                "child run {child} {}{}",
                s.status.as_str(),
                s.failure
                    .as_ref()
                    .or(s.quarantine.as_ref().map(|q| &q.reason))
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => fail(
            ErrorKind::Transient,
            format!("cannot follow child run {child}: {e}"),
        ),
    }
}

/// Follow `child` to its end (or quarantine). A child no actor executes
/// yet — its recovery is under way elsewhere, or nobody recovered it — is
/// recovered here; a concurrent recovery is waited for.
async fn follow(engine: &Engine, child: RunId) -> Result<RunState, EngineError> {
    loop {
        match engine.handle(child).await {
            Ok(_) => break,
            Err(EngineError::Stopped(..)) => {
                // Executed elsewhere (another worker, on a shared
                // database) or being recovered: its stored state says when
                // it is over.
                let s = engine.state(child)?;
                if s.status.is_terminal() || s.status == crate::state::RunStatus::Quarantined {
                    return Ok(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    engine.wait(child).await
}

/// The child's outputs: its declared `outputs` resolved, or without any,
/// every step's output by step id.
pub(crate) fn outputs(s: &RunState) -> Value {
    let wf = s.wf();
    let step_outputs = s.outputs();
    if wf.outputs.is_empty() {
        return serde_json::to_value(step_outputs).unwrap_or(Value::Null);
    }
    let run = s.run_id.map(|r| r.to_string()).unwrap_or_default();
    let scope = Scope {
        run_id: &run,
        input: &s.input,
        outputs: &step_outputs,
    };
    Value::Object(
        wf.resolve_outputs(&scope)
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(Value::Null)))
            .collect(),
    )
}
