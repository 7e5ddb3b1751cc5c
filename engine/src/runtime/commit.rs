//! The runtime's one commit path: decide commands on a run's state, fold
//! each event into the next state, and append the events — with the run
//! index row of the new state, a snapshot when one is due and any other
//! index writes — in one atomic write. Run creation, the actors, recovery
//! and commands on runs no process executes all commit through here.

use std::collections::BTreeMap;

use chronicle_store::{Append, IndexOp, NewEvent, Seq, WriteRequest};
use chrono::{DateTime, Utc};

use super::agent_slots;
use super::engine::EngineError;
use super::index::RunSummary;
use super::shared::{Inner, encode};
use crate::decide::{Command, Ctx, decide};
use crate::event::{AgentEvent, RunEvent, SCHEMA_VERSION};
use crate::ids::{RunStream, agent_stream};
use crate::state::{RunState, StepStatus, evolve};

/// Where the decision's view of capacity comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deciding {
    /// The engine's capacity and circuits: attempts may start, and the
    /// slots of those decided are reserved until they end.
    WithCapacity,
    /// No slots: nothing starts (a command on a run no process executes).
    Offline,
}

/// Events for an agent's stream written with the run's events that caused
/// them (a circuit breaker's outcome), in the same atomic write.
#[derive(Clone, Debug)]
pub(crate) struct AgentAppend {
    /// The agent.
    pub agent: String,
    /// Its events.
    pub events: Vec<AgentEvent>,
    /// The agent stream's last seq (the writer holds the agents' lock).
    pub after: Seq,
}

/// What deciding commands gave.
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    /// The events, in order (empty: nothing to append).
    pub events: Vec<RunEvent>,
    /// The state they fold to.
    pub next: RunState,
    /// The time of the decision (the events' `recorded_at`).
    pub now: DateTime<Utc>,
}

/// Decide `commands` in order on `state` — each on the state the events of
/// the ones before fold to — and fold every event.
///
/// Errors: the first command refused ([`crate::decide::Rejected`]), or an
/// event that does not fold (a bug in `decide`).
pub(crate) fn decide_all(
    state: &RunState,
    commands: Vec<Command>,
    ctx: &Ctx,
) -> Result<(Vec<RunEvent>, RunState), EngineError> {
    let mut next = state.clone();
    let mut events = Vec::new();
    for c in commands {
        let evs = decide(&next, c, ctx)?;
        for e in &evs {
            let seq = next.seq + 1;
            next = evolve(next, seq, ctx.now, e)?;
        }
        events.extend(evs);
    }
    Ok((events, next))
}

impl Inner {
    /// Decide `commands` on `state` without writing.
    pub(crate) fn plan(
        &self,
        state: &RunState,
        commands: Vec<Command>,
        deciding: Deciding,
    ) -> Result<Decision, EngineError> {
        self.plan_with(state, commands, deciding, None)
    }

    /// [`Inner::plan`] with the agents' attempts running across all
    /// workers (`floor`, see [`agent_slots::floor`]).
    fn plan_with(
        &self,
        state: &RunState,
        commands: Vec<Command>,
        deciding: Deciding,
        floor: Option<&BTreeMap<String, u32>>,
    ) -> Result<Decision, EngineError> {
        let now = self.clock.peek();
        let (events, next) = match deciding {
            Deciding::WithCapacity => {
                let (res, events) = self.capacity.decide_with(now, floor, |ctx| {
                    match decide_all(state, commands, ctx) {
                        Ok((events, next)) => (Ok(next), events),
                        Err(e) => (Err(e), Vec::new()),
                    }
                });
                (events, res?)
            }
            Deciding::Offline => decide_all(state, commands, &Ctx::at(now).with_no_slots())?,
        };
        Ok(Decision { events, next, now })
    }

