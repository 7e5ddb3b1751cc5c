//! [`Engine`]: the library API — build it, start runs, read their state;
//! controlling and waiting for runs is in `control.rs`, recovery after a
//! crash in `recovery.rs`.

use crate::ids::RunStream;
use std::sync::Arc;

use chronicle_store::{Clock, IndexOp, RawEnvelope, Seq, Store, StoreError};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::actor::RunActor;
use super::commit::{Deciding, Decision};
use super::index::{IDEMPOTENCY, RUNS, RunSummary};
use crate::decide::{Command, Rejected};
use crate::event::RunEvent;
use crate::ids::RunId;
use crate::model::Workflow;
use crate::state::{RunState, TransitionError, evolve};

use super::shared::{Inner, RunHandle, fold_envelope};

/// Errors of the engine API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The log failed (locked, corrupt, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No run has this id (or prefix).
    #[error("no run {0} in this database (see `chronicle list`)")]
    UnknownRun(String),
    /// A prefix that matches several runs.
    #[error("run prefix {0} is ambiguous: it matches {1} runs; give more characters")]
    AmbiguousRun(String, usize),
    /// The command does not apply.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// A history that does not fold.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Secrets the workflow declares are not set (neither given to the
    /// builder nor in the environment): the run is not created.
    #[error(
        "the workflow declares secret(s) {0} but they are not set; set them in the environment (export NAME=...) before starting the run"
    )]
    MissingSecrets(String),
    /// An idempotency key already names a run of another workflow or
    /// input: nothing is created.
    #[error(
        "idempotency key {key:?} was used for run {run} with a different workflow or input; nothing was created"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// The run it names.
        run: RunId,
    },
    /// The run's actor stopped (storage failure).
    #[error("the run {0} stopped: {1}")]
    Stopped(RunId, String),
    /// A schedule that cannot be created or changed as asked.
    #[error("{0}")]
    Schedule(String),
    /// No schedule of this name.
    #[error("no schedule named {0} (see `chronicle schedule list`)")]
    UnknownSchedule(String),
    /// A callback token no step was ever given.
    #[error("no callback with this token: it was never issued by this database")]
    UnknownCallback,
    /// A callback whose signature does not verify.
    #[error(
        "the callback's signature does not verify: send Chronicle-Signature: sha256=HEX, the HMAC-SHA256 of the body keyed by the secret {0}"
    )]
    BadSignature(String),
}

/// The embedded engine. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), chronicle_engine::runtime::EngineError> {
/// use chronicle_engine::runtime::EngineBuilder;
/// let engine = EngineBuilder::new().db("chronicle.redb").build()?;
/// engine.recover().await?;
/// let wf = chronicle_engine::model::load_file("examples/log-audit.yaml".as_ref()).unwrap();
/// let run = engine.start(wf, serde_json::json!({}), None).await?;
/// let state = engine.wait(run).await?;
/// println!("{}", state.status.as_str());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store)
            .finish()
    }
}

