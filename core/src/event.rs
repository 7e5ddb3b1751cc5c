//! The event vocabulary (DESIGN.md): run-stream events ([`RunEvent`]) and
//! agent-stream events ([`AgentEvent`]).
//!
//! Serialized as JSON objects with an explicit `"type"` tag holding the
//! variant name (`{"type":"StepStarted",...}`); the names are stable. An
//! unknown `type` on read is an error, never skipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::RunId;
use crate::model::{ErrorKind, Strategy, Workflow};

/// The version of the event schema written in every envelope.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a run came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The run it was forked from.
    pub forked_from: RunId,
    /// The seq of the source run it was forked at.
    pub at_seq: crate::ids::Seq,
}

/// The run and step that started a child run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent run.
    pub run_id: RunId,
    /// Its step whose attempt started the child.
    pub step: crate::ids::StepId,
}

/// Captured output of a stream (stdout or stderr), capped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Captured {
    /// The first bytes (at most 64 KiB), lossily decoded as UTF-8.
    pub text: String,
    /// True when `text` is shorter than the whole output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Total bytes produced.
    pub total_bytes: u64,
    /// SHA-256 (hex) of the full output, stored beside the database as
    /// `OUTPUTS_DIR/SHA256`, when it was truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A step carried over into a forked run with its output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CarriedStep {
    /// Its output in the source run (or the override).
    pub output: Value,
    /// True when the output was overridden at fork time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overridden: bool,
}

