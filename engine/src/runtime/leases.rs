//! Leases: on a database many workers share (PostgreSQL), a run is
//! executed only by the engine holding its lease (see
//! `chronicle_store::LeaseOp`).
//!
//! - A run this engine creates and executes is granted to it in the write
//!   of `RunCreated`; a run it creates for others (`--no-worker`) is
//!   offered to any worker.
//! - Every later write of a held run carries a `Hold` of the epoch the
//!   engine claimed: a write after the lease was lost (expired while this
//!   process was paused or cut off, or taken over) fails with
//!   `StoreError::Fenced`, writes nothing, and the run's actor stops and
//!   kills the attempts it started.
//! - The heartbeat renews every held lease each third of the lease
//!   duration; a run the renewal does not return is lost, and its actor is
//!   stopped the same way — also when renewals keep failing for a whole
//!   lease (the database unreachable: another worker may take over).
//! - Worker mode claims free and expired leases (`Engine::recover_runs`)
//!   and recovers those runs exactly as crash recovery does on redb:
//!   attempts in flight are recorded abandoned, with the same quarantine
//!   after repeated crashes.
//! - When a run ends, its lease is removed; when the engine stops, its
//!   leases are released so another worker takes the runs over at once.
//!
//! On a redb file (one process) the engine has no leases: nothing here runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chronicle_store::{LeaseOp, WriteRequest};

use super::actor::Msg;
use super::shared::Inner;
use crate::ids::{RunId, RunStream};

/// Default lease duration, milliseconds (`--lease 10s`).
pub const DEFAULT_LEASE_MS: u64 = 10_000;

/// This engine's leases.
pub(crate) struct Leases {
    /// This worker's id: host, pid and a random part (unique per process).
    pub owner: String,
    /// Lease duration, milliseconds.
    pub ttl_ms: u64,
    /// Runs held, with the epoch claimed.
    pub held: Mutex<HashMap<RunId, u64>>,
    /// Whether this engine executes the runs it creates (false for an API
    /// node started with `--no-worker`).
    pub executes: bool,
    /// Most runs held at once; claims stop there.
    pub max_held: usize,
    /// The heartbeat task, started with the first lease.
    heartbeat: std::sync::Once,
}

impl Leases {
    pub fn new(ttl_ms: u64, executes: bool, max_held: usize) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            owner: format!("{host}/{}/{}", std::process::id(), &random[..8]),
            ttl_ms: ttl_ms.max(100),
            held: Mutex::new(HashMap::new()),
            executes,
            max_held: max_held.max(1),
            heartbeat: std::sync::Once::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, u64>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch of `run`'s lease, if held.
    pub fn epoch(&self, run: RunId) -> Option<u64> {
        self.held().get(&run).copied()
    }

    pub fn insert(&self, run: RunId, epoch: u64) {
        self.held().insert(run, epoch);
    }

    pub fn remove(&self, run: RunId) -> Option<u64> {
        self.held().remove(&run)
    }

    pub fn count(&self) -> usize {
        self.held().len()
    }

    /// The lease operations of a write to `run`: a grant (or an offer) for
    /// the write that creates it, the fence of a held run's write, and
    /// the end of the lease with the write that ends it.
    pub fn ops(&self, run: RunId, creating: bool, terminal: bool) -> Vec<LeaseOp> {
        let key = run.stream().key();
        let mut ops = Vec::new();
        if creating {
            if self.executes {
                self.insert(run, 1);
                ops.push(LeaseOp::Grant {
                    run: key.clone(),
                    owner: self.owner.clone(),
                    ttl_ms: self.ttl_ms,
                });
            } else {
                ops.push(LeaseOp::Offer { run: key.clone() });
            }
        } else if let Some(epoch) = self.epoch(run) {
            ops.push(LeaseOp::Hold {
                run: key.clone(),
                owner: self.owner.clone(),
                epoch,
            });
        }
        if terminal && !creating {
            // Later writes of the ended run (attempts it killed) need no
            // lease: the run is over.
            self.remove(run);
            ops.push(LeaseOp::End { run: key });
        }
        ops
    }
}

impl Inner {
    /// Start the heartbeat and the watch of other processes' commits
    /// (once per engine), on the current runtime.
    pub(crate) fn ensure_heartbeat(self: &Arc<Self>) {
        let Some(leases) = &self.leases else {
            return;
        };
        let weak = Arc::downgrade(self);
        leases.heartbeat.call_once(|| {
            tokio::spawn(heartbeat(weak.clone()));
            tokio::spawn(watch_foreign(weak, self.store.subscribe_changes()));
            // What the agents' streams got between the engine's start (its
            // breakers were folded then) and this subscription.
            refresh_agents(self, None);
        });
    }