    /// The write that appends `d` after `after_seq` (the stream's head):
    /// the events, the run index row of the new state, a snapshot of it
    /// when it crosses a multiple of the snapshot interval, and `extra`.
    pub(crate) fn request(
        &self,
        after_seq: crate::ids::Seq,
        d: &Decision,
        extra: Vec<IndexOp>,
    ) -> WriteRequest {
        let run = d.next.run_id.expect("a decided run has an id");
        let mut req =
            WriteRequest::append(run.stream(), Seq(after_seq.0), encode(&d.events, d.now));
        req.index
            .push(RunSummary::of(&d.next).expect("a run has a summary").put());
        req.index.extend(extra);
        for e in &d.events {
            if let RunEvent::CallbackIssued { token_sha256, .. } = e {
                req.index.push(IndexOp::Insert {
                    index: super::index::CALLBACKS.into(),
                    key: token_sha256.clone(),
                    value: run.to_string().into_bytes(),
                });
            }
        }
        super::leases::fence(
            self,
            &mut req,
            run,
            after_seq.0 == 0,
            d.next.status.is_terminal(),
        );
        let every = self.snapshot_every;
        if every > 0 && d.next.seq.0 / every > after_seq.0 / every {
            let bytes = serde_json::to_vec(&d.next).expect("a state always serializes");
            req.snapshots.push((run.stream(), Seq(d.next.seq.0), bytes));
        }
        req
    }

    /// Decide, fold and append durably (nothing is written when the
    /// commands decide no event). With capacity, the slots of attempts
    /// decided are given back if the write fails, and those of attempts
    /// that did not start (an input that could not be resolved) at once.
    ///
    /// Errors: as [`Inner::plan`]; storage errors of the write.
    pub(crate) async fn commit(
        &self,
        state: &RunState,
        commands: Vec<Command>,
        extra: Vec<IndexOp>,
        deciding: Deciding,
    ) -> Result<Decision, EngineError> {
        self.commit_with(state, commands, extra, deciding, None)
            .await
    }

    /// [`Inner::commit`], appending `agent`'s events in the same write
    /// (when the commands decide run events; none are written otherwise).
    pub(crate) async fn commit_with(
        &self,
        state: &RunState,
        commands: Vec<Command>,
        extra: Vec<IndexOp>,
        deciding: Deciding,
        agent: Option<&AgentAppend>,
    ) -> Result<Decision, EngineError> {
        // On a shared database, attempts on agents take slots across all
        // workers: a decision that starts some is made again on the slots
        // taken now, and again when another worker took one meanwhile
        // (with every agent full, at the end).
        let wf = state.workflow.clone().or_else(|| {
            commands.iter().find_map(|c| match c {
                Command::Create { workflow, .. } => Some(workflow.clone()),
                _ => None,
            })
        });
        let mut slots = (agent_slots::enabled(self)
            && wf.as_ref().is_some_and(|w| !w.agents.is_empty()))
        .then(agent_slots::Slots::default);
        let mut tries = 0;
        loop {
            let floor = match (&slots, &wf, deciding) {
                (Some(s), Some(wf), Deciding::WithCapacity) => Some(s.floor(wf)),
                _ => None,
            };
            let d = self.plan_with(state, commands.clone(), deciding, floor.as_ref())?;
            if d.events.is_empty() {
                return Ok(d);
            }
            let mut extra = extra.clone();
            if let Some(s) = &mut slots {
                let learnt = match deciding {
                    Deciding::WithCapacity => s.learn(self, &d),
                    Deciding::Offline => Ok(false),
                };
                let ops = match learnt {
                    Ok(false) => s.ops(self, state, &d),
                    Ok(true) => {
                        release_reserved(self, deciding, &d.events);
                        continue;
                    }
                    Err(e) => Err(e),
                };
                match ops {
                    Ok(Ok(ops)) => extra.extend(ops),
                    Ok(Err(busy)) => {
                        release_reserved(self, deciding, &d.events);
                        s.set_full(busy);
                        continue;
                    }
                    Err(e) => {
                        release_reserved(self, deciding, &d.events);
                        return Err(e);
                    }
                }
            }
            let checks = match (&slots, deciding) {
                (Some(_), Deciding::WithCapacity) => breaker_checks(self, &d, agent),
                _ => Vec::new(),
            };
            match self
                .write_decision(state, &d, extra, deciding, agent, &checks)
                .await
            {
                Err(EngineError::Store(chronicle_store::StoreError::Conflict {
                    stream, ..
                })) if tries < 16
                    && let Some((agent, _)) =
                        checks.iter().find(|(a, _)| format!("agent:{a}") == stream) =>
                {
                    // Another process appended to the agent's stream since
                    // this engine folded it (a circuit opened, say): fold
                    // it now and decide again — after a few lost races on a
                    // busy agent, with it full (nothing starts on it in
                    // this decision; its runs are woken when it changes).
                    tries += 1;
                    tracing::debug!(
                        agent,
                        tries,
                        "the agent's stream moved since its breaker was folded; deciding again"
                    );
                    self.refresh_breaker(agent)?;
                    if tries >= 4
                        && let Some(s) = &mut slots
                    {
                        s.set_full(agent.clone());
                    }
                }
                Err(e) if agent_slots::is_slot_conflict(&e) && tries < 8 => {
                    tries += 1;
                    if let (Some(s), Some(wf)) = (&mut slots, &wf) {
                        s.forget();
                        if tries == 8 {
                            // Starts nothing more on any agent: the
                            // command's own outcome is recorded.
                            s.all_full(wf);
                        }
                    }
                }
                r => return r.map(|()| d),
            }
        }
    }

