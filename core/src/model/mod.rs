//! Workflow definitions: the file format (YAML or JSON), its validation,
//! and input templates.
//!
//! The format is documented field by field in `docs/workflow-format.md`;
//! its JSON Schema is produced by [`json_schema`].

mod duration;
mod load;
mod retry;
pub mod template;
mod validate;
pub use validate::is_invisible_control;

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use duration::HumanDuration;
pub use load::{DefinitionError, parse_definition};
pub use retry::{ErrorKind, Jitter, RetryOn, RetryPolicy};
pub use validate::{MAX_STEPS, MAX_STRING_BYTES, validate};

/// A workflow: steps, their dependencies, agents and policies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// Name of the workflow (shown in `chronicle list`).
    pub name: String,
    /// Optional version label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Default run input; a run's input is merged over it (top-level keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input: BTreeMap<String, Value>,
    /// Names of secrets read from the engine's environment at execution
    /// time; referenced as `${{ secrets.NAME }}`; never written to the log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Agents by name: what `skills` steps are routed to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, Agent>,
    /// Defaults for every step.
    #[serde(default)]
    pub defaults: Defaults,
    /// The steps (the nodes of the graph).
    pub steps: Vec<Step>,
    /// What the run produces, by name: templates over the input and the
    /// steps' outputs (e.g. `report: "${{ input.out }}/report.md"`),
    /// resolved against the final state and shown when a run ends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, Value>,
}

impl Workflow {
    /// The workflow's [`Workflow::outputs`] resolved in `scope`: each
    /// value, or why it cannot be resolved yet (a step that has no output).
    pub fn resolve_outputs(
        &self,
        scope: &template::Scope<'_>,
    ) -> BTreeMap<String, Result<Value, String>> {
        self.outputs
            .iter()
            .map(|(k, v)| (k.clone(), template::resolve(v, scope)))
            .collect()
    }
}

/// Defaults applied to every step that does not set its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Per-attempt timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Routing strategy for `skills` steps (default `first`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Consecutive crash abandonments of one step that quarantine the run
    /// (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_after_crashes: Option<u32>,
}

/// An agent: a named executor with skills.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Skills the agent has.
    pub skills: Vec<String>,
    /// An argv list, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script run by `/bin/sh -c` (explicit opt-in to a shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// An HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// The name of a Rust function registered with the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// At most this many attempts at once on this agent (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub concurrency: u32,
    /// Circuit breaker settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitPolicy>,
    /// A health check the engine runs every `interval` while runs that
    /// declare the agent are active; a failing check opens its circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// An agent's health check: exactly one of `command`, `shell`, `http`.
/// A command or script is healthy when it exits 0, a URL when a `GET`
/// answers 2xx, each within `timeout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An argv list, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script run by `/bin/sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// A URL (`http://` or `https://`) fetched with `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Time between checks (default 30s).
    #[serde(default = "thirty_s")]
    pub interval: HumanDuration,
    /// Longest a check may take; longer is a failure (default 5s).
    #[serde(default = "five_s")]
    pub timeout: HumanDuration,
}

fn five_s() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

/// Circuit breaker: after `failure_threshold` consecutive failures the
/// agent's circuit opens for `cool_down`, then one half-open probe decides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitPolicy {
    /// Consecutive failures that open the circuit (default 5).
    #[serde(default = "five")]
    pub failure_threshold: u32,
    /// How long the circuit stays open before a probe (default 30s).
    #[serde(default = "thirty_s")]
    pub cool_down: HumanDuration,
}

fn five() -> u32 {
    5
}
fn thirty_s() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down: thirty_s(),
        }
    }
}

/// How a step or an agent is executed (a copy of its four executor
/// fields). Exactly one must be set; validation checks it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExecSpec {
    /// An argv list, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script run by `/bin/sh -c` (explicit opt-in to a shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// An HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// The name of a Rust function registered with the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// A child workflow (its file, as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A registered child workflow, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_name: Option<String>,
    /// The child's pinned definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Arc<Workflow>>,
    /// How an HTTP step completes (callback or polling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Completion>,
    /// The secret that signs the callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<String>,
}

