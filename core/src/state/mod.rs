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

use crate::event::Lineage;
use crate::ids::RunId;
use crate::model::{ErrorKind, Workflow};

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
    /// The child run a `workflow:` step's attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<RunId>,
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
    /// What the running attempt of a waiting step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Wait>,
}

/// What a waiting step's running attempt waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "for")]
pub enum Wait {
    /// A durable timer.
    Timer {
        /// When it comes due.
        fire_at: DateTime<Utc>,
    },
    /// A signal of this name.
    Signal {
        /// The signal's name.
        name: String,
    },
    /// A callback (its request sent, or being sent: `accepted` once the
    /// service answered 2xx).
    Callback {
        /// SHA-256 (hex) of the one-time token.
        token_sha256: String,
        /// Whether the service accepted the request.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accepted: bool,
    },
    /// The engine polls `url` every `every_ms` for a terminal state.
    Poll {
        /// The poll URL.
        url: String,
        /// Between polls, ms.
        every_ms: u64,
    },
    /// Approvals.
    Approval {
        /// Who may decide (empty: anyone).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        /// Approvals needed.
        min_approvals: u32,
        /// Who approved so far, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approved_by: Vec<String>,
    },
}

/// A signal received and not yet consumed by a `signal` step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferedSignal {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// Its data.
    pub data: Value,
    /// Seq of its `SignalReceived`.
    pub seq: crate::ids::Seq,
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
    /// The run's trace id, when `RunCreated` recorded one (32 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
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
    /// The parent run and step, for a child run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::event::ParentRef>,
    /// Run status.
    pub status: RunStatus,
    /// A cancel was requested and attempts are being killed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Steps by id.
    pub steps: BTreeMap<crate::ids::StepId, StepState>,
    /// The quarantine, while quarantined (kept after release for audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<Quarantine>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Assignments made so far (drives round-robin).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub assignments: u32,
    /// Signals received and not yet consumed, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<BufferedSignal>,
    /// Ids of every signal recorded (a repeated id is not recorded again).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub signal_ids: std::collections::BTreeSet<String>,
    /// Time of the first event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// Seq of the last event folded.
    pub seq: crate::ids::Seq,
}

/// An event that cannot follow the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("run {run}: event {event} at seq {seq} cannot follow the state ({state}): {why}")]
pub struct TransitionError {
    /// The run (or `-` before the first event).
    pub run: String,
    /// The seq of the event.
    pub seq: crate::ids::Seq,
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
            .filter_map(|(k, s)| s.output.clone().map(|o| (k.to_string(), o)))
            .collect()
    }

    /// Steps with a running attempt: `(step, attempt number)`, waiting
    /// steps included.
    pub fn running(&self) -> Vec<(&str, u32)> {
        self.steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Running)
            .filter_map(|(k, s)| s.last_attempt().map(|a| (k.as_str(), a.number)))
            .collect()
    }

    /// Whether the run waits only for the outside world: it runs, nothing
    /// executes, nothing is ready or due for a retry, and every running
    /// step waits for a signal or an approval (a timer fires by itself).
    /// A foreground `chronicle run` stops there; a signal or an approval,
    /// then `chronicle recover` (or a server), continues it.
    pub fn parked(&self) -> bool {
        self.status == RunStatus::Running
            && !self.cancel_requested
            && self.steps.values().any(|s| s.status == StepStatus::Running)
            && self.steps.values().all(|s| match s.status {
                StepStatus::Running => {
                    matches!(
                        s.wait,
                        Some(
                            Wait::Signal { .. }
                                | Wait::Approval { .. }
                                | Wait::Callback { accepted: true, .. }
                        )
                    )
                }
                StepStatus::Ready | StepStatus::Retrying | StepStatus::Blocked => false,
                _ => true,
            })
    }

    /// Steps with a running attempt that executes something (a process,
    /// a request, a function): `(step, attempt number)`. Waiting steps
    /// are left out: nothing of theirs runs, so a crash or a stop does
    /// not cut them off.
    pub fn executing(&self) -> Vec<(&str, u32)> {
        self.steps
            .iter()
            .filter(|(_, s)| {
                s.status == StepStatus::Running
                    && matches!(
                        s.wait,
                        None | Some(Wait::Callback {
                            accepted: false,
                            ..
                        })
                    )
            })
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
        let ready: Vec<crate::ids::StepId> = wf
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
            if let Some(st) = self.steps.get_mut(id.as_str()) {
                st.status = StepStatus::Ready;
            }
        }
    }
}

mod evolve;
pub use evolve::{evolve, fold};
