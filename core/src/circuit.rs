//! Circuit breakers per agent: the state is a fold over the agent's stream
//! (`agent:NAME`); [`Breaker::on_outcome`] and [`Breaker::on_tick`] decide
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

/// Fold one agent event.
pub fn evolve_circuit(_state: CircuitState, event: &AgentEvent) -> CircuitState {
    match event {
        AgentEvent::CircuitOpened { until, .. } => CircuitState::Open { until: *until },
        AgentEvent::CircuitHalfOpened {} => CircuitState::HalfOpen,
        AgentEvent::CircuitClosed {} => CircuitState::Closed,
    }
}

/// A breaker: the folded state plus the count of consecutive failures
/// since the circuit last closed. The count lives in memory (it restarts
/// at zero after an engine restart, which can only delay an opening);
/// every transition is an event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    /// Folded state.
    pub state: CircuitState,
    /// Consecutive failures.
    pub failures: u32,
}

impl Breaker {
    /// Apply an event (fold).
    pub fn apply(&mut self, e: &AgentEvent) {
        self.state = evolve_circuit(self.state, e);
        if matches!(e, AgentEvent::CircuitClosed {}) {
            self.failures = 0;
        }
    }

    /// Decide on an attempt's outcome on this agent.
    pub fn on_outcome(
        &mut self,
        success: bool,
        now: DateTime<Utc>,
        policy: &CircuitPolicy,
    ) -> Vec<AgentEvent> {
        let cool = TimeDelta::milliseconds(policy.cool_down.ms.min(i64::MAX as u64) as i64);
        let events = if success {
            self.failures = 0;
            match self.state {
                CircuitState::HalfOpen => vec![AgentEvent::CircuitClosed {}],
                _ => vec![],
            }
        } else {
            self.failures += 1;
            match self.state {
                CircuitState::HalfOpen => {
                    vec![AgentEvent::CircuitOpened {
                        failures: self.failures,
                        until: now + cool,
                    }]
                }
                CircuitState::Closed if self.failures >= policy.failure_threshold => {
                    vec![AgentEvent::CircuitOpened {
                        failures: self.failures,
                        until: now + cool,
                    }]
                }
                _ => vec![],
            }
        };
        for e in &events {
            self.apply(e);
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

    /// When the breaker next needs a tick (end of an open cool-down).
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        match self.state {
            CircuitState::Open { until } => Some(until),
            _ => None,
        }
    }
}