    /// The run's actor has ended: forget its lease; give it up for another
    /// worker when the run is not over (this engine stops).
    pub(crate) fn drop_lease(&self, run: RunId, terminal: bool) {
        let Some(leases) = &self.leases else {
            return;
        };
        if let Some(epoch) = leases.remove(run)
            && !terminal
        {
            // Before the engine can exit (one round trip): another worker
            // takes the run over at once instead of after the lease.
            if let Err(e) = self
                .store
                .release_lease(&run.stream().key(), &leases.owner, epoch)
            {
                tracing::warn!(%run, error = %e, "cannot release a lease");
            }
        }
    }
}

/// Renew every held lease each third of the lease; stop the actors of
/// lost runs.
async fn heartbeat(engine: Weak<Inner>) {
    let mut last_ok = std::time::Instant::now();
    loop {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let Some(leases) = &inner.leases else {
            return;
        };
        let period = Duration::from_millis(leases.ttl_ms / 3);
        let held: Vec<(RunId, u64)> = leases.held().iter().map(|(r, e)| (*r, *e)).collect();
        if !held.is_empty() {
            let store = inner.store.clone();
            let owner = leases.owner.clone();
            let ttl = leases.ttl_ms;
            let asked: Vec<(String, u64)> =
                held.iter().map(|(r, e)| (r.stream().key(), *e)).collect();
            let renewed =
                tokio::task::spawn_blocking(move || store.renew_leases(&owner, asked, ttl)).await;
            match renewed {
                Ok(Ok(renewed)) => {
                    last_ok = std::time::Instant::now();
                    let renewed: std::collections::HashSet<String> = renewed.into_iter().collect();
                    let missing: Vec<(RunId, u64)> = held
                        .into_iter()
                        .filter(|(run, _)| !renewed.contains(&run.stream().key()))
                        .collect();
                    // Not renewed is not yet lost: the write that grants a
                    // run (not committed yet) or ends it (committed, its
                    // actor not yet gone) races with the renewal. Lost is a
                    // lease that another holder took, or that expired.
                    let store = inner.store.clone();
                    let owner = leases.owner.clone();
                    let taken = tokio::task::spawn_blocking(move || {
                        missing
                            .into_iter()
                            .filter(|(run, epoch)| match store.lease(&run.stream().key()) {
                                Ok(Some(l)) => {
                                    !l.live
                                        || l.owner.as_deref() != Some(owner.as_str())
                                        || l.epoch != *epoch
                                }
                                Ok(None) => false,
                                Err(_) => false, // judged at the next renewal
                            })
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_default();
                    for (run, epoch) in taken {
                        if leases.epoch(run) == Some(epoch) {
                            tracing::warn!(%run, "lease lost: stopping the run's attempts here");
                            lost(&inner, run);
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew leases");
                    if last_ok.elapsed() >= Duration::from_millis(leases.ttl_ms) {
                        for (run, _) in held {
                            tracing::warn!(%run, "leases not renewed for a whole lease: stopping the run's attempts here");
                            lost(&inner, run);
                        }
                    }
                }
                Err(_) => return,
            }
        }
        drop(inner);
        tokio::time::sleep(period).await;
    }
}

/// Tell the actors of held runs that another process appended to them
/// (a command from the CLI or an API node): they fold it and act.
async fn watch_foreign(
    engine: Weak<Inner>,
    mut feed: tokio::sync::broadcast::Receiver<Arc<chronicle_store::Change>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let batch = feed.recv().await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        // Agents' streams another process appended to (a circuit opened,
        // closed, half-opened; failures counted): folded here at once, so
        // that this engine routes on them — not only once one of its own
        // attempts on the agent ends. `None`: every agent.
        let agents: Option<Vec<String>> = match &batch {
            Ok(change) => change.streams.as_ref().map(|streams| {
                streams
                    .iter()
                    .filter_map(|k| k.strip_prefix("agent:").map(str::to_string))
                    .collect()
            }),
            Err(RecvError::Lagged(_)) => None,
            Err(RecvError::Closed) => return,
        };
        refresh_agents(&inner, agents);
        let runs = inner.runs.lock().unwrap_or_else(|e| e.into_inner());
        match batch {
            Ok(change) => match &change.streams {
                Some(streams) => {
                    for key in streams {
                        let Ok(id) = key.parse::<uuid::Uuid>() else {
                            continue;
                        };
                        if let Some(h) = runs.get(&RunId(id)) {
                            let _ = h.tx.send(Msg::Refresh);
                        }
                    }
                }
                None => {
                    for h in runs.values() {
                        let _ = h.tx.send(Msg::Refresh);
                    }
                }
            },
            // Fell behind: every actor looks.
            Err(RecvError::Lagged(_)) => {
                for h in runs.values() {
                    let _ = h.tx.send(Msg::Refresh);
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Fold into this engine's circuit breakers what other processes appended
/// to the streams of `agents` (`None`: of every agent this engine knows),
/// in the background, under the agents' lock (as an attempt's outcome
/// does). A breaker that changes wakes the runs waiting on it
/// (`Capacity::apply_agent`).
fn refresh_agents(inner: &Arc<Inner>, agents: Option<Vec<String>>) {
    let agents = match agents {
        Some(a) if a.is_empty() => return,
        Some(a) => a,
        None => inner
            .capacity
            .agents()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect(),
    };
    if agents.is_empty() {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let mut heads = inner.agent_heads.lock().await;
        for agent in agents {
            if let Err(e) = inner.sync_agent(&agent, &mut heads) {
                tracing::warn!(agent, error = %e, "cannot read the agent's stream");
            }
        }
    });
}

/// Stop `run`'s actor (its attempts are killed, nothing is recorded: the
/// new holder records them abandoned). The lease stays in `held` until the
/// actor has ended, so that any write the actor still tries carries the
/// lost epoch and is refused ([`LeaseOp::Hold`]), never written unfenced.
fn lost(inner: &Inner, run: RunId) {
    if let Some(h) = inner
        .runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&run)
    {
        let _ = h.tx.send(Msg::Shutdown);
    }
}

/// Add the lease operations of a write to `run` to `req`.
pub(crate) fn fence(
    inner: &Inner,
    req: &mut WriteRequest,
    run: RunId,
    creating: bool,
    terminal: bool,
) {
    if let Some(leases) = &inner.leases {
        req.leases.extend(leases.ops(run, creating, terminal));
    }
}

impl super::engine::Engine {
    /// Whether this engine may execute `run` now: always on redb; on a
    /// shared database when it holds the run's lease or takes it now (the
    /// lease was free or expired). `false`: a live worker holds it, or
    /// this engine executes nothing (`--no-worker`).
    ///
    /// Errors: storage errors of the claim.
    pub(crate) fn take_lease(&self, run: RunId) -> Result<bool, super::engine::EngineError> {
        let Some(leases) = &self.inner.leases else {
            return Ok(true);
        };
        if leases.epoch(run).is_some() {
            return Ok(true);
        }
        if !leases.executes {
            return Ok(false);
        }
        let key = run.stream().key();
        let claimed = self.inner.store.claim_leases(
            &leases.owner,
            1,
            leases.ttl_ms,
            Some(vec![key.clone()]),
        )?;
        match claimed.into_iter().find(|(r, _)| *r == key) {
            Some((_, epoch)) => {
                leases.insert(run, epoch);
                self.inner.ensure_heartbeat();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A command on a run another worker executes: decide it on the run's
    /// stored state (nothing starts here) and append its events with
    /// optimistic concurrency, again on a conflict; the holder's actor
    /// folds them (`Msg::Refresh`) and acts — kills the attempts of a
    /// canceled run, starts what a signal or a resume allows.
    ///
    /// Errors: unknown run; [`crate::decide::Rejected`] when the command
    /// does not apply; storage errors.
    pub(crate) async fn control_remote(
        &self,
        run: RunId,
        cmd: crate::decide::Command,
    ) -> Result<(), super::engine::EngineError> {
        let mut tries = 0;
        loop {
            let state = self.state(run)?;
            match self
                .inner
                .commit(
                    &state,
                    vec![cmd.clone()],
                    Vec::new(),
                    super::commit::Deciding::Offline,
                )
                .await
            {
                Err(super::engine::EngineError::Store(chronicle_store::StoreError::Conflict {
                    ..
                })) if tries < 16 => tries += 1,
                r => return r.map(|_| ()),
            }
        }
    }

    /// True on a shared database (PostgreSQL), where runs are leased.
    pub fn is_shared(&self) -> bool {
        self.inner.leases.is_some()
    }

    /// This engine's worker id on a shared database (`HOST/PID/RANDOM`).
    pub fn worker_id(&self) -> Option<&str> {
        self.inner.leases.as_ref().map(|l| l.owner.as_str())
    }

    /// Worker mode on a shared database: claim free and expired leases and
    /// execute those runs ([`Self::recover_runs`]), again whenever a run is
    /// offered to this worker or to every worker (the live feed:
    /// LISTEN/NOTIFY) and at least every second (a lease that expires
    /// notifies no one, and an offer may name a worker that died). The
    /// worker registers itself in the store's directory of live workers
    /// with its spare capacity ([`chronicle_store::Store::register_worker`]),
    /// renewed each third of the lease and whenever it becomes full or no
    /// longer full; named by an offer while full, it wakes every worker
    /// instead. Runs until the task is aborted ([`Self::unregister_worker`]
    /// then). Does nothing on redb (`serve` recovers once at start), nor
    /// for an engine that does not execute (`--no-worker`).
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let Some(leases) = engine.inner.leases.as_ref() else {
                return;
            };
            // Other processes' commands and agents' circuits are followed
            // from now on, before any run is claimed.
            engine.inner.ensure_heartbeat();
            if !leases.executes {
                return; // an API node started with --no-worker claims nothing
            }
            let mut changes = engine.inner.store.subscribe_changes();
            let mut registered: Option<(std::time::Instant, bool)> = None;
            loop {
                match engine.recover_runs(None).await {
                    Ok(r) if !r.resumed.is_empty() || !r.quarantined.is_empty() => {
                        tracing::info!(
                            claimed = r.resumed.len() + r.quarantined.len(),
                            abandoned = r.attempts_abandoned,
                            "claimed runs"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot claim runs"),
                }
                engine.register_worker(&mut registered).await;
                // Another process offered runs to this worker or to every
                // worker (its notification says so).
                let wake = async {
                    loop {
                        match changes.recv().await {
                            Ok(change) if change.offers => match change.offered_to.as_deref() {
                                None => return,
                                Some(named) if named != leases.owner => {}
                                Some(_) if leases.count() < leases.max_held => return,
                                Some(_) => {
                                    // Full: every worker is woken instead.
                                    let store = engine.inner.store.clone();
                                    let passed = tokio::task::spawn_blocking(move || {
                                        store.announce_offers()
                                    })
                                    .await;
                                    if let Ok(Err(e)) = passed {
                                        tracing::warn!(error = %e, "cannot pass an offer on to the other workers");
                                    }
                                }
                            },
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                                std::future::pending::<()>().await
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = wake => {}
                }
            }
        })
    }

    /// Register this worker in the store's directory of live workers when
    /// `registered` (when it last did, and whether it was full then) is
    /// unset, a third of its life old, or no longer says whether it is
    /// full. A failure is logged and tried again at the next call.
    async fn register_worker(&self, registered: &mut Option<(std::time::Instant, bool)>) {
        let Some(leases) = &self.inner.leases else {
            return;
        };
        // Live for a lease, and at least 3 s: the worker's loop, which
        // renews it each third of that, turns at least once a second (a
        // shorter life would let the registration lapse between turns).
        let life_ms = leases.ttl_ms.max(3_000);
        let held = leases.count();
        let full = held >= leases.max_held;
        let due = match registered {
            None => true,
            Some((at, was_full)) => {
                *was_full != full || at.elapsed() >= Duration::from_millis(life_ms / 3)
            }
        };
        if !due {
            return;
        }
        let (store, owner) = (self.inner.store.clone(), leases.owner.clone());
        let spare = leases.max_held.saturating_sub(held);
        match tokio::task::spawn_blocking(move || store.register_worker(&owner, life_ms, spare))
            .await
        {
            Ok(Ok(())) => *registered = Some((std::time::Instant::now(), full)),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot register this worker"),
            Err(_) => {}
        }
    }

    /// Remove this worker from the store's directory of live workers (it
    /// stops claiming: call after aborting [`Self::spawn_worker`]'s task),
    /// so that no offer names it. A failure is logged — as is the rare
    /// renewal the aborted task had already sent, which may land after the
    /// removal: offers may then name it until its registration expires
    /// (a lease, at least 3 s), each delayed by up to the other workers'
    /// poll (a second).
    pub async fn unregister_worker(&self) {
        let Some(leases) = &self.inner.leases else {
            return;
        };
        let (store, owner) = (self.inner.store.clone(), leases.owner.clone());
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || store.unregister_worker(&owner)).await
        {
            tracing::warn!(error = %e, "cannot remove this worker from the live workers");
        }
    }
}
