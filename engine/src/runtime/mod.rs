//! The runtime: a thin loop around the pure core. Each active run is
//! driven by one actor task (`actor.rs`): it takes commands (control
//! commands, attempt results, timers), calls `decide`, appends the events
//! through the store's group commit and waits until they are durable,
//! folds them, and only then performs the effects the new state asks for
//! (write-ahead).

mod actor;
mod agent_slots;
mod builder;
pub mod capacity;
mod child;
mod commit;
mod control;
mod engine;
pub mod exec;
mod health;
mod leases;
pub use leases::DEFAULT_LEASE_MS;
pub mod index;
pub mod metrics;
pub mod processes;
mod recovery;
mod schedules;
mod shared;
pub mod trace;
mod waits;

pub use builder::{EngineBuilder, IdSource};
pub use engine::{Engine, EngineError};
pub use exec::function::{FunctionCall, FunctionError};
pub use index::RunSummary;
pub use recovery::{NotRecovered, RecoveryReport};
pub use schedules::NewSchedule;
pub use shared::{decode_error, fold_envelope};
