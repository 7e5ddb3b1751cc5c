//! The run actor: one task per active run. Commands, attempt results and
//! timers arrive as messages; each is decided, appended durably, folded,
//! and then the effects of the new state are performed.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::commit::{AgentAppend, Deciding};
use super::engine::EngineError;
use super::exec::{AttemptRequest, Executor, Secrets};
use super::processes;
use super::shared::Inner;
use crate::decide::{AttemptResult, Command, decide_circuit};
use crate::effects::{Effect, StartAttempt, effects};
use crate::model::template::{Scope, resolve, substitute_secrets};
use crate::state::{RunState, RunStatus, StepStatus};
use chronicle_store::Seq;

mod effects;

/// A message to a run actor.
pub(crate) enum Msg {
    /// A control command, answered once durable.
    Control(Command, oneshot::Sender<Result<(), EngineError>>),
    /// Stop now: kill running attempts and record nothing (as a crash
    /// would; recovery continues the run later).
    Shutdown,
    /// Stop on purpose: start no attempt, kill the running ones, wait for
    /// them to end, record each as abandoned with `reason` (not a crash),
    /// then stop.
    Stop(String),
    /// Another process appended to the run (a command on a shared
    /// database): fold what is new, then act on the new state.
    Refresh,
    /// An attempt ended.
    Done {
        step: crate::ids::StepId,
        attempt: u32,
        agent: Option<String>,
        result: AttemptResult,
    },
}

struct Live {
    kill: Option<oneshot::Sender<()>>,
}

pub(crate) struct RunActor {
    engine: Arc<Inner>,
    /// The folded state, shared with waiters through `state_tx`.
    state: Arc<RunState>,
    rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    state_tx: watch::Sender<Arc<RunState>>,
    live: HashMap<(crate::ids::StepId, u32), Live>,
    secrets: Secrets,
    /// Set by [`Msg::Stop`]: why the engine stops.
    stopping: Option<String>,
}

impl RunActor {
    pub fn new(
        engine: Arc<Inner>,
        state: RunState,
        rx: mpsc::UnboundedReceiver<Msg>,
        tx: mpsc::UnboundedSender<Msg>,
        state_tx: watch::Sender<Arc<RunState>>,
    ) -> Self {
        let secrets = engine.secrets_for(&state.wf().secrets);
        Self {
            engine,
            state: Arc::new(state),
            rx,
            tx,
            state_tx,
            live: HashMap::new(),
            secrets,
            stopping: None,
        }
    }

    fn run_id(&self) -> crate::ids::RunId {
        self.state.run_id.expect("an actor's run exists")
    }

