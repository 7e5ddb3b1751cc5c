//! What every run actor of an engine shares.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chronicle_store::{Clock, NewEvent, RawEnvelope, Seq, Store, StoreError};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::actor::Msg;
use super::capacity::Capacity;
use super::exec::function::{Function, FunctionExecutor};
use super::exec::http::HttpExecutor;
use super::exec::process::ProcessExecutor;
use super::exec::{Dispatcher, OutputSink, Secrets};
use crate::event::{AgentEvent, RunEvent, SCHEMA_VERSION};
use crate::ids::{RunId, agent_stream};
use crate::state::{RunState, evolve};

use super::builder::IdSource;
use super::engine::EngineError;

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: IdSource,
    pub(crate) capacity: Arc<Capacity>,
    pub(crate) functions: BTreeMap<String, Function>,
    pub(crate) outputs: Option<PathBuf>,
    pub(crate) workdir: PathBuf,
    pub(crate) runs: Mutex<HashMap<RunId, RunHandle>>,
    /// Where callbacks reach this engine (set by `serve`).
    pub(crate) callback_base: std::sync::OnceLock<String>,
    /// One schedule writer at a time in this engine.
    pub(crate) schedule_lock: tokio::sync::Mutex<()>,
    /// Each schedule's fold and head seq, by stream name.
    pub(crate) schedule_folds:
        Mutex<HashMap<String, (crate::schedule::ScheduleState, chronicle_store::Seq)>>,
    /// Runs being recovered right now (so two callers never recover one
    /// run twice: a child's parent and the engine's recovery, say).
    pub(crate) recovering: Mutex<std::collections::HashSet<RunId>>,
    pub(crate) agent_heads: tokio::sync::Mutex<HashMap<String, Seq>>,
    /// The agent stream's seq each agent's breaker (in `capacity`) has
    /// folded through: the head a decision that starts attempts on the
    /// agent expects its stream at (see `commit::breaker_checks`). Read
    /// without the agents' lock.
    pub(crate) agent_folded: Mutex<HashMap<String, Seq>>,
    pub(crate) http: super::exec::http::LazyClient,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) snapshot_every: u64,
    pub(crate) parent_death_signal: bool,
    /// Kills the attempts' process groups if this process dies.
    pub(crate) watchdog: super::processes::Watchdog,
    /// Agents whose health check loop runs in this engine.
    pub(crate) health_loops: Mutex<std::collections::HashSet<String>>,
    /// The process ledger, built at the first dispatcher (it reads this
    /// boot's id and this process's start time: once, not per run).
    pub(crate) ledger: std::sync::OnceLock<super::processes::ProcessLedger>,
    /// Leases of the runs this engine executes, on a shared database
    /// (PostgreSQL); `None` on redb.
    pub(crate) leases: Option<super::leases::Leases>,
}

#[derive(Clone)]
pub(crate) struct RunHandle {
    pub tx: mpsc::UnboundedSender<Msg>,
    pub state: watch::Receiver<Arc<RunState>>,
}

impl Inner {
    /// The secrets a workflow declares: builder values first, then the
    /// environment.
    pub fn secrets_for(&self, names: &[String]) -> Secrets {
        Secrets::new(names.iter().filter_map(|n| {
            self.secrets
                .get(n)
                .cloned()
                .or_else(|| std::env::var(n).ok())
                .map(|v| (n.clone(), v))
        }))
    }

    /// The declared secrets that have no value (builder or environment).
    pub fn missing_secrets(&self, names: &[String]) -> Vec<String> {
        let set = self.secrets_for(names);
        names
            .iter()
            .filter(|n| !set.map().contains_key(*n))
            .cloned()
            .collect()
    }

    pub fn dispatcher(&self, secrets: Secrets) -> Dispatcher {
        let sink = OutputSink {
            dir: self.outputs.clone(),
            secrets,
        };
        Dispatcher {
            process: ProcessExecutor {
                sink: sink.clone(),
                ledger: (!self.store.is_read_only()).then(|| {
                    self.ledger
                        .get_or_init(|| {
                            super::processes::ProcessLedger::new(&self.store, self.watchdog.clone())
                        })
                        .clone()
                }),
                parent_death_signal: self.parent_death_signal,
            },
            http: HttpExecutor {
                client: self.http.clone(),
                sink: sink.clone(),
            },
            function: FunctionExecutor {
                functions: self.functions.clone(),
                sink: Some(sink),
            },
        }
    }

