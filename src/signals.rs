//! SIGINT and SIGTERM, the two ways a person or a supervisor stops a
//! command: each command that runs for a while waits on [`StopSignals`].

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::CliError;

/// Listening for SIGINT and SIGTERM (from creation on).
pub struct StopSignals {
    int: Signal,
    term: Signal,
}

impl StopSignals {
    /// Start listening. Errors: the signal handlers cannot be installed
    /// (exit 3).
    pub fn new() -> Result<Self, CliError> {
        let listen = |kind: SignalKind| {
            signal(kind).map_err(|e| CliError::storage(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    /// The next stop signal: its name and the exit code a command it
    /// stopped returns (128 + the signal's number).
    pub async fn recv(&mut self) -> (&'static str, u8) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", 130),
            _ = self.term.recv() => ("SIGTERM", 143),
        }
    }
}
