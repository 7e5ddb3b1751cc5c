//! What an attempt's outcome records on its agent's circuit breaker: the
//! breaker's own rule is [`crate::circuit::Breaker::decide_outcome`]; this
//! decides whether an outcome counts at all.

use super::AttemptResult;
use crate::model::ErrorKind;
use crate::state::RunState;

/// What an attempt's outcome records on its agent's circuit breaker —
/// written in the same atomic write as the run's events for the outcome.
/// Nothing for an agent without a `circuit_breaker` policy, or for an
/// attempt that was killed (cancel, timeout kill, stop: it says nothing of
/// the agent's health); otherwise [`Breaker::decide_outcome`](crate::circuit::Breaker::decide_outcome).
pub fn decide_circuit(
    state: &RunState,
    agent: &str,
    step: &str,
    attempt: u32,
    result: &AttemptResult,
    breaker: &crate::circuit::Breaker,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<crate::event::AgentEvent> {
    let Some(policy) = state
        .workflow
        .as_ref()
        .and_then(|w| w.agents.get(agent))
        .and_then(|a| a.circuit_breaker.as_ref())
    else {
        return Vec::new();
    };
    let success = match result {
        AttemptResult::Succeeded { .. } => true,
        AttemptResult::Failed {
            kind: ErrorKind::Canceled,
            ..
        } => return Vec::new(),
        AttemptResult::Failed { .. } => false,
    };
    let run_id = state.run_id.map(|r| r.to_string()).unwrap_or_default();
    let on = crate::circuit::AttemptOn {
        run_id: &run_id,
        step,
        attempt,
    };
    breaker.decide_outcome(on, success, now, policy)
}