    pub fn forget(&self, run: RunId, terminal: bool) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
        self.drop_lease(run, terminal);
    }

    pub(crate) fn new_run_id(&self) -> RunId {
        let now = self.clock.now();
        let secs = now.timestamp().max(0) as u64;
        let nanos = now.timestamp_subsec_nanos();
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos);
        match &self.ids {
            IdSource::V7 => RunId(Uuid::new_v7(ts)),
            IdSource::Sequential(n) => {
                // UUID v7 layout with the counter in place of random bits.
                let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                let mut tail = [0u8; 10];
                tail[2..].copy_from_slice(&k.to_be_bytes());
                let ms = (secs * 1000) + u64::from(nanos / 1_000_000);
                RunId(uuid::Builder::from_unix_timestamp_millis(ms, &tail).into_uuid())
            }
        }
    }

    /// The agent's stream head as this engine knows it (`heads`, the
    /// agents' lock held), reading it when unknown; on a shared database
    /// the events other workers appended since are folded into the
    /// agent's breaker first, so a decision sees every worker's outcomes.
    ///
    /// Errors: storage errors; an agent event that does not decode.
    pub(crate) fn sync_agent(
        &self,
        agent: &str,
        heads: &mut HashMap<String, Seq>,
    ) -> Result<Seq, EngineError> {
        let stream = agent_stream(agent)?;
        let known = heads.get(agent).copied();
        let shared = self.leases.is_some();
        let head = match (known, shared) {
            (Some(s), false) => return Ok(s),
            (None, false) => self
                .store
                .head(&stream)?
                .map(|h| h.last_seq)
                .unwrap_or(Seq(0)),
            (known, true) => {
                let from = known.unwrap_or(Seq(0));
                let new = self.store.read_stream(&stream, Seq(from.0 + 1))?;
                match known {
                    // Known: fold what others appended since.
                    Some(_) => {
                        let events: Vec<AgentEvent> = new
                            .iter()
                            .map(|e| e.decode::<AgentEvent>())
                            .collect::<Result<_, _>>()?;
                        self.capacity.apply_agent(agent, &events);
                    }
                    // Unknown (a conflict reset it): fold the whole stream.
                    None => self.capacity.load_breaker(agent, breaker_of(&new)?),
                }
                new.last().map(|e| e.seq).unwrap_or(from)
            }
        };
        heads.insert(agent.to_string(), head);
        self.folded_through(agent, head);
        Ok(head)
    }

    /// The breaker of `agent` reflects its stream through `seq`.
    pub(crate) fn folded_through(&self, agent: &str, seq: Seq) {
        let mut folded = self.agent_folded.lock().unwrap_or_else(|e| e.into_inner());
        let at = folded.entry(agent.to_string()).or_insert(seq);
        *at = (*at).max(seq);
    }

    /// Fold into `agent`'s breaker what its stream got after the seq it
    /// folded through, without the agents' lock (a decision holding it may
    /// call this): events folded twice, in order, leave a breaker as once
    /// (each sets the fields it names).
    ///
    /// Errors: storage errors; an agent event that does not decode.
    pub(crate) fn refresh_breaker(&self, agent: &str) -> Result<(), EngineError> {
        let stream = agent_stream(agent)?;
        let from = self
            .agent_folded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .copied()
            .unwrap_or(Seq(0));
        let new = self.store.read_stream(&stream, Seq(from.0 + 1))?;
        if let Some(last) = new.last() {
            let events: Vec<AgentEvent> = new
                .iter()
                .map(|e| e.decode::<AgentEvent>())
                .collect::<Result<_, _>>()?;
            self.capacity.apply_agent(agent, &events);
            self.folded_through(agent, last.seq);
        }
        Ok(())
    }

    /// Append an agent's circuit events to its stream.
    pub async fn append_agent(
        &self,
        agent: &str,
        events: Vec<AgentEvent>,
    ) -> Result<(), EngineError> {
        if events.is_empty() {
            return Ok(());
        }
        let stream = agent_stream(agent)?;
        let mut heads = self.agent_heads.lock().await;
        let head = self.sync_agent(agent, &mut heads)?;
        let now = self.clock.now();
        let evs = events
            .iter()
            .map(|e| NewEvent {
                recorded_at: Some(now),
                ..NewEvent::json(SCHEMA_VERSION, e).expect("agent events serialize")
            })
            .collect();
        let out = self.store.append(stream, head, evs).await?;
        let head = out.last().map(|e| e.seq).unwrap_or(head);
        heads.insert(agent.to_string(), head);
        self.folded_through(agent, head);
        Ok(())
    }
}

/// The store's decode error for an envelope whose payload is not an event.
pub fn decode_error(env: &RawEnvelope, e: serde_json::Error) -> StoreError {
    StoreError::Decode {
        stream: env.stream.to_string(),
        seq: env.seq.0,
        message: e.to_string(),
    }
}

/// Decode and fold one envelope into `state`.
pub fn fold_envelope(state: RunState, env: &RawEnvelope) -> Result<RunState, EngineError> {
    let event = RunEvent::from_json(&env.payload).map_err(|e| decode_error(env, e))?;
    Ok(evolve(
        state,
        crate::ids::Seq(env.seq.0),
        env.recorded_at,
        &event,
    )?)
}

/// Encode run events for an append, stamped with the decision time.
pub(crate) fn encode(events: &[RunEvent], now: chrono::DateTime<chrono::Utc>) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent {
            recorded_at: Some(now),
            ..NewEvent::json(SCHEMA_VERSION, e).expect("run events serialize")
        })
        .collect()
}

/// An agent's circuit breaker folded from its stream's envelopes.
///
/// Errors: an agent event that does not decode.
pub(crate) fn breaker_of(envs: &[RawEnvelope]) -> Result<crate::circuit::Breaker, EngineError> {
    let mut breaker = crate::circuit::Breaker::default();
    for env in envs {
        breaker.apply(&env.decode::<AgentEvent>()?);
    }
    Ok(breaker)
}