impl ExecSpec {
    /// How many executors are set.
    pub fn count(&self) -> usize {
        [
            self.command.is_some(),
            self.shell.is_some(),
            self.http.is_some(),
            self.function.is_some(),
            self.workflow.is_some(),
            self.workflow_name.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
    /// The executor kind, for messages: `command`, `shell`, `http`, `function`.
    pub fn kind(&self) -> &'static str {
        if self.command.is_some() {
            "command"
        } else if self.shell.is_some() {
            "shell"
        } else if self.http.is_some() {
            "http"
        } else if self.function.is_some() {
            "function"
        } else {
            "none"
        }
    }
}

/// An HTTP request executor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// Method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// URL (http:// or https://).
    pub url: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// JSON body; default: the step's resolved input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

fn post() -> String {
    "POST".into()
}

/// A step: a node of the workflow graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id (letters, digits, `-`, `_`).
    pub id: crate::ids::StepId,
    /// Steps that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<crate::ids::StepId>,
    /// An argv list, run without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A script run by `/bin/sh -c` (explicit opt-in to a shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// An HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// The name of a Rust function registered with the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Skills required: the step goes to an agent that has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skills: Option<Vec<String>>,
    /// Routing strategy for this step (overrides `defaults.strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Inputs; string values may hold `${{ ... }}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub with: BTreeMap<String, Value>,
    /// Retry policy (overrides `defaults.retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Per-attempt timeout (overrides `defaults.timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// When this step fails, its dependents still run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub continue_on_failure: bool,
    /// What happens when attempts run out: `fail` (default) or `quarantine`.
    #[serde(default, skip_serializing_if = "OnExhausted::is_fail")]
    pub on_exhausted: OnExhausted,
    /// Never run twice: an attempt cut off by a crash fails the step
    /// ("interrupted") instead of being retried.
    #[serde(default, skip_serializing_if = "is_false")]
    pub at_most_once: bool,
    /// Working directory of command/shell steps (default: the engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Extra environment variables of command/shell steps.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A durable timer: the step waits this long (`10m`, `36h`), then
    /// succeeds with `{"fired_at"}`. It survives crashes and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<HumanDuration>,
    /// A durable timer to a moment (RFC 3339, `2026-12-01T09:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep_until: Option<String>,
    /// Wait for the signal of this name (`chronicle signal RUN NAME`);
    /// its data is the step's output. Signals that came earlier are
    /// buffered and consumed in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Wait for people to approve (`chronicle approve RUN STEP --as WHO`);
    /// a rejection fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// A child workflow: the file of its definition (relative to the
    /// working directory). The step starts a child run with `with` as its
    /// input and succeeds with the child's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A child workflow registered in the database (`PUT
    /// /v1/workflows/{name}`), by name: its latest version, pinned when
    /// the parent is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_name: Option<String>,
    /// The child's definition, read from `workflow` when the parent is
    /// loaded and pinned in the parent's definition (not written by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Arc<Workflow>>,
    /// How an `http` step completes when its service answers at once and
    /// finishes later: `callback` — the request carries a callback URL with
    /// a one-time token (`Chronicle-Callback-Url`, and `callback_url` in a
    /// JSON object body), a 2xx answer means accepted, and `POST
    /// /v1/callbacks/{token}` with the result completes the step; or
    /// `{ poll: { url, every } }` — after a 2xx answer the engine GETs
    /// `url` every `every` until it answers a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Completion>,
    /// With `completion: callback`: the secret (one of the workflow's
    /// `secrets`) whose HMAC-SHA256 of the callback's body must come in
    /// `Chronicle-Signature: sha256=HEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_secret: Option<String>,
}

/// How an `http` step completes after its request was accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Completion {
    /// `callback` (the only name).
    Named(String),
    /// Polling.
    Poll {
        /// What and how often to poll.
        poll: PollSpec,
    },
}

impl Completion {
    /// Whether this is `completion: callback`.
    pub fn is_callback(&self) -> bool {
        matches!(self, Self::Named(n) if n == "callback")
    }

    /// The polling spec, for `completion: { poll: ... }`.
    pub fn poll(&self) -> Option<&PollSpec> {
        match self {
            Self::Poll { poll } => Some(poll),
            Self::Named(_) => None,
        }
    }
}

/// Polling: `GET url` every `every` until the answer's `status` (or
/// `state`) is terminal — `succeeded`, `success`, `completed`, `done`
/// (the step succeeds with the answer), or `failed`, `error`, `canceled`
/// (it fails with the answer's `error` or `message`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollSpec {
    /// The URL; templates may use the accepted answer as the step's own
    /// output: `${{ steps.THIS_STEP.output.job_id }}`.
    pub url: String,
    /// How often (default 30 s).
    #[serde(default = "thirty_s")]
    pub every: HumanDuration,
}

