//! Run state as a fold over the run's events: `state' = evolve(state, e)`.
//!
//! `evolve` is pure and holds no business rule beyond "can this event
//! follow this state": every decision lives in [`crate::decide`]. The same
//! function folds live and replayed histories, so they cannot drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Lineage, RunEvent};
use crate::ids::RunId;
use crate::model::{ErrorKind, OnExhausted, Workflow};

/// Lifecycle of a run (DESIGN.md, Run lifecycle).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, not started.
    #[default]
    Pending,
    /// Executing.
    Running,
    /// No new attempts start.
    Paused,
    /// Ended: every step succeeded or was allowed to fail.
    Succeeded,
    /// Ended: a step failed.
    Failed,
    /// Ended: canceled.
    Canceled,
    /// Parked for a person.
    Quarantined,
}

impl RunStatus {
    /// Succeeded, failed or canceled.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Quarantined => "quarantined",
        }
    }
}

/// Status of a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Dependencies not done.
    #[default]
    Waiting,
    /// May start.
    Ready,
    /// An attempt is running.
    Running,
    /// Backing off until `retry_at`.
    Retrying,
    /// No agent available now (busy or circuit open).
    Blocked,
    /// Done.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Will not run.
    Skipped,
}

impl StepStatus {
    /// Succeeded, failed or skipped.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Blocked => "blocked",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum AttemptOutcome {
    /// Still running.
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed with this kind.
    Failed {
        /// The kind.
        kind: ErrorKind,
    },
    /// Cut off by an engine crash.
    Abandoned,
}

/// One try of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// From 1.
    pub number: u32,
    /// The agent, for `skills` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// When `StepStarted` was recorded.
    pub started_at: DateTime<Utc>,
    /// When its end was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
    /// The error message of a failed or abandoned attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code of a failed process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// The resolved input.
    pub input: Value,
}

/// The state of one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Its status.
    pub status: StepStatus,
    /// Every attempt, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Output of the successful attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// When a retrying step's next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// Agent chosen by the last `StepAssigned` (for the next attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<String>,
    /// Why the step is blocked, skipped or unassigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Attempts cut off by crashes in a row (reset by a finished attempt).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crash_streak: u32,
    /// Attempts made before the last release (not counted against the
    /// retry budget afterwards).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_base: u32,
    /// True when the step's output came from the source of a fork.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub carried: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl StepState {
    /// The last attempt.
    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }
    /// Attempts that count against the retry budget: since the last
    /// release, not abandoned by a crash.
    pub fn budget_used(&self) -> u32 {
        self.attempts
            .iter()
            .skip(self.budget_base as usize)
            .filter(|a| a.outcome != AttemptOutcome::Abandoned)
            .count() as u32
    }
    /// The last error message, if any.
    pub fn last_error(&self) -> Option<&str> {
        self.attempts.iter().rev().find_map(|a| a.error.as_deref())
    }
}

/// A quarantine: why and the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Why.
    pub reason: String,
    /// Evidence.
    pub evidence: Value,
}

/// The state of a run: the fold of its stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The run id (set by the first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    /// The pinned definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Arc<Workflow>>,
    /// Its SHA-256.
    #[serde(default)]
    pub workflow_sha256: String,
    /// The run input.
    #[serde(default)]
    pub input: Value,
    /// The idempotency key it was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Seed of deterministic randomness.
    #[serde(default)]
    pub seed: u64,
    /// Fork lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// Run status.
    pub status: RunStatus,
    /// A cancel was requested and attempts are being killed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Steps by id.
    pub steps: BTreeMap<String, StepState>,
    /// The quarantine, while quarantined (kept after release for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Assignments made so far (drives round-robin).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub assignments: u32,
    /// Time of the first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Seq of the last event folded.
    pub seq: u64,
}

/// An event that cannot follow the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("run {run}: event {event} at seq {seq} cannot follow the state ({state}): {why}")]
pub struct TransitionError {
    /// The run (or `-` before the first event).
    pub run: String,
    /// The seq of the event.
    pub seq: u64,
    /// The event's name.
    pub event: String,
    /// A summary of the state it met.
    pub state: String,
    /// What is wrong.
    pub why: String,
}

impl RunState {
    /// The workflow (panics only if called before the first event, which
    /// [`evolve`] never allows to be followed by anything else).
    pub fn wf(&self) -> &Workflow {
        self.workflow
            .as_deref()
            .expect("a run state past its first event has a workflow")
    }

