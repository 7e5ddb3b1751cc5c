//! Controlling runs through the [`Engine`]: commands (cancel, pause,
//! resume, release) to the run's actor, or appended offline when no
//! process executes the run; waiting for runs to end; stopping the
//! engine's actors.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::actor::Msg;
use super::commit::Deciding;
use super::engine::{Engine, EngineError};
use super::shared::RunHandle;
use crate::decide::{Command, decide};
use crate::event::RunEvent;
use crate::ids::RunId;
use crate::state::{RunState, RunStatus};

impl Engine {
    /// Send a control command and wait for it to be durable.
    pub(crate) async fn control(&self, run: RunId, cmd: Command) -> Result<(), EngineError> {
        if !self.take_lease(run)? {
            // Executed by another worker: append the command's events; its
            // actor folds them and acts (see `leases`).
            return self.control_remote(run, cmd).await;
        }
        let h = self.handle(run).await?;
        let (reply, rx) = oneshot::channel();
        if h.tx.send(Msg::Control(cmd.clone(), reply)).is_err() {
            // The actor has ended: an ended run refuses the command with
            // its reason; any other run stopped on a storage failure.
            let state = self.state(run)?;
            decide(
                &state,
                cmd,
                &crate::decide::Ctx::at(self.inner.clock.peek()),
            )?;
            return Err(EngineError::Stopped(
                run,
                "its actor stopped; run `chronicle resume`".into(),
            ));
        }
        rx.await
            .map_err(|_| EngineError::Stopped(run, "the actor ended".into()))?
    }

    /// Cancel: running attempts are killed, the run ends `canceled`.
    pub async fn cancel(&self, run: RunId, reason: &str) -> Result<(), EngineError> {
        self.control(
            run,
            Command::Cancel {
                reason: reason.to_string(),
            },
        )
        .await
    }
    /// Pause: running attempts finish, no new ones start.
    pub async fn pause(&self, run: RunId) -> Result<(), EngineError> {
        self.control(run, Command::Pause).await
    }
    /// Resume a paused run.
    pub async fn resume(&self, run: RunId) -> Result<(), EngineError> {
        self.control(run, Command::Resume).await
    }
    /// Release a quarantined run.
    pub async fn release(&self, run: RunId) -> Result<(), EngineError> {
        self.control(run, Command::Release).await
    }

