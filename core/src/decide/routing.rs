//! Routing a `skills` step to an agent: the agents that have every skill,
//! minus those at their concurrency limit or with an open circuit, chosen
//! by strategy (`first`, `round_robin`, `least_loaded`).

use super::Draft;
use crate::circuit::CircuitState;
use crate::model::{Strategy, Workflow};

/// The routing outcome for one `skills` step.
pub(super) enum Route {
    Assigned { agent: String, why: String },
    Blocked(String),
    Unassigned(String),
}

pub(super) fn route(
    d: &Draft<'_>,
    wf: &Workflow,
    step: &str,
    skills: &[String],
    strategy: Strategy,
) -> Route {
    let capable: Vec<&String> = wf
        .agents
        .iter()
        .filter(|(_, a)| skills.iter().all(|s| a.skills.contains(s)))
        .map(|(n, _)| n)
        .collect();
    if capable.is_empty() {
        let missing: Vec<&str> = skills
            .iter()
            .filter(|s| !wf.agents.values().any(|a| a.skills.contains(s)))
            .map(String::as_str)
            .collect();
        return Route::Unassigned(if missing.is_empty() {
            format!("no agent has all of the skills {}", skills.join(", "))
        } else if missing.len() == 1 {
            format!("no agent has skill {}", missing[0])
        } else {
            format!("no agent has skills {}", missing.join(", "))
        });
    }
    let view = |n: &str| d.agents.get(n).cloned().unwrap_or_default();
    let available = |n: &str| {
        let v = view(n);
        let limit = wf.agents[n].concurrency;
        match v.circuit {
            CircuitState::Closed => v.running < limit,
            CircuitState::HalfOpen => v.running == 0,
            CircuitState::Open { .. } => false,
        }
    };
    let describe = || {
        capable
            .iter()
            .map(|n| {
                let v = view(n);
                format!(
                    "{n} ({}/{} running, circuit {})",
                    v.running,
                    wf.agents[n.as_str()].concurrency,
                    v.circuit.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Option<&String> = match strategy {
        Strategy::First => capable.iter().copied().find(|n| available(n)),
        Strategy::RoundRobin => {
            let start = d.state.assignments as usize % capable.len();
            (0..capable.len())
                .map(|i| capable[(start + i) % capable.len()])
                .find(|n| available(n))
        }
        Strategy::LeastLoaded => capable
            .iter()
            .copied()
            .filter(|n| available(n))
            .min_by_key(|n| (view(n).running, (*n).clone())),
    };
    let _ = step;
    match chosen {
        Some(agent) => Route::Assigned {
            agent: agent.clone(),
            why: format!(
                "strategy {}: candidates {}",
                strategy_name(strategy),
                describe()
            ),
        },
        None => Route::Blocked(format!(
            "every agent with the skills is busy or has an open circuit: {}",
            describe()
        )),
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::First => "first",
        Strategy::RoundRobin => "round_robin",
        Strategy::LeastLoaded => "least_loaded",
    }
}
