//! [`EngineBuilder`]: database, clock, ids, limits, functions, secrets.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use chronicle_store::{Clock, Seq, Store, StoreOptions, SystemClock};
use serde_json::Value;

use super::capacity::Capacity;
use super::exec::function::{Function, FunctionCall, FunctionError, FunctionFuture};

use super::engine::{Engine, EngineError};
use super::shared::Inner;

/// Where run ids come from.
#[derive(Debug)]
pub enum IdSource {
    /// UUID v7 from the engine's clock with random bits (production).
    V7,
    /// UUID v7 from the engine's clock with a counter instead of random
    /// bits (reproducible tests).
    Sequential(AtomicU64),
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    db: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    ids: IdSource,
    max_parallel: usize,
    functions: BTreeMap<String, Function>,
    workdir: Option<PathBuf>,
    store: Option<Store>,
    secrets: BTreeMap<String, String>,
    snapshot_every: u64,
    parent_death_signal: bool,
    watchdog: bool,
    lease_ms: u64,
    executes: bool,
    max_runs: usize,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            db: None,
            clock: Arc::new(SystemClock),
            ids: IdSource::V7,
            max_parallel: 256,
            functions: BTreeMap::new(),
            workdir: None,
            store: None,
            secrets: BTreeMap::new(),
            snapshot_every: 100,
            parent_death_signal: false,
            watchdog: true,
            lease_ms: super::leases::DEFAULT_LEASE_MS,
            executes: true,
            max_runs: 1024,
        }
    }
}

impl EngineBuilder {
    /// A builder with defaults: in memory unless [`Self::db`] is set,
    /// system clock, 256 parallel attempts.
    pub fn new() -> Self {
        Self::default()
    }
    /// Use the redb file at `path` (created if absent).
    pub fn db(mut self, path: impl AsRef<Path>) -> Self {
        self.db = Some(path.as_ref().to_path_buf());
        self
    }
    /// Ask the kernel to kill each attempt's leader process when the
    /// engine dies (`PR_SET_PDEATHSIG`), on top of recovery killing the
    /// recorded process groups. Default off: it makes each spawn a fork,
    /// ~3× the cost of a short step (README, "Benchmarks").
    pub fn parent_death_signal(mut self, on: bool) -> Self {
        self.parent_death_signal = on;
        self
    }
    /// Start the process watchdog (default on): a process that kills the
    /// attempts' process groups when the engine dies, before any
    /// `recover` (see `runtime::processes`). Off, only recovery kills what
    /// a crashed engine left.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }
    /// Use an already open store.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }
    /// Inject the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Inject the id source.
    pub fn ids(mut self, ids: IdSource) -> Self {
        self.ids = ids;
        self
    }
    /// At most `n` attempts at once in this engine (default 256).
    pub fn max_parallel(mut self, n: usize) -> Self {
        self.max_parallel = n.max(1);
        self
    }
    /// Working directory of command and shell steps (default: current).
    pub fn workdir(mut self, dir: impl AsRef<Path>) -> Self {
        self.workdir = Some(dir.as_ref().to_path_buf());
        self
    }
    /// Store a snapshot of a run's state every `n` events (default 100;
    /// 0 disables snapshots).
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = n;
        self
    }

    /// Provide the value of secret `name` (otherwise it is read from the
    /// engine's environment variable of that name).
    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.insert(name.to_string(), value.to_string());
        self
    }

    /// Register `f` as the function `name` (for `function: NAME` steps).
    pub fn function<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(FunctionCall) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, FunctionError>> + Send + 'static,
    {
        let f: Function = Arc::new(move |c| -> FunctionFuture { Box::pin(f(c)) });
        self.functions.insert(name.to_string(), f);
        self
    }

    /// On a shared database (PostgreSQL): how long a run's lease lasts
    /// unless renewed, milliseconds (default 10,000). A worker that stops
    /// renewing (killed, paused, cut off) loses its runs to another after
    /// this long.
    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.lease_ms = ms;
        self
    }

    /// Whether this engine executes runs (default `true`). `false` (an API
    /// node started with `--no-worker`, on PostgreSQL): the runs it
    /// creates are offered to the workers and nothing starts here.
    pub fn executes(mut self, on: bool) -> Self {
        self.executes = on;
        self
    }

    /// On a shared database: the most runs this engine holds (executes or
    /// keeps waiting) at once; claims stop there. Default 1,024.
    pub fn max_runs(mut self, n: usize) -> Self {
        self.max_runs = n;
        self
    }

    /// Open the database and build the engine. Does not recover: call
    /// [`Engine::recover`] to continue runs left by a previous process.
    ///
    /// Errors: [`EngineError::Store`] when the database cannot be opened.
    pub fn build(self) -> Result<Engine, EngineError> {
        let watchdog = super::processes::Watchdog::new(self.watchdog);
        if self.db.is_some() {
            // An engine opening a database file will run steps.
            watchdog.prestart();
        }
        let store = match (self.store, &self.db) {
            (Some(s), _) => s,
            (None, Some(p)) => Store::open(
                p,
                StoreOptions {
                    clock: self.clock.clone(),
                    ..StoreOptions::default()
                },
            )?,
            (None, None) => Store::in_memory(StoreOptions {
                clock: self.clock.clone(),
                ..StoreOptions::default()
            })?,
        };
        // Full outputs beside a database file; on a shared database they
        // stay in the log (a folder on one machine is not shared).
        let outputs = match store.is_postgres() {
            true => None,
            false => self.db.as_deref().map(chronicle_store::outputs_dir),
        };
        let leases = store
            .is_postgres()
            .then(|| super::leases::Leases::new(self.lease_ms, self.executes, self.max_runs));
        let workdir = match self.workdir {
            Some(w) => w,
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let capacity = Arc::new(Capacity::new(self.max_parallel));
        let agent_folded = load_breakers(&store, &capacity)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                clock: self.clock,
                ids: self.ids,
                capacity,
                functions: self.functions,
                outputs,
                workdir,
                runs: Mutex::new(HashMap::new()),
                callback_base: Default::default(),
                schedule_lock: Default::default(),
                schedule_folds: Default::default(),
                recovering: Mutex::new(Default::default()),
                agent_heads: tokio::sync::Mutex::new(HashMap::new()),
                agent_folded: Mutex::new(agent_folded),
                http: super::exec::http::LazyClient::default(),
                secrets: self.secrets,
                snapshot_every: self.snapshot_every,
                parent_death_signal: self.parent_death_signal,
                watchdog,
                ledger: Default::default(),
                health_loops: Default::default(),
                leases,
            }),
        })
    }
}

/// Fold every agent stream (`agent:NAME`) into its circuit breaker, so an
/// open circuit stays open across restarts; the seq each was folded
/// through, by agent.
fn load_breakers(store: &Store, capacity: &Capacity) -> Result<HashMap<String, Seq>, EngineError> {
    let mut folded = HashMap::new();
    for head in store.streams_with_prefix("agent:")? {
        let chronicle_store::StreamId::Named(name) = &head.stream else {
            continue;
        };
        let Some(agent) = name.strip_prefix("agent:") else {
            continue;
        };
        let envs = store.read_stream(&head.stream, Seq(1))?;
        capacity.load_breaker(agent, super::shared::breaker_of(&envs)?);
        if let Some(last) = envs.last() {
            folded.insert(agent.to_string(), last.seq);
        }
    }
    Ok(folded)
}