    /// Append decision `d` (with `extra` index writes and `agent`'s events)
    /// durably; the capacity its attempts reserved is given back if the
    /// write fails, and that of attempts that did not start at once.
    async fn write_decision(
        &self,
        state: &RunState,
        d: &Decision,
        extra: Vec<IndexOp>,
        deciding: Deciding,
        agent: Option<&AgentAppend>,
        checks: &[(String, Seq)],
    ) -> Result<(), EngineError> {
        let mut req = self.request(state.seq, d, extra);
        for (agent, folded) in checks {
            // No events: the write commits only while the agent's stream
            // is still at the seq its breaker was folded through.
            req.appends.push(Append {
                stream: agent_stream(agent)?,
                expected: *folded,
                events: Vec::new(),
            });
        }
        if let Some(a) = agent.filter(|a| !a.events.is_empty()) {
            req.appends.push(Append {
                stream: agent_stream(&a.agent)?,
                expected: a.after,
                events: a
                    .events
                    .iter()
                    .map(|e| NewEvent {
                        recorded_at: Some(d.now),
                        ..NewEvent::json(SCHEMA_VERSION, e).expect("agent events serialize")
                    })
                    .collect(),
            });
        }
        if let Err(e) = self.store.write(req).await {
            release_reserved(self, deciding, &d.events);
            return Err(e.into());
        }
        self.clock.now(); // one tick of a manual clock per durable decision
        if deciding == Deciding::WithCapacity {
            release_unstarted(self, &d.next, &d.events);
        }
        super::metrics::observe_commit(&d.next, &d.events);
        Ok(())
    }
}

/// The agents with a circuit breaker that decision `d` starts attempts on
/// (on a shared database), each with the seq of its stream its breaker
/// was folded through: the decision routed on that breaker, so its write
/// expects the stream there and fails with a conflict — and is decided
/// again on the breaker folded anew — should another worker have appended
/// to it meanwhile (opened the circuit, say). The agent `agent` appends to
/// is left out: that append expects its own head already.
fn breaker_checks(engine: &Inner, d: &Decision, agent: Option<&AgentAppend>) -> Vec<(String, Seq)> {
    let wf = d.next.wf();
    let mut out: BTreeMap<String, Seq> = BTreeMap::new();
    for e in &d.events {
        if let RunEvent::StepStarted { agent: Some(a), .. } = e
            && wf
                .agents
                .get(a)
                .is_some_and(|x| x.circuit_breaker.is_some())
            && agent.is_none_or(|x| x.agent != *a || x.events.is_empty())
        {
            let folded = engine
                .agent_folded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(a)
                .copied()
                .unwrap_or(Seq(0));
            out.insert(a.clone(), folded);
        }
    }
    out.into_iter().collect()
}

/// Give back what a decision with capacity reserved (it is not written).
fn release_reserved(engine: &Inner, deciding: Deciding, events: &[RunEvent]) {
    if deciding == Deciding::WithCapacity {
        release_started(engine, events);
    }
}

/// Give back the capacity reserved for the `StepStarted` of `events`.
fn release_started(engine: &Inner, events: &[RunEvent]) {
    for e in events {
        if let RunEvent::StepStarted { agent, .. } = e {
            engine.capacity.release(agent.as_deref());
        }
    }
}

/// Give back the capacity of attempts that were started and ended in the
/// same commit (an input that could not be resolved).
fn release_unstarted(engine: &Inner, state: &RunState, events: &[RunEvent]) {
    for e in events {
        if let RunEvent::StepStarted {
            step,
            attempt,
            agent,
            ..
        } = e
        {
            let running = state.steps.get(step).is_some_and(|s| {
                s.status == StepStatus::Running
                    && s.last_attempt().is_some_and(|a| a.number == *attempt)
            });
            if !running {
                engine.capacity.release(agent.as_deref());
            }
        }
    }
}
