//! Per-agent concurrency across workers on a shared database (PostgreSQL).
//!
//! On redb one engine executes every run, and [`super::capacity::Capacity`]
//! counts the attempts running on each agent. With many workers, each
//! counts only its own, so an agent with `concurrency: 2` could run two
//! attempts per worker. On a shared database an attempt on an agent
//! therefore takes a **slot**: a unique key `AGENT/SLOT` (slot `0 ..
//! concurrency`) of the index [`SLOTS`], inserted in the same atomic write
//! as its `StepStarted` and deleted in the write that records its end
//! (whatever ends it: its outcome, a timeout, a cancel, or the recovery of
//! another worker that took the run over). Two workers that pick the same
//! free slot race on the key: one write wins, the other gets
//! [`chronicle_store::StoreError::IndexConflict`], and its run decides
//! again on the slots as they are now — the same optimistic concurrency as
//! the agent's stream.
//!
//! A decision that starts attempts on agents is made again on the slots
//! taken across all workers ([`Slots`]: for each agent, the larger of the
//! attempts this engine runs on it and its slots taken), so `decide` starts
//! no more than the free slots allow. A decision that starts none reads
//! nothing.

use std::collections::{BTreeMap, BTreeSet};

use chronicle_store::{IndexOp, StoreError};

use super::commit::Decision;
use super::engine::EngineError;
use super::shared::Inner;
use crate::event::RunEvent;
use crate::model::Workflow;
use crate::state::RunState;

/// The index of taken slots: key `AGENT/SLOT` (slot zero-padded to five
/// digits), value `RUN/STEP/ATTEMPT` (the attempt holding it).
pub const SLOTS: &str = "agent_slots";

fn key(agent: &str, slot: u32) -> String {
    format!("{agent}/{slot:05}")
}

fn holder(run: &str, step: &str, attempt: u32) -> String {
    format!("{run}/{step}/{attempt}")
}

/// The slots of `agent` taken now, across all workers: slot → holder.
///
/// Errors: storage errors.
fn taken(inner: &Inner, agent: &str) -> Result<BTreeMap<u32, String>, EngineError> {
    let prefix = format!("{agent}/");
    let mut out = BTreeMap::new();
    for (k, v) in inner.store.index_scan(SLOTS, &prefix)? {
        if let Ok(slot) = k[prefix.len()..].parse::<u32>() {
            out.insert(slot, String::from_utf8_lossy(&v).into_owned());
        }
    }
    Ok(out)
}

/// True when attempts on agents take slots in this engine's writes (a
/// shared database).
pub(crate) fn enabled(inner: &Inner) -> bool {
    inner.leases.is_some()
}

/// One commit's view of the agents' slots: read only for the agents a
/// decision starts or ends attempts on (a decision that starts none on
/// agents reads nothing), and kept while the commit decides again.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// Agent → its slots taken (slot → holder), as read.
    taken: BTreeMap<String, BTreeMap<u32, String>>,
    /// Agents seen with no free slot a moment ago: decided as full.
    full: BTreeSet<String>,
}

impl Slots {
    /// The attempts running on each agent read so far, across all
    /// workers (its slots taken), or its whole `concurrency` when full.
    pub fn floor(&self, wf: &Workflow) -> BTreeMap<String, u32> {
        wf.agents
            .iter()
            .filter_map(|(name, agent)| {
                if self.full.contains(name) {
                    Some((name.clone(), agent.concurrency))
                } else {
                    self.taken.get(name).map(|t| (name.clone(), t.len() as u32))
                }
            })
            .collect()
    }

    /// Read the slots of the agents `d` starts attempts on that were not
    /// read yet; true when there were any (decide again on them).
    ///
    /// Errors: storage errors.
    pub fn learn(&mut self, inner: &Inner, d: &Decision) -> Result<bool, EngineError> {
        let mut learnt = false;
        for e in &d.events {
            if let RunEvent::StepStarted {
                agent: Some(agent), ..
            } = e
                && !self.taken.contains_key(agent)
                && !self.full.contains(agent)
            {
                self.taken.insert(agent.clone(), taken(inner, agent)?);
                learnt = true;
            }
        }
        Ok(learnt)
    }

