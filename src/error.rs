//! Exit codes and the mapping of every error to one.
//!
//! 0 success; 1 a run ended other than succeeded, or verify found a
//! problem; 2 bad input or usage; 3 storage problem (a locked, damaged or
//! unreadable database, an event that does not decode, a stored history
//! that does not fold).

use chronicle_engine::model::DefinitionError;
use chronicle_engine::runtime::EngineError;
use chronicle_replay::ReplayError;
use chronicle_store::StoreError;

/// An error with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// Message for the user.
    pub message: String,
}

impl CliError {
    /// Bad input or usage (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
    /// Storage problem (exit 3).
    pub fn storage(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        if e.is_storage_problem() {
            Self::storage(e.to_string())
        } else {
            Self::input(e.to_string())
        }
    }
}

impl From<DefinitionError> for CliError {
    fn from(e: DefinitionError) -> Self {
        Self::input(e.to_string())
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(s) => s.into(),
            // The engine folds only histories read from its database: one
            // that does not fold is a damaged log.
            e @ EngineError::Transition(_) => Self::storage(e.to_string()),
            // A run whose actor stopped on a storage failure: exit 3, as
            // the server's `503 stopped` is.
            e @ EngineError::Stopped(..) => Self::storage(e.to_string()),
            other => Self::input(other.to_string()),
        }
    }
}

impl From<chronicle_server::Problem> for CliError {
    fn from(p: chronicle_server::Problem) -> Self {
        Self {
            code: p.exit_code,
            message: p.detail,
        }
    }
}

impl From<ReplayError> for CliError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Store(s) => s.into(),
            ReplayError::Engine(e) => e.into(),
            // From the database (a history file's problems are BadFile, or
            // are mapped by the command that read the file).
            e @ ReplayError::Transition(_) => Self::storage(e.to_string()),
            other => Self::input(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_run_exits_as_the_server_says() {
        let run = chronicle_engine::ids::RunId(uuid::Uuid::nil());
        let on_file = CliError::from(EngineError::Stopped(run, "x".into()));
        let via_server = CliError::from(chronicle_server::Problem::from(EngineError::Stopped(
            run,
            "x".into(),
        )));
        assert_eq!(on_file.code, via_server.code);
        assert_eq!(on_file.code, 3);
    }
}
