//! The run index: a projection of every run's status, updated in the same
//! write transaction as the run's appends (index `runs`, key = run id,
//! value = JSON [`RunSummary`]); and the idempotency index (`idempotency`,
//! key = idempotency key, value = run id), inserted with `RunCreated`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::RunId;
use crate::state::{RunState, RunStatus};
use chronicle_store::IndexOp;

/// Index of runs.
pub const RUNS: &str = "runs";
/// Index of idempotency keys.
pub const IDEMPOTENCY: &str = "idempotency";
/// Index of callback tokens: SHA-256 (hex) of a token → its run id
/// (written with the `CallbackIssued` that records it).
pub const CALLBACKS: &str = "callbacks";
/// Index of forks: key `SOURCE_RUN/CHILD_RUN`.
pub const FORKS: &str = "forks";

/// One row of the run index (`chronicle list --json` prints these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run id.
    pub run_id: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// Status.
    pub status: RunStatus,
    /// Time of the first event.
    pub created_at: Option<DateTime<Utc>>,
    /// Time of the last event.
    pub updated_at: Option<DateTime<Utc>>,
    /// Seq of the last event.
    pub seq: u64,
    /// Idempotency key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Source run of a fork.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<RunId>,
    /// Why the run is quarantined or failed, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RunSummary {
    /// The summary of a state.
    pub fn of(state: &RunState) -> Option<Self> {
        let run_id = state.run_id?;
        Some(Self {
            run_id,
            workflow: state
                .workflow
                .as_ref()
                .map(|w| w.name.clone())
                .unwrap_or_default(),
            status: state.status,
            created_at: state.created_at,
            updated_at: state.updated_at,
            seq: state.seq.0,
            idempotency_key: state.idempotency_key.clone(),
            forked_from: state.lineage.as_ref().map(|l| l.forked_from),
            reason: match state.status {
                RunStatus::Quarantined => state.quarantine.as_ref().map(|q| q.reason.clone()),
                RunStatus::Failed => state.failure.clone(),
                _ => None,
            },
        })
    }

    /// The index write for this summary.
    pub fn put(&self) -> IndexOp {
        IndexOp::Put {
            index: RUNS.into(),
            key: self.run_id.to_string(),
            value: serde_json::to_vec(self).expect("a summary always serializes"),
        }
    }
}
