//! Executors: the adapter contract ([`Executor`]) and its implementations
//! for commands and shell scripts ([`process`]), HTTP services ([`http`])
//! and registered Rust functions ([`function`]).
//!
//! Contract: `run` starts the attempt with its resolved input, idempotency
//! key and deadline, and resolves to how it ended; when `kill` fires (or is
//! dropped) it stops the attempt — a process group is killed, a request or
//! a function future is dropped — and reports `ErrorKind::Canceled`.

pub mod function;
pub mod http;
pub mod output;
pub mod process;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::decide::AttemptResult;
use crate::ids::RunId;
use crate::model::ExecSpec;

pub use output::{OutputSink, Secrets};

/// Everything an executor needs to run one attempt.
#[derive(Clone, Debug)]
pub struct AttemptRequest {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step: crate::ids::StepId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// `RUN_ID:STEP_ID`, the same for every attempt.
    pub idempotency_key: String,
    /// The W3C `traceparent` of the attempt's span (see `runtime::trace`):
    /// sent as the `traceparent` header and the `TRACEPARENT` variable.
    pub traceparent: Option<String>,
    /// Resolved input, secrets substituted (never logged).
    pub input: Value,
    /// The executor spec, templates resolved, secrets substituted.
    pub exec: ExecSpec,
    /// When the attempt times out (the runtime kills it then).
    pub deadline: Option<DateTime<Utc>>,
    /// Working directory for processes.
    pub workdir: PathBuf,
    /// Extra environment for processes.
    pub env: BTreeMap<String, String>,
    /// Names removed from the environment the process inherits from the
    /// engine: every secret the workflow declares (a step gets one only
    /// through `env` or its input, where it asks for it).
    pub hidden_env: Vec<String>,
}

/// A boxed attempt future.
pub type AttemptFuture = Pin<Box<dyn Future<Output = AttemptResult> + Send>>;

/// The adapter contract every executor implements.
pub trait Executor: Send + Sync {
    /// Run `req` until it ends or `kill` fires.
    fn run(&self, req: AttemptRequest, kill: oneshot::Receiver<()>) -> AttemptFuture;
}

/// A failure result with no output.
pub fn failure(
    kind: crate::model::ErrorKind,
    message: impl Into<String>,
    duration_ms: u64,
) -> AttemptResult {
    AttemptResult::Failed {
        kind,
        message: message.into(),
        exit_code: None,
        http_status: None,
        duration_ms,
        stderr: None,
    }
}

/// The executor for a spec: picks process, HTTP or function.
pub struct Dispatcher {
    /// Commands and shell scripts.
    pub process: process::ProcessExecutor,
    /// HTTP requests.
    pub http: http::HttpExecutor,
    /// Registered functions.
    pub function: function::FunctionExecutor,
}

impl Executor for Dispatcher {
    fn run(&self, req: AttemptRequest, kill: oneshot::Receiver<()>) -> AttemptFuture {
        if req.exec.http.is_some() {
            self.http.run(req, kill)
        } else if req.exec.function.is_some() {
            self.function.run(req, kill)
        } else {
            self.process.run(req, kill)
        }
    }
}