    /// Apply a control command to a run that no process is executing:
    /// attempts the log shows running (left by a crash) are abandoned
    /// first, nothing new starts, and the events are appended in one
    /// commit. Returns the new state.
    ///
    /// Errors: unknown run; [`crate::decide::Rejected`] when the command does not apply.
    pub async fn control_offline(&self, run: RunId, cmd: Command) -> Result<RunState, EngineError> {
        if !self.take_lease(run)? {
            // On a shared database, executed by a live worker: nothing of
            // its attempts is abandoned; it folds the command and acts.
            self.control_remote(run, cmd).await?;
            return self.state(run);
        }
        let state = self.state(run)?;
        let commands = offline_commands(&state, cmd);
        let d = self
            .inner
            .commit(&state, commands, Vec::new(), Deciding::Offline)
            .await;
        // A lease taken for this write only is given back: a worker
        // executes the run.
        let executing = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&run);
        if !executing {
            let terminal = d.as_ref().is_ok_and(|d| d.next.status.is_terminal());
            self.inner.drop_lease(run, terminal);
        }
        let d = d?;
        Ok(if d.events.is_empty() { state } else { d.next })
    }

    /// What [`Self::control_offline`] would append, without writing:
    /// `(state, events, state after, time)`. Works on a read-only store,
    /// so a command can be checked before the database is opened for
    /// writing.
    #[allow(clippy::type_complexity)]
    pub fn plan_offline(
        &self,
        run: RunId,
        cmd: Command,
    ) -> Result<
        (
            RunState,
            Vec<RunEvent>,
            RunState,
            chrono::DateTime<chrono::Utc>,
        ),
        EngineError,
    > {
        let state = self.state(run)?;
        let commands = offline_commands(&state, cmd);
        let d = self.inner.plan(&state, commands, Deciding::Offline)?;
        Ok((state, d.events, d.next, d.now))
    }

    /// The state this engine holds for `run` while an actor executes it
    /// (None for a run no actor of this engine has open: fold it with
    /// [`Engine::state`]). Reads no storage.
    pub fn live_state(&self, run: RunId) -> Option<Arc<RunState>> {
        self.inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .map(|h| h.state.borrow().clone())
    }

    /// Wait until the run ends or is quarantined; returns its state.
    pub async fn wait(&self, run: RunId) -> Result<RunState, EngineError> {
        self.wait_until(run, |s| {
            s.status.is_terminal() || s.status == RunStatus::Quarantined
        })
        .await
    }

    /// Wait until the run's durable state satisfies `done` (checked at
    /// once, then at each commit), or its actor has ended; returns that
    /// state. A run no actor of this engine executes answers at once
    /// with its stored state.
    ///
    /// Errors: unknown run; storage.
    pub async fn wait_until(
        &self,
        run: RunId,
        done: impl Fn(&RunState) -> bool,
    ) -> Result<RunState, EngineError> {
        let h = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .cloned();
        let Some(mut h) = h else {
            return self.state(run);
        };
        loop {
            {
                let s = h.state.borrow_and_update();
                if done(&s) {
                    return Ok((**s).clone());
                }
            }
            if h.state.changed().await.is_err() {
                return self.state(run);
            }
        }
    }

    /// Wait until every run of this engine has ended, or is paused or
    /// quarantined with no attempt running.
    pub async fn wait_all(&self) -> Result<(), EngineError> {
        loop {
            let handles = self.handles();
            // The first run still busy; wait for it to change or end, then
            // look again (no polling: a CLI exits as soon as its run does).
            let mut busy = None;
            for mut h in handles {
                if h.tx.is_closed() {
                    // Its actor has ended (or stopped on a storage failure):
                    // nothing more happens to this run in this engine.
                    continue;
                }
                let s = h.state.borrow_and_update().clone();
                let is_busy = if matches!(s.status, RunStatus::Running | RunStatus::Pending) {
                    true
                } else if s.status.is_terminal() {
                    // Let the actor collect its last attempts and deregister.
                    true
                } else {
                    !s.running().is_empty()
                };
                // A run that waits only for a signal or an approval is not
                // busy: nothing happens to it without the outside world.
                let is_busy = is_busy && !s.parked();
                if is_busy {
                    busy = Some(h);
                    break;
                }
            }
            let Some(mut h) = busy else {
                return Ok(());
            };
            tokio::select! {
                _ = h.tx.closed() => {}
                _ = h.state.changed() => {}
            }
        }
    }

    /// Stop every run actor of this engine: running attempts are killed and
    /// nothing more is recorded — the runs stay in flight for
    /// [`Engine::recover`], as after a crash. Returns once every actor has
    /// stopped, so the database can be reopened.
    pub async fn shutdown(&self) {
        self.stop_actors(|| Msg::Shutdown).await;
    }

    /// Stop every run actor on purpose (SIGINT/SIGTERM): no attempt
    /// starts any more, running attempts are killed (their process groups
    /// with them), and once each has ended it is recorded as
    /// `StepAbandoned` with `reason` and `stopped: true` — not counted as
    /// a crash. The runs stay in flight for [`Engine::recover`]. Returns
    /// once every actor has stopped.
    pub async fn stop(&self, reason: &str) {
        self.stop_actors(|| Msg::Stop(reason.to_string())).await;
    }

    /// Graceful stop (a server's SIGTERM): start no new attempt, let the
    /// running ones finish for up to `grace`, then [`Engine::stop`] with
    /// `reason` — attempts still running are killed and recorded as
    /// abandoned by the stop. Returns the number of attempts that were
    /// still running when the grace period ended (0 when all finished).
    /// The runs stay in flight for [`Engine::recover`].
    pub async fn drain(&self, grace: std::time::Duration, reason: &str) -> usize {
        self.inner.capacity.drain();
        let deadline = tokio::time::Instant::now() + grace;
        while self.inner.capacity.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let left = self.inner.capacity.running();
        self.stop(reason).await;
        left
    }

    /// The handles of this engine's run actors, now.
    fn handles(&self) -> Vec<RunHandle> {
        self.inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Send `msg()` to every run actor and wait until each has ended.
    async fn stop_actors(&self, msg: impl Fn() -> Msg) {
        let handles = self.handles();
        for h in &handles {
            let _ = h.tx.send(msg());
        }
        for h in handles {
            h.tx.closed().await;
        }
    }
}

/// A command on a run no process executes: attempts the log shows
/// running (left by a crash) are abandoned first.
fn offline_commands(state: &RunState, cmd: Command) -> Vec<Command> {
    let mut commands = Vec::new();
    if !state.running().is_empty() && !state.status.is_terminal() {
        commands.push(Command::Recover);
    }
    commands.push(cmd);
    commands
}