impl Engine {
    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Create a run of `workflow` with `input` and start it. With an
    /// `idempotency_key` already used for the same workflow and input,
    /// returns that run instead (nothing is written).
    ///
    /// Errors: [`EngineError::MissingSecrets`] when a declared secret is
    /// not set, [`EngineError::IdempotencyKeyReused`] when the key's run
    /// has another workflow or input (nothing is written either way);
    /// storage errors; the definition is expected to be validated.
    pub async fn start(
        &self,
        workflow: Workflow,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<RunId, EngineError> {
        Ok(self.submit(workflow, input, idempotency_key).await?.0)
    }

    /// [`Engine::start`], also saying whether the run is new (`true`) or
    /// the one its idempotency key created before (`false`).
    pub async fn submit(
        &self,
        workflow: Workflow,
        input: Value,
        idempotency_key: Option<String>,
    ) -> Result<(RunId, bool), EngineError> {
        self.submit_traced(workflow, input, idempotency_key, None)
            .await
    }

    /// [`Engine::submit`] as part of the trace `trace_id` (32 hex digits,
    /// e.g. from a request's `traceparent`); without one the run's trace
    /// is its run id. Either is recorded in `RunCreated`, and every process
    /// that executes the run continues that trace.
    pub async fn submit_traced(
        &self,
        workflow: Workflow,
        input: Value,
        idempotency_key: Option<String>,
        trace_id: Option<String>,
    ) -> Result<(RunId, bool), EngineError> {
        self.submit_with(workflow, input, idempotency_key, trace_id, None)
            .await
    }

    /// Start the child run of a `workflow:` step (its idempotency key is
    /// `PARENT_RUN:STEP`, so a retry after a crash finds the same child).
    /// The child's `RunCreated` names its parent; it joins the parent's
    /// trace.
    ///
    /// Errors: as [`Engine::submit`].
    pub async fn submit_child(
        &self,
        workflow: Workflow,
        input: Value,
        parent: crate::event::ParentRef,
        trace_id: Option<String>,
    ) -> Result<(RunId, bool), EngineError> {
        let key = crate::ids::idempotency_key(parent.run_id, &parent.step);
        self.submit_with(workflow, input, Some(key), trace_id, Some(parent))
            .await
    }

    async fn submit_with(
        &self,
        workflow: Workflow,
        input: Value,
        idempotency_key: Option<String>,
        trace_id: Option<String>,
        parent: Option<crate::event::ParentRef>,
    ) -> Result<(RunId, bool), EngineError> {
        let missing = self.inner.missing_secrets(&workflow.secrets);
        if !missing.is_empty() {
            return Err(EngineError::MissingSecrets(missing.join(", ")));
        }
        // Only a keyed request is compared with the run its key names.
        let sha = idempotency_key.as_ref().map(|_| workflow.sha256());
        let sha = sha.as_deref().unwrap_or_default();
        if let Some(k) = &idempotency_key
            && let Some(existing) = self.inner.store.index_get(IDEMPOTENCY, k)?
        {
            let run = parse_run_value(&existing)?;
            return self.same_request(k, run, sha, &input).map(|r| (r, false));
        }
        let run_id = self.inner.new_run_id();
        let seed = run_id.0.as_u128() as u64;
        let create = Command::Create {
            run_id,
            workflow: Arc::new(workflow),
            input: input.clone(),
            idempotency_key: idempotency_key.clone(),
            seed,
            trace_id: Some(
                trace_id
                    .filter(|t| super::trace::parse_trace_id(t).is_some())
                    .unwrap_or_else(|| super::trace::trace_id(run_id).to_string()),
            ),
            parent,
        };
        let mut index = Vec::new();
        if let Some(k) = &idempotency_key {
            index.push(IndexOp::Insert {
                index: IDEMPOTENCY.into(),
                key: k.clone(),
                value: run_id.to_string().into_bytes(),
            });
        }
        match self
            .begin(RunState::default(), vec![create, Command::Start], index)
            .await
        {
            Ok(_) => Ok((run_id, true)),
            Err(EngineError::Store(StoreError::IndexConflict { existing, key, .. })) => {
                let run = parse_run_value(&existing)?;
                self.same_request(&key, run, sha, &input)
                    .map(|r| (r, false))
            }
            Err(e) => Err(e),
        }
    }

    /// `run` when it was created with workflow `sha` and `input`, else
    /// [`EngineError::IdempotencyKeyReused`].
    fn same_request(
        &self,
        key: &str,
        run: RunId,
        sha: &str,
        input: &Value,
    ) -> Result<RunId, EngineError> {
        let state = self.state(run)?;
        if state.workflow_sha256 == sha && &state.input == input {
            Ok(run)
        } else {
            Err(EngineError::IdempotencyKeyReused {
                key: key.to_string(),
                run,
            })
        }
    }

    /// Start a run whose first event is given (a fork): append it with
    /// `RunStarted` and drive it.
    pub async fn start_from(
        &self,
        first: RunEvent,
        extra_index: Vec<IndexOp>,
    ) -> Result<RunId, EngineError> {
        let run_id = match &first {
            RunEvent::RunForked { run_id, .. } | RunEvent::RunCreated { run_id, .. } => *run_id,
            _ => {
                return Err(Rejected::BadFork(
                    "the first event must be RunCreated or RunForked".into(),
                )
                .into());
            }
        };
        let now = self.inner.clock.peek();
        let state = evolve(RunState::default(), crate::ids::Seq(1), now, &first)?;
        // Append the first event alone, then start like any new run.
        let d = Decision {
            events: vec![first],
            next: state,
            now,
        };
        let req = self.inner.request(crate::ids::Seq(0), &d, extra_index);
        self.inner.store.write(req).await?;
        self.inner.clock.now(); // one tick of a manual clock per durable decision
        super::metrics::observe_commit(&d.next, &d.events);
        let state = d.next;
        self.begin(state, vec![Command::Start], vec![]).await?;
        Ok(run_id)
    }

    /// A new run id from the engine's id source.
    pub fn new_run_id(&self) -> RunId {
        self.inner.new_run_id()
    }

    /// Decide `commands` on `state`, append them in one commit, and spawn
    /// the run's actor.
    pub(crate) async fn begin(
        &self,
        state: RunState,
        commands: Vec<Command>,
        index: Vec<IndexOp>,
    ) -> Result<(Vec<RunEvent>, RunState), EngineError> {
        if self.inner.leases.as_ref().is_some_and(|l| !l.executes) {
            // Created for the workers: nothing starts here.
            let d = self
                .inner
                .commit(&state, commands, index, Deciding::Offline)
                .await?;
            return Ok((d.events, d.next));
        }
        let d = self
            .inner
            .commit(&state, commands, index, Deciding::WithCapacity)
            .await?;
        self.spawn_actor(d.next.clone());
        Ok((d.events, d.next))
    }

    pub(crate) fn spawn_actor(&self, state: RunState) -> RunHandle {
        let run_id = state.run_id.expect("a created run has an id");
        self.inner.ensure_heartbeat();
        super::health::ensure_loops(&self.inner, state.wf());
        let (tx, rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(Arc::new(state.clone()));
        let handle = RunHandle {
            tx: tx.clone(),
            state: state_rx,
        };
        self.inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run_id, handle.clone());
        let actor = RunActor::new(self.inner.clone(), state, rx, tx, state_tx);
        tokio::spawn(actor.run());
        handle
    }

    /// The handle of an active run, opening an actor for a run left by
    /// another process (it is recovered first).
    pub(crate) async fn handle(&self, run: RunId) -> Result<RunHandle, EngineError> {
        if let Some(h) = self
            .inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .cloned()
            && !h.tx.is_closed()
        {
            return Ok(h);
        }
        let state = self.state(run)?;
        if state.status.is_terminal() {
            let (tx, _) = mpsc::unbounded_channel();
            let (_, rx) = watch::channel(Arc::new(state));
            return Ok(RunHandle { tx, state: rx });
        }
        if !self.take_lease(run)? {
            return Err(EngineError::Stopped(
                run,
                "another worker executes it".into(),
            ));
        }
        self.recover_run(state).await?;
        self.inner
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&run)
            .cloned()
            .ok_or_else(|| EngineError::Stopped(run, "its actor ended at once".into()))
    }

