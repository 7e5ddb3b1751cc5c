//! Typed ids ([`chronicle_core::ids`]) and the log streams they name.

pub use chronicle_core::ids::*;

use chronicle_store::{StoreError, StreamId};

/// The log stream of a run (its UUID).
pub trait RunStream {
    /// The run's stream in the log.
    fn stream(self) -> StreamId;
}

impl RunStream for RunId {
    fn stream(self) -> StreamId {
        StreamId::Run(self.0)
    }
}

/// The stream of an agent's circuit-breaker history: `agent:NAME`.
///
/// Errors: [`StoreError::InvalidStream`] for a name over the store's limit.
pub fn agent_stream(name: &str) -> Result<StreamId, StoreError> {
    StreamId::named(format!("agent:{name}"))
}