/// An event of a run's stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum RunEvent {
    /// The run exists, pinned to this definition.
    RunCreated {
        /// The run id.
        run_id: RunId,
        /// The whole definition.
        workflow: Arc<Workflow>,
        /// SHA-256 of the definition's canonical JSON.
        workflow_sha256: String,
        /// The run input (defaults merged).
        input: Value,
        /// The idempotency key the run was created with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// The seed of the run's deterministic randomness (retry jitter).
        seed: u64,
        /// The run's trace (32 hex digits, W3C): its run id, or the trace
        /// of the request that created it; every process executing the
        /// run continues it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
        /// The run and step that started this one as a child workflow.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<ParentRef>,
    },
    /// A run forked from another run at a seq; steps in `carried` keep the
    /// source's outputs, every other step runs again.
    RunForked {
        /// The new run id.
        run_id: RunId,
        /// Source run and seq.
        lineage: Lineage,
        /// The definition pinned by the source run.
        workflow: Arc<Workflow>,
        /// Its SHA-256.
        workflow_sha256: String,
        /// The run input (possibly changed at fork time).
        input: Value,
        /// Succeeded steps carried over, by id.
        carried: BTreeMap<String, CarriedStep>,
        /// The seed.
        seed: u64,
    },
    /// The run began executing.
    RunStarted {},
    /// A `skills` step was routed to an agent.
    StepAssigned {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt it was assigned for.
        attempt: u32,
        /// The agent chosen.
        agent: String,
        /// The strategy used.
        strategy: Strategy,
        /// Why this agent (candidates and their state).
        why: String,
    },
    /// A `skills` step could not be routed.
    StepUnassigned {
        /// The step.
        step: crate::ids::StepId,
        /// Why, e.g. "no agent has skill context_analysis".
        reason: String,
        /// True: capable agents exist but none is available now (the step
        /// is blocked and waits); false: no agent can ever take it.
        blocked: bool,
    },
    /// An attempt was started (durable before the effect begins).
    StepStarted {
        /// The step.
        step: crate::ids::StepId,
        /// Attempt number, from 1.
        attempt: u32,
        /// The agent running it (`skills` steps).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// The resolved input (secrets left as references).
        input: Value,
        /// `RUN_ID:STEP_ID`.
        idempotency_key: String,
        /// When the attempt times out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
    },
    /// An attempt succeeded.
    StepSucceeded {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// The output (JSON stdout, JSON response, function result; else
        /// `{"stdout": TEXT}`).
        output: Value,
        /// Wall time of the attempt, milliseconds.
        duration_ms: u64,
        /// Captured stdout, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdout: Option<Captured>,
        /// Captured stderr, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stderr: Option<Captured>,
    },
    /// An attempt failed.
    StepFailed {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// transient | permanent | timeout | interrupted | canceled | unassigned.
        kind: ErrorKind,
        /// What happened.
        message: String,
        /// Exit code of a process.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// HTTP status of a response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        /// When the next attempt starts (with backoff and jitter), if one will.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_retry_at: Option<DateTime<Utc>>,
        /// Wall time of the attempt, milliseconds.
        duration_ms: u64,
        /// Captured stderr, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stderr: Option<Captured>,
    },
    /// An attempt was cut off by a crash of the engine.
    StepAbandoned {
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// Why.
        reason: String,
        /// The engine was stopped on purpose (SIGINT/SIGTERM): the attempt
        /// was killed and this is recorded at the stop. Such an attempt does
        /// not count towards a crash loop (absent in JSON when false: a
        /// crash, found on recovery).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stopped: bool,
    },
    /// A step will not run.
    StepSkipped {
        /// The step.
        step: crate::ids::StepId,
        /// Why (e.g. "dependency count failed").
        reason: String,
    },
    /// No new attempts start until resumed.
    RunPaused {},
    /// Attempts start again.
    RunResumed {},
    /// Cancellation asked: running attempts are being killed.
    RunCancelRequested {
        /// Why.
        reason: String,
    },
    /// The run ended canceled.
    RunCanceled {},
    /// The run is parked for a person.
    RunQuarantined {
        /// Why.
        reason: String,
        /// Evidence (attempts, errors).
        evidence: Value,
    },
    /// A person released the quarantined run; it continues.
    RunReleased {},
    /// A `workflow:` step's attempt started (or, after a crash, found
    /// again by its idempotency key `PARENT_RUN:STEP`) its child run.
    ChildRunStarted {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// The child run.
        child_run_id: RunId,
    },
    /// A `completion: callback` step's attempt got a one-time callback
    /// token (only its SHA-256 is recorded), before its request is sent.
    CallbackIssued {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// SHA-256 (hex) of the token.
        token_sha256: String,
    },
    /// The service accepted the request (2xx): the step waits for the
    /// callback.
    CallbackAccepted {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// What it answered (the response's JSON, or `{status, body}`).
        response: Value,
    },
    /// A `completion: { poll }` step's request was accepted (2xx): the
    /// engine polls `url` until it answers a terminal state.
    PollStarted {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// The poll URL, templates resolved.
        url: String,
        /// Between polls, ms.
        every_ms: u64,
        /// What the request answered.
        response: Value,
    },
    /// The callback came (the step succeeds with its body in the same
    /// commit).
    CallbackReceived {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
    },
    /// A waiting step armed its durable timer (`sleep`, `sleep_until`).
    TimerStarted {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// When the timer comes due (UTC).
        fire_at: DateTime<Utc>,
    },
    /// The timer came due; the step succeeds in the same commit.
    TimerFired {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
    },
    /// A `signal` step began waiting for signals of `name`.
    SignalAwaited {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// The signal's name.
        name: String,
    },
    /// A signal arrived. It is buffered until a `signal` step of its name
    /// consumes it (the oldest first); a repeated `id` is not recorded
    /// again.
    SignalReceived {
        /// The signal's name.
        name: String,
        /// Its id (the sender's, or one the engine drew).
        id: String,
        /// Its data (the output of the step that consumes it).
        data: Value,
    },
    /// An `approval` step asked for decisions.
    ApprovalRequested {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// Who may decide (empty: anyone).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvers: Vec<String>,
        /// Approvals needed.
        min_approvals: u32,
    },
    /// Someone approved or rejected (the audit trail: who, what, when).
    ApprovalDecided {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// Who decided.
        by: String,
        /// `approve` or `reject`.
        decision: ApprovalDecision,
        /// Their comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// The run ended succeeded.
    RunSucceeded {},
    /// The run ended failed.
    RunFailed {
        /// Why (the failed steps).
        reason: String,
    },
}

