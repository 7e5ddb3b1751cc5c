//! Given/when/then harness for the pure core: a fixed clock, a fixed run
//! id and seed; every command's events are folded, and after each command
//! the whole history is folded again from scratch (replay) and compared
//! with the state kept step by step.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;

use chronicle_core::circuit::Breaker;
use chronicle_core::decide::{AgentView, AttemptResult, Command, Ctx, Rejected, decide};
use chronicle_core::event::RunEvent;
use chronicle_core::ids::RunId;
use chronicle_core::model::{ErrorKind, Workflow, parse_definition};
use chronicle_core::state::{RunState, evolve, fold};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

/// A diamond: a, then b and c in parallel, then d.
pub const DIAMOND: &str = "
name: diamond
steps:
  - id: a
    command: [echo, a]
  - id: b
    needs: [a]
    command: [echo, b]
  - id: c
    needs: [a]
    command: [echo, c]
  - id: d
    needs: [b, c]
    command: [echo, d]
";

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap()
}

pub fn run_id() -> RunId {
    RunId(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_0001,
    ))
}

pub fn wf(yaml: &str) -> Workflow {
    parse_definition("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

pub struct Sim {
    pub state: RunState,
    pub history: Vec<(chronicle_core::ids::Seq, DateTime<Utc>, RunEvent)>,
    pub now: DateTime<Utc>,
    pub slots: usize,
    pub agents: BTreeMap<String, AgentView>,
    pub breakers: BTreeMap<String, Breaker>,
}

impl Sim {
    /// A run of `yaml` created and started.
    pub fn start(yaml: &str) -> (Sim, Vec<RunEvent>) {
        let mut sim = Sim::empty();
        let mut events = sim.cmd(Command::Create {
            run_id: run_id(),
            workflow: std::sync::Arc::new(wf(yaml)),
            input: json!({}),
            idempotency_key: Some("key-1".into()),
            seed: 42,
            trace_id: None,
            parent: None,
        });
        events.extend(sim.cmd(Command::Start));
        (sim, events)
    }

    pub fn empty() -> Sim {
        Sim {
            state: RunState::default(),
            history: Vec::new(),
            now: t0(),
            slots: usize::MAX,
            agents: BTreeMap::new(),
            breakers: BTreeMap::new(),
        }
    }

    pub fn ctx(&self) -> Ctx {
        let mut agents = self.agents.clone();
        for (name, b) in &self.breakers {
            agents.entry(name.clone()).or_default().circuit = b.state;
        }
        Ctx {
            now: self.now,
            slots: self.slots,
            agents,
        }
    }

    pub fn try_cmd(&mut self, c: Command) -> Result<Vec<RunEvent>, Rejected> {
        let events = decide(&self.state, c, &self.ctx())?;
        self.apply(&events);
        Ok(events)
    }

    pub fn apply(&mut self, events: &[RunEvent]) {
        for e in events {
            // Every event survives its JSON form unchanged (stable names).
            let text = serde_json::to_string(e).unwrap();
            let back: RunEvent = serde_json::from_str(&text).unwrap();
            assert_eq!(&back, e, "JSON round trip of {text}");
            assert_eq!(
                &RunEvent::from_json(text.as_bytes()).unwrap(),
                e,
                "from_json of {text}"
            );
            let seq = self.state.seq + 1;
            self.state = evolve(std::mem::take(&mut self.state), seq, self.now, e)
                .unwrap_or_else(|err| panic!("decide produced an event that does not fold: {err}"));
            self.history.push((seq, self.now, e.clone()));
        }
        let replayed = fold(self.history.iter().map(|(s, t, e)| (*s, *t, e))).unwrap();
        assert_eq!(replayed, self.state, "replay differs from the live state");
    }

    pub fn cmd(&mut self, c: Command) -> Vec<RunEvent> {
        self.try_cmd(c).unwrap_or_else(|e| panic!("rejected: {e}"))
    }

    pub fn advance_ms(&mut self, ms: i64) {
        self.now += TimeDelta::milliseconds(ms);
    }

    pub fn attempt(&self, step: &str) -> u32 {
        self.state.steps[step]
            .attempts
            .last()
            .map(|a| a.number)
            .unwrap_or(0)
    }

    pub fn ok(&mut self, step: &str, output: Value) -> Vec<RunEvent> {
        let attempt = self.attempt(step);
        self.release_agent(step);
        self.cmd(Command::Finished {
            step: step.into(),
            attempt,
            result: AttemptResult::Succeeded {
                output,
                duration_ms: 5,
                stdout: None,
                stderr: None,
            },
        })
    }

    pub fn fail(&mut self, step: &str, kind: ErrorKind, exit_code: Option<i32>) -> Vec<RunEvent> {
        let attempt = self.attempt(step);
        self.release_agent(step);
        self.cmd(Command::Finished {
            step: step.into(),
            attempt,
            result: AttemptResult::Failed {
                kind,
                message: format!("exit {exit_code:?}"),
                exit_code,
                http_status: None,
                duration_ms: 5,
                stderr: None,
            },
        })
    }

    fn release_agent(&mut self, step: &str) {
        if let Some(agent) = self.state.steps[step]
            .attempts
            .last()
            .and_then(|a| a.agent.clone())
            && let Some(v) = self.agents.get_mut(&agent)
        {
            v.running = v.running.saturating_sub(1);
        }
    }

    /// Count running attempts per agent from the state (as the runtime does).
    pub fn sync_agents(&mut self) {
        for v in self.agents.values_mut() {
            v.running = 0;
        }
        for st in self.state.steps.values() {
            if st.status == chronicle_core::state::StepStatus::Running
                && let Some(a) = st.attempts.last().and_then(|a| a.agent.clone())
            {
                self.agents.entry(a).or_default().running += 1;
            }
        }
    }

    pub fn status(&self, step: &str) -> &'static str {
        self.state.steps[step].status.as_str()
    }
}

/// Events without the bulky `RunCreated` definition, for snapshots.
pub fn brief(events: &[RunEvent]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap();
            if let Some(m) = v.as_object_mut()
                && m.contains_key("workflow")
            {
                m.insert("workflow".into(), json!("<definition>"));
            }
            v
        })
        .collect()
}
