//! The decider's inputs and refusals: [`Ctx`], [`Command`],
//! [`AttemptResult`], [`Rejected`].

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::circuit::CircuitState;
use crate::event::Captured;
use crate::ids::RunId;
use crate::model::{ErrorKind, Workflow};
use crate::state::TransitionError;

/// What an agent looks like to the decider right now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentView {
    /// Attempts running on it, in every run.
    pub running: u32,
    /// Its circuit.
    pub circuit: CircuitState,
}

/// The world as `decide` may see it.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Now.
    pub now: DateTime<Utc>,
    /// How many new attempts this run may start now (global limit).
    pub slots: usize,
    /// Agents by name.
    pub agents: BTreeMap<String, AgentView>,
}

impl Ctx {
    /// A context at `now` with unlimited slots and idle, closed agents.
    pub fn at(now: DateTime<Utc>) -> Self {
        Self {
            now,
            slots: usize::MAX,
            agents: BTreeMap::new(),
        }
    }

    /// This context with no free slot: no attempt can start.
    pub fn with_no_slots(mut self) -> Self {
        self.slots = 0;
        self
    }
}

/// How an attempt ended, as reported by an executor.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptResult {
    /// Success.
    Succeeded {
        /// Output.
        output: Value,
        /// Milliseconds.
        duration_ms: u64,
        /// Captured stdout.
        stdout: Option<Captured>,
        /// Captured stderr.
        stderr: Option<Captured>,
    },
    /// Failure; `kind` is the executor's view, refined by the step's
    /// retry policy (exit codes, HTTP statuses).
    Failed {
        /// Kind.
        kind: ErrorKind,
        /// Message.
        message: String,
        /// Exit code.
        exit_code: Option<i32>,
        /// HTTP status.
        http_status: Option<u16>,
        /// Milliseconds.
        duration_ms: u64,
        /// Captured stderr.
        stderr: Option<Captured>,
    },
}

/// What can be asked of a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Create the run.
    Create {
        /// New id.
        run_id: RunId,
        /// Definition (validated).
        workflow: Arc<Workflow>,
        /// Input (merged over the definition's defaults).
        input: Value,
        /// Idempotency key.
        idempotency_key: Option<String>,
        /// Seed for retry jitter.
        seed: u64,
        /// The run's trace id (32 hex digits), recorded in `RunCreated`.
        trace_id: Option<String>,
        /// The parent run and step of a child run.
        parent: Option<crate::event::ParentRef>,
    },
    /// Start executing.
    Start,
    /// An attempt ended.
    Finished {
        /// Step.
        step: crate::ids::StepId,
        /// Attempt.
        attempt: u32,
        /// Result.
        result: AttemptResult,
    },
    /// Time passed or capacity freed: start due retries, time out attempts
    /// past their deadline, re-route blocked steps.
    Tick,
    /// The engine restarted: abandon attempts that never finished.
    Recover,
    /// The engine is stopping on purpose (SIGINT/SIGTERM) and has killed
    /// the run's attempts: record each as abandoned with `reason`, not as
    /// a crash. Nothing else changes; `recover` continues the run later.
    Stop {
        /// Why (e.g. "the engine was stopped by SIGTERM").
        reason: String,
    },
    /// Cancel.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Pause.
    Pause,
    /// Resume after pause.
    Resume,
    /// Release from quarantine.
    Release,
    /// A signal for the run: recorded (once per `id`), then consumed by a
    /// `signal` step of its name, now or later.
    Signal {
        /// The signal's name.
        name: String,
        /// Its id (a repeat is ignored).
        id: String,
        /// Its data.
        data: Value,
    },
    /// A `completion: callback` step's attempt drew its one-time token.
    CallbackIssued {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// SHA-256 (hex) of the token.
        token_sha256: String,
    },
    /// A callback came with the token whose SHA-256 is `token_sha256`.
    Callback {
        /// SHA-256 (hex) of the token.
        token_sha256: String,
        /// The callback's body: the step's output.
        output: Value,
    },
    /// A `workflow:` step's attempt has its child run.
    ChildStarted {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// The child run.
        child_run_id: RunId,
    },
    /// A person's decision on an `approval` step.
    Approval {
        /// The step.
        step: crate::ids::StepId,
        /// Who decides.
        by: String,
        /// Approve or reject.
        decision: crate::event::ApprovalDecision,
        /// Their comment.
        comment: Option<String>,
    },
}

/// A command refused: nothing is appended.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// Create on an existing run.
    #[error("run {0} already exists")]
    AlreadyExists(String),
    /// A command on a run that does not exist yet.
    #[error("the run does not exist")]
    NoRun,
    /// The run has ended.
    #[error("run {run} has ended ({status}); {command} does not apply")]
    Ended {
        /// Run.
        run: String,
        /// Its status.
        status: &'static str,
        /// The command.
        command: &'static str,
    },
    /// The command does not apply in this status.
    #[error("run {run} is {status}; {command} applies only to a {needs} run")]
    WrongStatus {
        /// Run.
        run: String,
        /// Its status.
        status: &'static str,
        /// The command.
        command: &'static str,
        /// The status it needs.
        needs: &'static str,
    },
    /// Fork at a seq past the head or of an empty run.
    #[error("cannot fork: {0}")]
    BadFork(String),
    /// An approval for a step that does not wait for one.
    #[error("step {step} of run {run} is not waiting for an approval{now}")]
    NotWaiting {
        /// Run.
        run: String,
        /// Step.
        step: String,
        /// What the step is doing instead (`; it is succeeded`).
        now: String,
    },
    /// A callback whose token no waiting step holds (any more).
    #[error(
        "no step of run {run} waits for this callback: it was used, the wait timed out or the run moved on"
    )]
    CallbackDone {
        /// Run.
        run: String,
    },
    /// A decision by someone the step does not list as an approver.
    #[error(
        "{by} is not an approver of step {step} (approvers: {approvers}); nothing was recorded"
    )]
    NotApprover {
        /// Step.
        step: String,
        /// Who tried.
        by: String,
        /// Who may.
        approvers: String,
    },
    /// `decide` produced an event `evolve` refused: a bug in the engine.
    #[error("internal error: {0}")]
    Internal(#[from] TransitionError),
}

impl Command {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Start => "start",
            Self::Finished { .. } => "attempt finished",
            Self::Tick => "tick",
            Self::Recover => "recover",
            Self::Stop { .. } => "stop",
            Self::Cancel { .. } => "cancel",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Release => "release",
            Self::Signal { .. } => "signal",
            Self::Approval { .. } => "approval",
            Self::ChildStarted { .. } => "child started",
            Self::CallbackIssued { .. } => "callback issued",
            Self::Callback { .. } => "callback",
        }
    }
}