/// An approver's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    /// Counts toward `min_approvals`.
    Approve,
    /// Fails the step (it follows `on_exhausted`).
    Reject,
}

impl ApprovalDecision {
    /// `approve` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

impl RunEvent {
    /// The variant name (the `type` tag).
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunCreated { .. } => "RunCreated",
            Self::RunForked { .. } => "RunForked",
            Self::RunStarted {} => "RunStarted",
            Self::StepAssigned { .. } => "StepAssigned",
            Self::StepUnassigned { .. } => "StepUnassigned",
            Self::StepStarted { .. } => "StepStarted",
            Self::StepSucceeded { .. } => "StepSucceeded",
            Self::StepFailed { .. } => "StepFailed",
            Self::StepAbandoned { .. } => "StepAbandoned",
            Self::StepSkipped { .. } => "StepSkipped",
            Self::RunPaused {} => "RunPaused",
            Self::RunResumed {} => "RunResumed",
            Self::RunCancelRequested { .. } => "RunCancelRequested",
            Self::RunCanceled {} => "RunCanceled",
            Self::RunQuarantined { .. } => "RunQuarantined",
            Self::RunReleased {} => "RunReleased",
            Self::ChildRunStarted { .. } => "ChildRunStarted",
            Self::CallbackIssued { .. } => "CallbackIssued",
            Self::CallbackAccepted { .. } => "CallbackAccepted",
            Self::CallbackReceived { .. } => "CallbackReceived",
            Self::PollStarted { .. } => "PollStarted",
            Self::TimerStarted { .. } => "TimerStarted",
            Self::TimerFired { .. } => "TimerFired",
            Self::SignalAwaited { .. } => "SignalAwaited",
            Self::SignalReceived { .. } => "SignalReceived",
            Self::ApprovalRequested { .. } => "ApprovalRequested",
            Self::ApprovalDecided { .. } => "ApprovalDecided",
            Self::RunSucceeded {} => "RunSucceeded",
            Self::RunFailed { .. } => "RunFailed",
        }
    }

    /// The step this event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            Self::StepAssigned { step, .. }
            | Self::StepUnassigned { step, .. }
            | Self::StepStarted { step, .. }
            | Self::StepSucceeded { step, .. }
            | Self::StepFailed { step, .. }
            | Self::StepAbandoned { step, .. }
            | Self::StepSkipped { step, .. }
            | Self::ChildRunStarted { step, .. }
            | Self::CallbackIssued { step, .. }
            | Self::CallbackAccepted { step, .. }
            | Self::CallbackReceived { step, .. }
            | Self::PollStarted { step, .. }
            | Self::TimerStarted { step, .. }
            | Self::TimerFired { step, .. }
            | Self::SignalAwaited { step, .. }
            | Self::ApprovalRequested { step, .. }
            | Self::ApprovalDecided { step, .. } => Some(step),
            Self::SignalReceived { .. }
            | Self::RunCreated { .. }
            | Self::RunForked { .. }
            | Self::RunStarted {}
            | Self::RunPaused {}
            | Self::RunResumed {}
            | Self::RunCancelRequested { .. }
            | Self::RunCanceled {}
            | Self::RunQuarantined { .. }
            | Self::RunReleased {}
            | Self::RunSucceeded {}
            | Self::RunFailed { .. } => None,
        }
    }
}