    /// A step's state.
    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.get(id)
    }

    /// Outputs of succeeded steps.
    pub fn outputs(&self) -> BTreeMap<String, Value> {
        self.steps
            .iter()
            .filter_map(|(k, s)| s.output.clone().map(|o| (k.clone(), o)))
            .collect()
    }

    /// Steps with a running attempt: `(step, attempt number)`.
    pub fn running(&self) -> Vec<(&str, u32)> {
        self.steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Running)
            .filter_map(|(k, s)| s.last_attempt().map(|a| (k.as_str(), a.number)))
            .collect()
    }

    /// Whether the dependency `dep` lets its dependents go: succeeded, or
    /// failed with `continue_on_failure`.
    pub fn satisfies(&self, dep: &str) -> bool {
        let Some(s) = self.steps.get(dep) else {
            return false;
        };
        match s.status {
            StepStatus::Succeeded => true,
            StepStatus::Failed => self.wf().step(dep).is_some_and(|d| d.continue_on_failure),
            _ => false,
        }
    }

    /// Mark Waiting steps whose needs are all satisfied as Ready.
    fn promote(&mut self) {
        let wf = self.workflow.clone().expect("called after the first event");
        let ready: Vec<String> = wf
            .steps
            .iter()
            .filter(|s| {
                self.steps
                    .get(&s.id)
                    .is_some_and(|st| st.status == StepStatus::Waiting)
            })
            .filter(|s| s.needs.iter().all(|d| self.satisfies(d)))
            .map(|s| s.id.clone())
            .collect();
        for id in ready {
            if let Some(st) = self.steps.get_mut(&id) {
                st.status = StepStatus::Ready;
            }
        }
    }
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

/// Fold one event into the state. `seq` and `at` come from the envelope.
///
/// Errors with [`TransitionError`] (naming run, seq, event and state) when
/// the event cannot follow: a first event other than `RunCreated` /
/// `RunForked`, an event after a terminal status, an attempt result for an
/// attempt that is not the running one, and so on.
pub fn evolve(
    mut state: RunState,
    seq: u64,
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
        } => {
            state.run_id = Some(*run_id);
            state.steps = workflow
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepState::default()))
                .collect();
            state.workflow = Some(workflow.clone());
            state.workflow_sha256 = workflow_sha256.clone();
            state.input = input.clone();
            state.idempotency_key = idempotency_key.clone();
            state.seed = *seed;
            state.created_at = Some(at);
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
            state.run_id = Some(*run_id);
            state.steps = workflow
                .steps
                .iter()
                .map(|s| (s.id.clone(), StepState::default()))
                .collect();
            for (id, c) in carried {
                let Some(st) = state.steps.get_mut(id) else {
                    return Err(fail(format!("carried step {id} is not in the workflow")));
                };
                st.status = StepStatus::Succeeded;
                st.output = Some(c.output.clone());
                st.carried = true;
            }
            state.workflow = Some(workflow.clone());
            state.workflow_sha256 = workflow_sha256.clone();
            state.input = input.clone();
            state.seed = *seed;
            state.lineage = Some(lineage.clone());
            state.created_at = Some(at);
            state.promote();
        }
        RunEvent::RunStarted {} => {
            if state.status != RunStatus::Pending {
                return Err(fail("only a pending run starts".into()));
            }
            state.status = RunStatus::Running;
        }
        RunEvent::StepAssigned { step, agent, .. } => {
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
            st.assigned = Some(agent.clone());
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
            st.assigned = None;
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
            });
        }
        RunEvent::StepSucceeded {
            step,
            attempt,
            output,
            ..
        } => {
            known_step(&state, step)?;
            let Some(st) = running_step(&mut state, step, *attempt) else {
                return Err(fail(format!(
                    "step {step} attempt {attempt} is not running"
                )));
            };
            let a = st.attempts.last_mut().expect("checked");
            a.outcome = AttemptOutcome::Succeeded;
            a.ended_at = Some(at);
            st.status = StepStatus::Succeeded;
            st.output = Some(output.clone());
            st.crash_streak = 0;
            st.assigned = None;
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
            let a = st.attempts.last_mut().expect("checked");
            if a.outcome == AttemptOutcome::Running {
                a.outcome = AttemptOutcome::Failed { kind: *kind };
                a.ended_at = Some(at);
                st.crash_streak = 0;
            }
            a.error = Some(message.clone());
            a.exit_code = *exit_code;
            st.assigned = None;
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
        } => {
            known_step(&state, step)?;
            let Some(st) = running_step(&mut state, step, *attempt) else {
                return Err(fail(format!(
                    "step {step} attempt {attempt} is not running"
                )));
            };
            let a = st.attempts.last_mut().expect("checked");
            a.outcome = AttemptOutcome::Abandoned;
            a.ended_at = Some(at);
            a.error = Some(reason.clone());
            st.status = StepStatus::Ready;
            st.crash_streak += 1;
            st.assigned = None;
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
    events: impl IntoIterator<Item = (u64, DateTime<Utc>, &'a RunEvent)>,
) -> Result<RunState, TransitionError> {
    events
        .into_iter()
        .try_fold(RunState::default(), |s, (seq, at, e)| evolve(s, seq, at, e))
}
