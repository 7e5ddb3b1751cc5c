//! Capacity shared by every run of an engine: the global limit of parallel
//! attempts, attempts running per agent, and the agents' circuit breakers.
//!
//! A run actor builds its [`Ctx`] from here and reserves what `decide`
//! started *under the same lock*, so two runs can never both take the
//! last slot of an agent or of the engine.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::circuit::Breaker;
use crate::decide::{AgentView, Ctx};
use crate::event::RunEvent;

/// Shared capacity.
#[derive(Debug)]
pub struct Capacity {
    inner: Mutex<Inner>,
    /// Bumped whenever capacity frees or a circuit changes: runs with
    /// ready or blocked steps re-decide.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Inner {
    max_parallel: usize,
    running: usize,
    /// Set by [`Capacity::drain`]: no new attempt starts.
    draining: bool,
    agents: BTreeMap<String, u32>,
    breakers: BTreeMap<String, Breaker>,
}

impl Capacity {
    /// A capacity of `max_parallel` attempts at once.
    pub fn new(max_parallel: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner {
                max_parallel: max_parallel.max(1),
                running: 0,
                draining: false,
                agents: BTreeMap::new(),
                breakers: BTreeMap::new(),
            }),
            changed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch for capacity changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Run `f` with a context at `now`, then reserve a slot (and an agent
    /// slot) for every `StepStarted` it returned — atomically.
    ///
    /// `floor`: attempts running on each agent across all workers of a
    /// shared database (see `agent_slots`); an agent's view is the larger
    /// of that and this engine's own count.
    pub fn decide_with<T>(
        &self,
        now: DateTime<Utc>,
        floor: Option<&BTreeMap<String, u32>>,
        f: impl FnOnce(&Ctx) -> (T, Vec<RunEvent>),
    ) -> (T, Vec<RunEvent>) {
        let mut g = self.lock();
        let mut agents: BTreeMap<String, AgentView> = BTreeMap::new();
        for (name, n) in &g.agents {
            agents.entry(name.clone()).or_default().running = *n;
        }
        for (name, n) in floor.into_iter().flatten() {
            let v = agents.entry(name.clone()).or_default();
            v.running = v.running.max(*n);
        }
        for (name, b) in &g.breakers {
            agents.entry(name.clone()).or_default().circuit = b.state;
        }
        let ctx = Ctx {
            now,
            slots: if g.draining {
                0
            } else {
                g.max_parallel.saturating_sub(g.running)
            },
            agents,
        };
        let (t, events) = f(&ctx);
        for e in &events {
            if let RunEvent::StepStarted { agent, .. } = e {
                g.running += 1;
                if let Some(a) = agent {
                    *g.agents.entry(a.clone()).or_default() += 1;
                }
            }
        }
        (t, events)
    }

    /// Give back the slot of a finished attempt.
    pub fn release(&self, agent: Option<&str>) {
        {
            let mut g = self.lock();
            g.running = g.running.saturating_sub(1);
            if let Some(a) = agent
                && let Some(n) = g.agents.get_mut(a)
            {
                *n = n.saturating_sub(1);
            }
        }
        self.bump();
    }

    /// Apply a breaker decision on an agent; returns the events to append
    /// to the agent's stream (runs are woken when there are any).
    pub fn with_breaker(
        &self,
        agent: &str,
        f: impl FnOnce(&mut Breaker) -> Vec<crate::event::AgentEvent>,
    ) -> Vec<crate::event::AgentEvent> {
        let out = {
            let mut g = self.lock();
            f(g.breakers.entry(agent.to_string()).or_default())
        };
        if !out.is_empty() {
            self.bump();
        }
        out
    }

    /// A copy of an agent's breaker (default: closed, no failures).
    pub fn breaker(&self, agent: &str) -> Breaker {
        self.lock().breakers.get(agent).cloned().unwrap_or_default()
    }

    /// Fold events appended to an agent's stream into its breaker (after
    /// the write that made them durable); runs are woken when any changes
    /// the circuit.
    pub fn apply_agent(&self, agent: &str, events: &[crate::event::AgentEvent]) {
        if events.is_empty() {
            return;
        }
        {
            let mut g = self.lock();
            let b = g.breakers.entry(agent.to_string()).or_default();
            for e in events {
                b.apply(e);
            }
        }
        self.bump();
    }

    /// Set an agent's breaker (folded from its stream when the engine opens).
    pub fn load_breaker(&self, agent: &str, breaker: Breaker) {
        self.lock().breakers.insert(agent.to_string(), breaker);
    }

    /// Agents whose breaker is open, with the end of the cool-down.
    pub fn open_until(&self) -> Vec<(String, DateTime<Utc>)> {
        self.lock()
            .breakers
            .iter()
            .filter_map(|(n, b)| b.next_timer().map(|t| (n.clone(), t)))
            .collect()
    }

    /// Start no new attempt from now on (a graceful shutdown): every
    /// decision sees no free slot, so ready steps wait; running attempts
    /// go on and give their slots back as they end.
    pub fn drain(&self) {
        self.lock().draining = true;
        self.bump();
    }

    /// Every agent this engine has seen: its name, attempts running on it
    /// and its circuit state.
    pub fn agents(&self) -> Vec<(String, u32, crate::circuit::CircuitState)> {
        let g = self.lock();
        let mut names: std::collections::BTreeSet<&String> = g.agents.keys().collect();
        names.extend(g.breakers.keys());
        names
            .into_iter()
            .map(|n| {
                (
                    n.clone(),
                    g.agents.get(n).copied().unwrap_or(0),
                    g.breakers.get(n).map(|b| b.state).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Attempts running now (all runs).
    pub fn running(&self) -> usize {
        self.lock().running
    }
}