/// Who must approve a step, and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who may decide; empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Approvals needed (default 1; at most the number of approvers).
    #[serde(default = "one_approval")]
    pub min_approvals: u32,
}

fn one_approval() -> u32 {
    1
}

/// What a waiting step waits for (`sleep`, `sleep_until`, `signal`,
/// `approval`): nothing runs; an event ends the wait.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitSpec {
    /// Until a moment, or for a duration from the start of the wait.
    Timer(TimerSpec),
    /// For a signal of this name.
    Signal(String),
    /// For approvals.
    Approval(Approval),
}

/// A timer's length or end.
#[derive(Clone, Debug, PartialEq)]
pub enum TimerSpec {
    /// For this long.
    For(HumanDuration),
    /// Until this moment (RFC 3339 text, checked by validation).
    Until(String),
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What happens when a step runs out of attempts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// The step fails (dependents are skipped unless `continue_on_failure`).
    #[default]
    Fail,
    /// The run is quarantined for a person to look at.
    Quarantine,
}

impl OnExhausted {
    fn is_fail(&self) -> bool {
        *self == Self::Fail
    }
}

/// Routing strategy among the agents that have every required skill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The first available agent in name order.
    #[default]
    First,
    /// Rotate through capable agents (by the step's attempt count so far in
    /// the run), skipping unavailable ones.
    RoundRobin,
    /// The available agent with the fewest running attempts.
    LeastLoaded,
}

impl Step {
    /// This step's executor fields.
    pub fn exec(&self) -> ExecSpec {
        ExecSpec {
            command: self.command.clone(),
            shell: self.shell.clone(),
            http: self.http.clone(),
            function: self.function.clone(),
            workflow: self.workflow.clone(),
            workflow_name: self.workflow_name.clone(),
            child: self.child.clone(),
            completion: self.completion.clone(),
            callback_secret: self.callback_secret.clone(),
        }
    }

    /// What this step waits for, when it is a waiting step (the first of
    /// `sleep`, `sleep_until`, `signal`, `approval` set; validation
    /// allows one).
    pub fn wait(&self) -> Option<WaitSpec> {
        if let Some(d) = self.sleep {
            return Some(WaitSpec::Timer(TimerSpec::For(d)));
        }
        if let Some(t) = &self.sleep_until {
            return Some(WaitSpec::Timer(TimerSpec::Until(t.clone())));
        }
        if let Some(n) = &self.signal {
            return Some(WaitSpec::Signal(n.clone()));
        }
        self.approval.clone().map(WaitSpec::Approval)
    }

    /// How many of the waiting kinds are set.
    pub fn wait_count(&self) -> usize {
        [
            self.sleep.is_some(),
            self.sleep_until.is_some(),
            self.signal.is_some(),
            self.approval.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

impl Agent {
    /// This agent's executor fields.
    pub fn exec(&self) -> ExecSpec {
        ExecSpec {
            command: self.command.clone(),
            shell: self.shell.clone(),
            http: self.http.clone(),
            function: self.function.clone(),
            workflow: None,
            workflow_name: None,
            child: None,
            completion: None,
            callback_secret: None,
        }
    }
}

impl Workflow {
    /// The step with `id`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The effective retry policy of a step.
    pub fn retry_of(&self, step: &Step) -> RetryPolicy {
        step.retry
            .clone()
            .or_else(|| self.defaults.retry.clone())
            .unwrap_or_default()
    }

    /// The effective per-attempt timeout of a step, if any.
    pub fn timeout_of(&self, step: &Step) -> Option<HumanDuration> {
        step.timeout.or(self.defaults.timeout)
    }

    /// The effective routing strategy of a step.
    pub fn strategy_of(&self, step: &Step) -> Strategy {
        step.strategy.or(self.defaults.strategy).unwrap_or_default()
    }

    /// Consecutive crash abandonments that quarantine a run (default 3).
    pub fn quarantine_after_crashes(&self) -> u32 {
        self.defaults.quarantine_after_crashes.unwrap_or(3)
    }

    /// SHA-256 of the definition's canonical JSON (lower-case hex).
    pub fn sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(self).expect("a workflow always serializes");
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The JSON Schema of the workflow format (draft 2020-12), pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Workflow);
    serde_json::to_string_pretty(&schema).expect("a schema always serializes")
}