    pub async fn run(mut self) {
        let span = tracing::info_span!("run", run_id = %self.run_id());
        super::trace::join_run_trace(&span, self.run_id(), self.state.trace_id.as_deref());
        async move {
            let mut capacity = self.engine.capacity.subscribe();
            loop {
                if let Some(reason) = &self.stopping
                    && self.live.is_empty()
                {
                    // Every attempt has ended: record them and stop.
                    let reason = reason.clone();
                    let _ = self.handle_logged(Command::Stop { reason }).await;
                    break;
                }
                let (mut timer, waiting) = if self.stopping.is_some() {
                    (None, false)
                } else {
                    self.perform_effects()
                };
                // A slot another worker frees is not announced here: a run
                // waiting for capacity on a shared database with agents
                // looks again every 250 ms.
                if waiting
                    && super::agent_slots::enabled(&self.engine)
                    && !self.state.wf().agents.is_empty()
                {
                    let poll = self.engine.clock.peek() + chrono::Duration::milliseconds(250);
                    timer = Some(timer.map_or(poll, |t| t.min(poll)));
                }
                // Paused and quarantined runs keep their actor: they wait
                // for a person's resume or release.
                if self.state.status.is_terminal() && self.live.is_empty() {
                    break;
                }
                let sleep = async {
                    match timer {
                        Some(at) => {
                            let now = self.engine.clock.peek();
                            let ms = (at - now).num_milliseconds().max(0) as u64;
                            tokio::time::sleep(std::time::Duration::from_millis(ms + 1)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                let outcome = tokio::select! {
                    msg = self.rx.recv() => match msg {
                        Some(Msg::Control(cmd, reply)) => {
                            let r = self.handle(cmd).await;
                            let fatal = r.as_ref().is_err_and(is_fatal);
                            let _ = reply.send(r);
                            if fatal { Err(()) } else { Ok(()) }
                        }
                        Some(Msg::Done { step, attempt, agent, result }) if self.stopping.is_some() => {
                            // Killed by the stop: recorded once all have ended.
                            let _ = result;
                            self.live.remove(&(step, attempt));
                            self.engine.capacity.release(agent.as_deref());
                            Ok(())
                        }
                        Some(Msg::Stop(reason)) => {
                            for (_, l) in self.live.iter_mut() {
                                if let Some(k) = l.kill.take() {
                                    let _ = k.send(());
                                }
                            }
                            self.stopping = Some(reason);
                            Ok(())
                        }
                        Some(Msg::Done { step, attempt, agent, result }) => {
                            self.live.remove(&(step.clone(), attempt));
                            self.engine.capacity.release(agent.as_deref());
                            self.finished(step, attempt, agent, result).await
                        }
                        Some(Msg::Refresh) => match self.refresh() {
                            // Decide on the new state: start what a signal
                            // or a resume allows.
                            Ok(()) => self.handle_logged(Command::Tick).await,
                            Err(e) => {
                                tracing::error!(error = %e, "the run stops: its new events do not fold");
                                Err(())
                            }
                        },
                        Some(Msg::Shutdown) | None => Err(()),
                    },
                    _ = sleep => {
                        self.tick_breakers().await;
                        self.handle_logged(Command::Tick).await
                    }
                    r = capacity.changed(), if waiting => match r {
                        Ok(()) => self.handle_logged(Command::Tick).await,
                        Err(_) => Err(()),
                    },
                };
                if outcome.is_err() {
                    // Shutdown or storage failure: kill what runs; recovery
                    // continues the run later.
                    for (_, l) in self.live.iter_mut() {
                        if let Some(k) = l.kill.take() {
                            let _ = k.send(());
                        }
                    }
                    break;
                }
            }
            self.engine
                .forget(self.run_id(), self.state.status.is_terminal());
        }
        .instrument(span)
        .await
    }

    async fn handle_logged(&mut self, cmd: Command) -> Result<(), ()> {
        self.handle_with(cmd, None).await
    }

    /// [`Self::handle`] with an agent's events in the same write; logs a
    /// rejected command, and `Err` when the run must stop (storage).
    async fn handle_with(&mut self, cmd: Command, agent: Option<&AgentAppend>) -> Result<(), ()> {
        let r = self.handle_agent(cmd, agent).await;
        self.log_outcome(r)
    }

    /// Log a command's error; `Err` when the run must stop (storage, a
    /// lost lease).
    fn log_outcome(&self, r: Result<(), EngineError>) -> Result<(), ()> {
        match r {
            Ok(()) => Ok(()),
            Err(e @ EngineError::Store(chronicle_store::StoreError::Fenced { .. })) => {
                tracing::warn!(error = %e, "the run stops here: its lease was lost");
                Err(())
            }
            Err(e) if is_fatal(&e) => {
                tracing::error!(error = %e, "the run stops: storage failed");
                Err(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "command rejected");
                Ok(())
            }
        }
    }

    /// Decide, append durably, fold.
    async fn handle(&mut self, cmd: Command) -> Result<(), EngineError> {
        self.handle_agent(cmd, None).await
    }

    /// [`Self::handle`], appending `agent`'s events in the same write.
    async fn handle_agent(
        &mut self,
        cmd: Command,
        agent: Option<&AgentAppend>,
    ) -> Result<(), EngineError> {
        let _now = self.engine.clock.peek();
        // Attempts whose process group record this write ends: the one
        // that finished, or every running one at a stop (all were killed).
        let run_text = self.run_id().to_string();
        let ended: Vec<chronicle_store::IndexOp> = match &cmd {
            Command::Finished { step, attempt, .. } => {
                vec![processes::delete(&run_text, step, *attempt)]
            }
            Command::Stop { .. } => self
                .state
                .running()
                .into_iter()
                .map(|(s, a)| processes::delete(&run_text, s, a))
                .collect(),
            _ => Vec::new(),
        };
        // On a shared database another process may have appended a
        // command (cancel, a signal) since this actor's last write: fold it
        // and decide again on the new state.
        let mut tries = 0;
        let d = loop {
            match self
                .engine
                .commit_with(
                    &self.state,
                    vec![cmd.clone()],
                    ended.clone(),
                    Deciding::WithCapacity,
                    agent,
                )
                .await
            {
                Err(EngineError::Store(chronicle_store::StoreError::Conflict {
                    stream, ..
                })) if tries < 8 && stream == self.run_id().to_string() => {
                    tries += 1;
                    self.refresh()?;
                }
                r => break r?,
            }
        };
        if d.events.is_empty() {
            return Ok(());
        }
        self.state = Arc::new(d.next);
        // Every fold is visible to `borrow()`; waiters (`Engine::wait`)
        // wake only when the status changes, not at every step.
        let state = self.state.clone();
        self.state_tx.send_if_modified(move |s| {
            let changed = s.status != state.status;
            *s = state;
            changed
        });
        Ok(())
    }

    /// Fold the events other processes appended after this actor's state.
    ///
    /// Errors: storage errors, or an event that does not fold.
    fn refresh(&mut self) -> Result<(), EngineError> {
        let run = self.run_id();
        let mut state = (*self.state).clone();
        let from = chronicle_store::Seq(state.seq.0 + 1);
        let mut n = 0;
        for env in self
            .engine
            .store
            .read_stream(&crate::ids::RunStream::stream(run), from)?
        {
            state = super::shared::fold_envelope(state, &env)?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(events = n, "folded events another process appended");
            self.state = Arc::new(state);
            let state = self.state.clone();
            self.state_tx.send_if_modified(move |s| {
                let changed = s.status != state.status;
                *s = state;
                changed
            });
        }
        Ok(())
    }

    /// An attempt ended: decide its outcome, and with it what it records
    /// on its agent's circuit breaker, in one atomic write. The agents'
    /// lock is held from reading the agent stream's head to the write, so
    /// runs finishing attempts on one agent append to its stream in turn.
    async fn finished(
        &mut self,
        step: crate::ids::StepId,
        attempt: u32,
        agent: Option<String>,
        result: AttemptResult,
    ) -> Result<(), ()> {
        let has_breaker = agent.as_ref().is_some_and(|a| {
            self.state
                .wf()
                .agents
                .get(a)
                .is_some_and(|x| x.circuit_breaker.is_some())
        });
        let (Some(agent), true) = (agent, has_breaker) else {
            return self
                .handle_logged(Command::Finished {
                    step,
                    attempt,
                    result,
                })
                .await;
        };
        let engine = self.engine.clone();
        let mut heads = engine.agent_heads.lock().await;
        // On a shared database other workers append to the agent's stream
        // too: fold what they appended first, and on a conflict (one
        // appended meanwhile) fold again and decide again.
        let mut tries = 0;
        loop {
            let after = match engine.sync_agent(&agent, &mut heads) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(agent, error = %e, "cannot read the agent's stream; the run stops");
                    return Err(());
                }
            };
            let events = decide_circuit(
                &self.state,
                &agent,
                &step,
                attempt,
                &result,
                &engine.capacity.breaker(&agent),
                engine.clock.peek(),
            );
            let append = AgentAppend {
                agent: agent.clone(),
                events,
                after,
            };
            let seq_before = self.state.seq;
            let cmd = Command::Finished {
                step: step.clone(),
                attempt,
                result: result.clone(),
            };
            match self.handle_agent(cmd.clone(), Some(&append)).await {
                Err(EngineError::Store(chronicle_store::StoreError::Conflict {
                    stream, ..
                })) if tries < 8 && stream != self.run_id().to_string() => {
                    tries += 1;
                    heads.remove(&agent);
                    continue;
                }
                Err(e) => {
                    drop(heads);
                    // Logged and judged as every other command's error.
                    return self.log_outcome(Err(e));
                }
                Ok(()) => {
                    if self.state.seq > seq_before && !append.events.is_empty() {
                        // Written with the run's events: fold them in.
                        let head = Seq(after.0 + append.events.len() as u64);
                        heads.insert(agent.clone(), head);
                        engine.capacity.apply_agent(&agent, &append.events);
                        engine.folded_through(&agent, head);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Half-open the circuits of this run's agents whose cool-down ended.
    async fn tick_breakers(&mut self) {
        let now = self.engine.clock.peek();
        let agents: Vec<String> = self.state.wf().agents.keys().cloned().collect();
        for a in agents {
            let events = self.engine.capacity.with_breaker(&a, |b| b.on_tick(now));
            if let Err(e) = self.engine.append_agent(&a, events).await {
                tracing::error!(agent = %a, error = %e, "cannot record circuit breaker transition");
            }
        }
    }
}

/// A storage problem, or a lost lease (fencing): the actor stops and
/// kills its attempts.
fn is_fatal(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(s) if s.is_storage_problem() || matches!(s, chronicle_store::StoreError::Fenced { .. }))
}