    /// After a lost race on a slot: read again.
    pub fn forget(&mut self) {
        self.taken.clear();
    }

    /// Decide as full every agent of `wf` (nothing starts on any).
    pub fn all_full(&mut self, wf: &Workflow) {
        self.full.extend(wf.agents.keys().cloned());
    }

    /// The slot writes of decision `d` on `state`: a free slot inserted
    /// for each attempt it starts on an agent (and that still runs after
    /// it), and the slot of each attempt it ends deleted.
    ///
    /// `Ok(Err(agent))`: no slot of `agent` is free for an attempt `d`
    /// starts (another of this engine's runs took the last one); decide
    /// again with that agent full.
    ///
    /// Errors: storage errors.
    pub fn ops(
        &mut self,
        inner: &Inner,
        state: &RunState,
        d: &Decision,
    ) -> Result<Result<Vec<IndexOp>, String>, EngineError> {
        let Some(run) = d.next.run_id else {
            return Ok(Ok(Vec::new()));
        };
        let run = run.to_string();
        let mut out = Vec::new();
        let running_after: BTreeSet<(String, u32)> = d
            .next
            .running()
            .into_iter()
            .map(|(s, a)| (s.to_string(), a))
            .collect();
        // Attempts this decision ended: their slots are free again.
        for (step, attempt) in state.running() {
            if running_after.contains(&(step.to_string(), attempt)) {
                continue;
            }
            let Some(agent) = state
                .steps
                .get(step)
                .and_then(|s| s.attempts.get(attempt as usize - 1))
                .and_then(|a| a.agent.clone())
            else {
                continue;
            };
            if !self.taken.contains_key(&agent) {
                let t = taken(inner, &agent)?;
                self.taken.insert(agent.clone(), t);
            }
            let h = holder(&run, step, attempt);
            if let Some((slot, _)) = self.taken[&agent].iter().find(|(_, v)| **v == h) {
                out.push(IndexOp::Delete {
                    index: SLOTS.into(),
                    key: key(&agent, *slot),
                });
            }
        }
        // Attempts it started: each takes the lowest slot free (read, and
        // not taken by an earlier start of this decision).
        let mut chosen: BTreeSet<(String, u32)> = BTreeSet::new();
        for e in &d.events {
            let RunEvent::StepStarted {
                step,
                attempt,
                agent: Some(agent),
                ..
            } = e
            else {
                continue;
            };
            if !running_after.contains(&(step.to_string(), *attempt)) {
                continue; // started and ended at once (an unresolved input)
            }
            let limit = d
                .next
                .wf()
                .agents
                .get(agent)
                .map(|a| a.concurrency)
                .unwrap_or(1);
            if !self.taken.contains_key(agent) {
                let t = taken(inner, agent)?;
                self.taken.insert(agent.clone(), t);
            }
            let slots = &self.taken[agent];
            let Some(free) = (0..limit)
                .find(|s| !slots.contains_key(s) && !chosen.contains(&(agent.clone(), *s)))
            else {
                return Ok(Err(agent.clone()));
            };
            chosen.insert((agent.clone(), free));
            out.push(IndexOp::Insert {
                index: SLOTS.into(),
                key: key(agent, free),
                value: holder(&run, step.as_str(), *attempt).into_bytes(),
            });
        }
        Ok(Ok(out))
    }

    /// Decide `agent` as full from now on.
    pub fn set_full(&mut self, agent: String) {
        self.full.insert(agent);
    }
}

/// True when `e` is a lost race for an agent's slot.
pub(crate) fn is_slot_conflict(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::IndexConflict { index, .. }) if index == SLOTS)
}
