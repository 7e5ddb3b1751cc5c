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
//! A decision sees, for each agent of the run's workflow, the larger of the
//! attempts this engine runs on it and the slots taken across all workers
//! ([`floor`]), so `decide` starts no more than the free slots allow.

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
pub(crate) fn taken(inner: &Inner, agent: &str) -> Result<BTreeMap<u32, String>, EngineError> {
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

/// For each agent of workflow `wf`, the attempts running on it across
/// all workers (its slots taken), or its whole `concurrency` for the agents
/// in `full` (a decision found no free slot there a moment ago).
///
/// Errors: storage errors.
pub(crate) fn floor(
    inner: &Inner,
    wf: &Workflow,
    full: &BTreeSet<String>,
) -> Result<BTreeMap<String, u32>, EngineError> {
    let mut out = BTreeMap::new();
    for (name, agent) in &wf.agents {
        let n = if full.contains(name) {
            agent.concurrency
        } else {
            taken(inner, name)?.len() as u32
        };
        out.insert(name.clone(), n);
    }
    Ok(out)
}

/// The slot writes of decision `d` on `state`: a free slot inserted for
/// each attempt it starts on an agent (and that still runs after it), and
/// the slot of each attempt it ends deleted.
///
/// `Ok(Err(agent))`: no slot of `agent` is free for an attempt `d` starts
/// (another worker took the last one); decide again with that agent full.
///
/// Errors: storage errors.
pub(crate) fn ops(
    inner: &Inner,
    state: &RunState,
    d: &Decision,
) -> Result<Result<Vec<IndexOp>, String>, EngineError> {
    let Some(run) = d.next.run_id else {
        return Ok(Ok(Vec::new()));
    };
    let run = run.to_string();
    let mut out = Vec::new();
    let mut scans: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
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
        let slots = match scans.get(&agent) {
            Some(s) => s,
            None => scans.entry(agent.clone()).or_insert(taken(inner, &agent)?),
        };
        let h = holder(&run, step, attempt);
        if let Some((slot, _)) = slots.iter().find(|(_, v)| **v == h) {
            out.push(IndexOp::Delete {
                index: SLOTS.into(),
                key: key(&agent, *slot),
            });
        }
    }
    // Attempts it started: each takes the lowest free slot.
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
        if !scans.contains_key(agent) {
            let t = taken(inner, agent)?;
            scans.insert(agent.clone(), t);
        }
        let slots = scans.get_mut(agent).expect("scanned");
        let Some(free) = (0..limit).find(|s| !slots.contains_key(s)) else {
            return Ok(Err(agent.clone()));
        };
        let h = holder(&run, step.as_str(), *attempt);
        slots.insert(free, h.clone());
        out.push(IndexOp::Insert {
            index: SLOTS.into(),
            key: key(agent, free),
            value: h.into_bytes(),
        });
    }
    Ok(Ok(out))
}

/// True when `e` is a lost race for an agent's slot.
pub(crate) fn is_slot_conflict(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::IndexConflict { index, .. }) if index == SLOTS)
}
