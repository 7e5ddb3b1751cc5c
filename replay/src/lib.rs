//! # chronicle-replay
//!
//! What makes Chronicle's histories useful after the fact:
//!
//! - [`rebuild`]: a run's state at its head, at any seq or any time, from
//!   the latest snapshot where one exists — always equal to a full fold;
//! - [`timeline`]: each event with its seq, time and what it changed;
//! - [`render`]: the state as a table for people;
//! - [`verify`]: hash chains, fold determinism against snapshots and the
//!   run index, per run;
//! - [`fork`]: a new run from any seq of another, with lineage both ways;
//! - [`export`]: histories as JSON Lines, and import that verifies first.
//!
//! Crash recovery itself is [`chronicle_engine::runtime::Engine::recover`].
//!
//! ```no_run
//! use chronicle_replay::rebuild::{Target, state_at};
//! # fn demo(store: &chronicle_store::Store, run: chronicle_engine::ids::RunId) -> Result<(), chronicle_replay::ReplayError> {
//! let state = state_at(store, run, Target::Seq(5))?;
//! println!("{}", chronicle_replay::render::render_state(&state));
//! # Ok(()) }
//! ```

pub mod export;
pub mod fork;
pub mod rebuild;
pub mod render;
pub mod timeline;
pub mod upgrade;
pub mod verify;

use chronicle_engine::runtime::EngineError;
use chronicle_engine::state::TransitionError;
use chronicle_store::StoreError;

/// Errors of replay operations.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A history that does not fold.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// No such run.
    #[error("no run {0} in this database (see `chronicle list`)")]
    UnknownRun(String),
    /// A seq or time outside the history.
    #[error("{0}")]
    OutOfRange(String),
    /// A history file that cannot be used.
    #[error("history file {file}: {message}")]
    BadFile {
        /// The file.
        file: String,
        /// What is wrong (with the line or seq).
        message: String,
    },
}
