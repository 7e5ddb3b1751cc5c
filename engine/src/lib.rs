//! # chronicle-engine
//!
//! Chronicle's runtime: one actor per active run that appends what the
//! pure core decides ([`chronicle_core`], re-exported here as [`model`],
//! [`event`], [`state`], [`decide`], [`effects`], [`circuit`],
//! [`backoff`]), folds it, and performs the effects the new state asks
//! for — executors for commands, shell scripts, HTTP and Rust functions,
//! recovery after a crash, capacity and circuit breakers per agent — on
//! top of the log (`chronicle-store`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use chronicle_engine::model::parse_definition;
//! use chronicle_engine::runtime::EngineBuilder;
//!
//! let wf = parse_definition("hello.yaml", "name: hello\nsteps:\n  - id: greet\n    command: [echo, hi]\n").unwrap();
//! let engine = EngineBuilder::new().build().unwrap(); // in memory
//! let run = engine.start(wf, serde_json::json!({}), None).await.unwrap();
//! let state = engine.wait(run).await.unwrap();
//! assert_eq!(state.status.as_str(), "succeeded");
//! # }
//! ```

pub use chronicle_core::{backoff, circuit, decide, effects, event, schedule, state};

pub mod ids;
pub mod load;
pub mod runtime;

/// The workflow definition format ([`chronicle_core::model`]) and
/// [`load_file`](crate::load::load_file), which reads one from a file.
pub mod model {
    pub use crate::load::load_file;
    pub use chronicle_core::model::*;
}
