//! # chronicle-core
//!
//! Chronicle's pure core: the definition format ([`model`]), the event
//! vocabulary ([`event`]), run state as a fold ([`state::evolve`]), the
//! decider where every rule lives ([`decide::decide`]), circuit breakers
//! ([`circuit`]), backoff ([`backoff`]) and the effects a state asks for
//! ([`effects`]).
//!
//! This crate does no I/O and reads no clock — it has no async runtime, no
//! HTTP client, no store and reads no file (the runtime in
//! `chronicle-engine` reads files and hands the core their text): time,
//! capacity and agent availability come in through [`decide::Ctx`],
//! randomness from the run's seed recorded in `RunCreated`. The same
//! inputs give the same events and the same state, live or replayed.
//!
//! ```
//! use chronicle_core::decide::{Command, Ctx, decide};
//! use chronicle_core::model::parse_definition;
//! use chronicle_core::state::{RunState, evolve};
//! use chronicle_core::ids::RunId;
//!
//! let wf = parse_definition("hello.yaml", "name: hello\nsteps:\n  - id: greet\n    command: [echo, hi]\n").unwrap();
//! let now = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
//! let ctx = Ctx::at(now);
//! let run = RunId(uuid::Uuid::from_u128(1));
//! let mut state = RunState::default();
//! let create = Command::Create { run_id: run, workflow: std::sync::Arc::new(wf), input: serde_json::json!({}), idempotency_key: None, seed: 7, trace_id: None, parent: None };
//! for cmd in [create, Command::Start] {
//!     for e in decide(&state, cmd, &ctx).unwrap() {
//!         let seq = state.seq + 1;
//!         state = evolve(state, seq, now, &e).unwrap();
//!     }
//! }
//! assert_eq!(state.steps["greet"].status.as_str(), "running");
//! ```

pub mod backoff;
pub mod circuit;
pub mod decide;
pub mod effects;
pub mod event;
pub mod ids;
pub mod model;
pub mod schedule;
pub mod state;
