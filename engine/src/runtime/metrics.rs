//! The engine's metrics (the `metrics` facade; `chronicle serve` exports
//! them at `/metrics`), recorded only while
//! [`chronicle_store::metrics::enabled`]. Label values are bounded: workflow
//! and agent names, statuses and reasons from a fixed list — never run ids.
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `chronicle_runs_started_total` | counter | `workflow` |
//! | `chronicle_runs_finished_total` | counter | `workflow`, `status` (succeeded, failed, canceled) |
//! | `chronicle_runs_active` | gauge | `status` (pending, running, paused, quarantined): runs this engine holds, set at each scrape |
//! | `chronicle_step_attempts_total` | counter | `workflow`, `status` (succeeded, failed, timed_out, abandoned) |
//! | `chronicle_step_retries_total` | counter | `workflow`: failed attempts that will be retried |
//! | `chronicle_step_duration_seconds` | histogram | `workflow`: attempts that ended with an outcome |
//! | `chronicle_steps_unassigned_total` | counter | `reason`: `blocked` (capable agents busy or open), `no_agent` |
//! | `chronicle_circuit_state` | gauge | `agent`: 0 closed, 1 half-open, 2 open (set at each scrape) |
//! | `chronicle_agent_load` | gauge | `agent`: attempts running on it (set at each scrape) |

use std::collections::BTreeMap;

use crate::circuit::CircuitState;
use crate::event::RunEvent;
use crate::model::ErrorKind;
use crate::state::{RunState, RunStatus};

use super::engine::Engine;

/// Record what the events of one durable commit on a run say.
pub(crate) fn observe_commit(next: &RunState, events: &[RunEvent]) {
    if !chronicle_store::metrics::enabled() {
        return;
    }
    let workflow = next.wf().name.clone();
    for e in events {
        match e {
            RunEvent::RunCreated { .. } | RunEvent::RunForked { .. } => {
                metrics::counter!("chronicle_runs_started_total", "workflow" => workflow.clone())
                    .increment(1);
            }
            RunEvent::RunSucceeded {} | RunEvent::RunFailed { .. } | RunEvent::RunCanceled {} => {
                let status = match e {
                    RunEvent::RunSucceeded {} => "succeeded",
                    RunEvent::RunFailed { .. } => "failed",
                    _ => "canceled",
                };
                metrics::counter!("chronicle_runs_finished_total", "workflow" => workflow.clone(), "status" => status)
                    .increment(1);
            }
            RunEvent::StepSucceeded { duration_ms, .. } => {
                attempt(&workflow, "succeeded", Some(*duration_ms));
            }
            RunEvent::StepFailed {
                kind,
                duration_ms,
                next_retry_at,
                ..
            } => {
                let status = if *kind == ErrorKind::Timeout {
                    "timed_out"
                } else {
                    "failed"
                };
                attempt(&workflow, status, Some(*duration_ms));
                if next_retry_at.is_some() {
                    metrics::counter!("chronicle_step_retries_total", "workflow" => workflow.clone())
                        .increment(1);
                }
            }
            RunEvent::StepAbandoned { .. } => attempt(&workflow, "abandoned", None),
            RunEvent::StepUnassigned { blocked, .. } => {
                let reason = if *blocked { "blocked" } else { "no_agent" };
                metrics::counter!("chronicle_steps_unassigned_total", "reason" => reason)
                    .increment(1);
            }
            _ => {}
        }
    }
}

fn attempt(workflow: &str, status: &'static str, duration_ms: Option<u64>) {
    metrics::counter!("chronicle_step_attempts_total", "workflow" => workflow.to_string(), "status" => status)
        .increment(1);
    if let Some(ms) = duration_ms {
        metrics::histogram!("chronicle_step_duration_seconds", "workflow" => workflow.to_string())
            .record(ms as f64 / 1000.0);
    }
}

impl Engine {
    /// Attempts running now on each agent this engine has seen.
    pub fn agent_loads(&self) -> Vec<(String, u32)> {
        self.inner
            .capacity
            .agents()
            .into_iter()
            .map(|(n, load, _)| (n, load))
            .collect()
    }

    /// Set the gauges that describe this engine now (runs held by status,
    /// each agent's load and circuit); an exporter calls this before each
    /// scrape. Does nothing while metrics are off.
    pub fn record_gauges(&self) {
        if !chronicle_store::metrics::enabled() {
            return;
        }
        let mut by_status: BTreeMap<&'static str, f64> = [
            RunStatus::Pending,
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::Quarantined,
        ]
        .iter()
        .map(|s| (s.as_str(), 0.0))
        .collect();
        for h in self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let status = h.state.borrow().status;
            if let Some(n) = by_status.get_mut(status.as_str()) {
                *n += 1.0;
            }
        }
        for (status, n) in by_status {
            metrics::gauge!("chronicle_runs_active", "status" => status).set(n);
        }
        for (agent, load, circuit) in self.inner.capacity.agents() {
            let state = match circuit {
                CircuitState::Closed => 0.0,
                CircuitState::HalfOpen => 1.0,
                CircuitState::Open { .. } => 2.0,
            };
            metrics::gauge!("chronicle_circuit_state", "agent" => agent.clone()).set(state);
            metrics::gauge!("chronicle_agent_load", "agent" => agent).set(load as f64);
        }
    }
}