    /// Fold a run's whole stream from the log.
    ///
    /// Errors: [`EngineError::UnknownRun`] when the stream is empty,
    /// decode or transition errors when the history does not fold.
    pub fn state(&self, run: RunId) -> Result<RunState, EngineError> {
        let mut state = RunState::default();
        let mut err = None;
        self.inner
            .store
            .for_each_in_stream(&run.stream(), Seq(1), None, |env| {
                if err.is_none() {
                    match fold_envelope(std::mem::take(&mut state), &env) {
                        Ok(s) => state = s,
                        Err(e) => err = Some(e),
                    }
                }
                Ok(())
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        if state.run_id.is_none() {
            return Err(EngineError::UnknownRun(run.to_string()));
        }
        Ok(state)
    }

    /// A feed of committed envelopes (all streams; filter by
    /// `envelope.stream`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<[RawEnvelope]>> {
        self.inner.store.subscribe()
    }

    /// Every run in the index.
    pub fn list(&self) -> Result<Vec<RunSummary>, EngineError> {
        let rows = self.inner.store.index_scan(RUNS, "")?;
        rows.into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| {
                    EngineError::Store(StoreError::Corruption {
                        path: self.inner.store.path().to_path_buf(),
                        message: format!("run index entry {k} is unreadable: {e}"),
                    })
                })
            })
            .collect()
    }

    /// Resolve a run id or a unique prefix of one.
    pub fn resolve_run(&self, text: &str) -> Result<RunId, EngineError> {
        let t = text.trim().to_ascii_lowercase();
        if let Ok(id) = t.parse::<RunId>() {
            return Ok(id);
        }
        if t.is_empty() {
            return Err(EngineError::UnknownRun(text.to_string()));
        }
        let rows = self.inner.store.index_scan(RUNS, &t)?;
        match rows.len() {
            0 => Err(EngineError::UnknownRun(text.to_string())),
            1 => rows[0]
                .0
                .parse()
                .map_err(|_| EngineError::UnknownRun(text.to_string())),
            n => Err(EngineError::AmbiguousRun(text.to_string(), n)),
        }
    }
}

pub(crate) fn parse_run_value(v: &[u8]) -> Result<RunId, EngineError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EngineError::UnknownRun(String::from_utf8_lossy(v).into_owned()))
}
