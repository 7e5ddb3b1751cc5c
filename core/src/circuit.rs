//! Circuit breakers per agent: the state is a fold over the agent's stream
//! (`agent:NAME`); [`Breaker::decide_outcome`] and [`Breaker::on_tick`] decide
//! the transitions (closed → open after N consecutive failures → half-open
//! after the cool-down → closed on a successful probe, open again on a
//! failed one). Pure: time comes in as an argument.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::event::AgentEvent;
use crate::model::CircuitPolicy;

/// The circuit's position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CircuitState {
    /// Work flows.
    #[default]
    Closed,
    /// No work until `until`.
    Open {
        /// End of the cool-down.
        until: DateTime<Utc>,
    },
    /// One probe may run.
    HalfOpen,
}

impl CircuitState {
    /// Stable lower-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The circuit after `event` (the failure count is [`Breaker`]'s).
pub fn evolve_circuit(state: CircuitState, event: &AgentEvent) -> CircuitState {
    match event {
        AgentEvent::CircuitOpened { until, .. } => CircuitState::Open { until: *until },
        AgentEvent::CircuitHalfOpened {} => CircuitState::HalfOpen,
        AgentEvent::CircuitClosed {} => CircuitState::Closed,
        AgentEvent::FailureCounted { .. }
        | AgentEvent::FailuresReset { .. }
        | AgentEvent::HealthChecked { .. } => state,
    }
}

/// A breaker: the circuit and the failures in a row, both folded from the
/// agent's stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    /// The circuit.
    pub state: CircuitState,
    /// Consecutive failed attempts on the agent.
    pub failures: u32,
}

/// The attempt whose outcome is recorded.
#[derive(Clone, Copy, Debug)]
pub struct AttemptOn<'a> {
    /// The run (text).
    pub run_id: &'a str,
    /// The step.
    pub step: &'a str,
    /// The attempt.
    pub attempt: u32,
}

impl Breaker {
    /// Apply an event (fold).
    pub fn apply(&mut self, e: &AgentEvent) {
        self.state = evolve_circuit(self.state, e);
        match e {
            AgentEvent::FailureCounted { failures, .. } => self.failures = *failures,
            AgentEvent::FailuresReset { .. } | AgentEvent::CircuitClosed {} => self.failures = 0,
            AgentEvent::CircuitOpened { .. }
            | AgentEvent::CircuitHalfOpened {}
            | AgentEvent::HealthChecked { .. } => {}
        }
    }

    /// What an attempt's outcome on this agent records (pure: the breaker
    /// is not changed; fold the events with [`Breaker::apply`]). A failure:
    /// `FailureCounted`, and `CircuitOpened` when the count reaches
    /// `policy.failure_threshold` on a closed circuit or at once on a
    /// half-open one (a failed probe). A success: `FailuresReset` after
    /// failures, and `CircuitClosed` on a half-open circuit.
    pub fn decide_outcome(
        &self,
        on: AttemptOn<'_>,
        success: bool,
        now: DateTime<Utc>,
        policy: &CircuitPolicy,
    ) -> Vec<AgentEvent> {
        let cool = TimeDelta::milliseconds(policy.cool_down.ms.min(i64::MAX as u64) as i64);
        let mut events = Vec::new();
        if success {
            if self.failures > 0 {
                events.push(AgentEvent::FailuresReset {
                    run_id: on.run_id.to_string(),
                    step: on.step.into(),
                    attempt: on.attempt,
                });
            }
            if self.state == CircuitState::HalfOpen {
                events.push(AgentEvent::CircuitClosed {});
            }
        } else {
            let failures = self.failures + 1;
            events.push(AgentEvent::FailureCounted {
                run_id: on.run_id.to_string(),
                step: on.step.into(),
                attempt: on.attempt,
                failures,
            });
            let opens = match self.state {
                CircuitState::HalfOpen => true,
                CircuitState::Closed => failures >= policy.failure_threshold,
                CircuitState::Open { .. } => false,
            };
            if opens {
                events.push(AgentEvent::CircuitOpened {
                    failures,
                    until: now + cool,
                });
            }
        }
        events
    }

    /// Decide on the passage of time: an open circuit whose cool-down is
    /// over half-opens.
    pub fn on_tick(&mut self, now: DateTime<Utc>) -> Vec<AgentEvent> {
        match self.state {
            CircuitState::Open { until } if now >= until => {
                let e = AgentEvent::CircuitHalfOpened {};
                self.apply(&e);
                vec![e]
            }
            _ => vec![],
        }
    }

    /// A health check failed at `now`: a circuit that is not open opens
    /// for `cool_down` (then half-opens and one probe attempt decides, as
    /// after failures).
    pub fn on_health_failed(
        &mut self,
        now: DateTime<Utc>,
        cool_down: chrono::TimeDelta,
    ) -> Vec<AgentEvent> {
        if matches!(self.state, CircuitState::Open { .. }) {
            return vec![];
        }
        let e = AgentEvent::CircuitOpened {
            failures: self.failures,
            until: now + cool_down,
        };
        self.apply(&e);
        vec![e]
    }

    /// When the breaker next needs a tick (end of an open cool-down).
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        match self.state {
            CircuitState::Open { until } => Some(until),
            _ => None,
        }
    }
}
