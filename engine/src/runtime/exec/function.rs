//! `function` steps: Rust async functions registered by name on the
//! engine builder.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{AttemptFuture, AttemptRequest, Executor, OutputSink, failure};
use crate::decide::AttemptResult;
use crate::ids::RunId;
use crate::model::ErrorKind;

/// What a registered function receives.
#[derive(Clone, Debug)]
pub struct FunctionCall {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step: crate::ids::StepId,
    /// Attempt number.
    pub attempt: u32,
    /// `RUN_ID:STEP_ID`.
    pub idempotency_key: String,
    /// The resolved input.
    pub input: Value,
}

/// A function's failure: transient ones are retried under the step's policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FunctionError {
    /// `Transient` or `Permanent`.
    pub kind: ErrorKind,
    /// Message.
    pub message: String,
}

impl FunctionError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
        }
    }
}

/// The future a function returns.
pub type FunctionFuture = Pin<Box<dyn Future<Output = Result<Value, FunctionError>> + Send>>;
/// A registered function.
pub type Function = Arc<dyn Fn(FunctionCall) -> FunctionFuture + Send + Sync>;

/// Runs registered functions.
#[derive(Clone, Default)]
pub struct FunctionExecutor {
    /// Functions by name.
    pub functions: BTreeMap<String, Function>,
    /// Output handling (redaction).
    pub sink: Option<OutputSink>,
}

impl std::fmt::Debug for FunctionExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionExecutor")
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Executor for FunctionExecutor {
    fn run(&self, req: AttemptRequest, kill: oneshot::Receiver<()>) -> AttemptFuture {
        let name = req.exec.function.clone().unwrap_or_default();
        let f = self.functions.get(&name).cloned();
        let sink = self.sink.clone();
        Box::pin(async move {
            let started = Instant::now();
            let Some(f) = f else {
                return failure(
                    ErrorKind::Permanent,
                    format!("no function named {name} is registered with the engine"),
                    0,
                );
            };
            let call = FunctionCall {
                run_id: req.run_id,
                step: req.step,
                attempt: req.attempt,
                idempotency_key: req.idempotency_key,
                input: req.input,
            };
            let r = tokio::select! {
                r = f(call) => r,
                _ = kill => return failure(ErrorKind::Canceled, "killed: the function was dropped", started.elapsed().as_millis() as u64),
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            let redact_v = |v: Value| {
                sink.as_ref()
                    .map(|s| s.secrets.redact_value(&v))
                    .unwrap_or(v)
            };
            let redact_s = |m: String| sink.as_ref().map(|s| s.secrets.redact(&m)).unwrap_or(m);
            match r {
                Ok(output) => AttemptResult::Succeeded {
                    output: redact_v(output),
                    duration_ms,
                    stdout: None,
                    stderr: None,
                },
                Err(e) => failure(e.kind, redact_s(e.message), duration_ms),
            }
        })
    }
}