/// An event of an agent's stream (`agent:NAME`): its circuit breaker.
/// Outcomes that move the breaker are written in the same atomic write as
/// the run's `StepSucceeded`/`StepFailed` that caused them, so the count
/// of failures in a row is as durable as the attempts it counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AgentEvent {
    /// An attempt on the agent failed: one more failure in a row.
    FailureCounted {
        /// The run (text).
        run_id: String,
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
        /// Failures in a row, this one included.
        failures: u32,
    },
    /// An attempt on the agent succeeded after failures: the count starts
    /// again from zero.
    FailuresReset {
        /// The run (text).
        run_id: String,
        /// The step.
        step: crate::ids::StepId,
        /// The attempt.
        attempt: u32,
    },
    /// The circuit opened: steps routed to the agent are blocked.
    CircuitOpened {
        /// Consecutive failures that opened it.
        failures: u32,
        /// When a half-open probe may start.
        until: DateTime<Utc>,
    },
    /// The cool-down ended: one probe attempt may run.
    CircuitHalfOpened {},
    /// The probe succeeded: the agent takes work again.
    CircuitClosed {},
    /// The agent's health check changed verdict (recorded at the first
    /// check and at each change, not at every check).
    HealthChecked {
        /// The check passed.
        healthy: bool,
        /// What it found: the exit status or HTTP status, or the error.
        detail: String,
    },
}

impl AgentEvent {
    /// The variant name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::FailureCounted { .. } => "FailureCounted",
            Self::FailuresReset { .. } => "FailuresReset",
            Self::CircuitOpened { .. } => "CircuitOpened",
            Self::CircuitHalfOpened {} => "CircuitHalfOpened",
            Self::CircuitClosed {} => "CircuitClosed",
            Self::HealthChecked { .. } => "HealthChecked",
        }
    }
}

/// Definitions already parsed, keyed by their exact JSON text: every run of
/// a workflow carries the same definition in `RunCreated`, and parsing it is
/// most of the cost of folding a short run. Keyed by the bytes themselves
/// (not the recorded SHA-256), so an altered definition never hits.
static DEFINITIONS: std::sync::Mutex<Option<std::collections::HashMap<Box<str>, Arc<Workflow>>>> =
    std::sync::Mutex::new(None);

/// Most definitions kept; the cache is cleared when it is full.
const DEFINITION_CACHE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunCreatedRaw<'a> {
    #[serde(rename = "type")]
    _type: &'a str,
    run_id: RunId,
    #[serde(borrow)]
    workflow: &'a serde_json::value::RawValue,
    workflow_sha256: String,
    input: Value,
    #[serde(default)]
    idempotency_key: Option<String>,
    seed: u64,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    parent: Option<ParentRef>,
}

impl RunEvent {
    /// Decode a stored payload. Same result as `serde_json::from_slice`,
    /// faster for `RunCreated` (definitions are parsed once per process).
    ///
    /// Errors: the JSON error, for a payload that is not a known event.
    pub fn from_json(bytes: &[u8]) -> Result<RunEvent, serde_json::Error> {
        if !bytes.starts_with(br#"{"type":"RunCreated""#) {
            return serde_json::from_slice(bytes);
        }
        let raw: RunCreatedRaw<'_> = serde_json::from_slice(bytes)?;
        let text = raw.workflow.get();
        let cached = {
            let guard = DEFINITIONS.lock().unwrap_or_else(|e| e.into_inner());
            guard.as_ref().and_then(|m| m.get(text).cloned())
        };
        let workflow = match cached {
            Some(w) => w,
            None => {
                let w: Arc<Workflow> = Arc::new(serde_json::from_str(text)?);
                let mut guard = DEFINITIONS.lock().unwrap_or_else(|e| e.into_inner());
                let map = guard.get_or_insert_with(Default::default);
                if map.len() >= DEFINITION_CACHE {
                    map.clear();
                }
                map.insert(text.into(), w.clone());
                w
            }
        };
        Ok(RunEvent::RunCreated {
            run_id: raw.run_id,
            workflow,
            workflow_sha256: raw.workflow_sha256,
            input: raw.input,
            idempotency_key: raw.idempotency_key,
            seed: raw.seed,
            trace_id: raw.trace_id,
            parent: raw.parent,
        })
    }
}
