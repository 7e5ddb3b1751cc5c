//! The store's metrics (the `metrics` facade; `chronicle serve` exports
//! them as Prometheus text at `/metrics`). Nothing is recorded until
//! [`set_enabled`] turns them on: a process with no exporter pays one
//! relaxed atomic load per commit.
//!
//! | name | type | what |
//! | --- | --- | --- |
//! | `chronicle_store_commit_seconds` | histogram | one group commit: validate, encode, the durable journal write (or redb commit) |
//! | `chronicle_store_group_size` | histogram | write requests per group commit |
//! | `chronicle_store_events_total` | counter | events appended |
//! | `chronicle_store_queue_depth` | gauge | write requests waiting for the writer (read at each commit) |
//! | `chronicle_store_checkpoint_seconds` | histogram | one checkpoint into redb |

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turn recording on or off for the whole process (the engine's metrics
/// follow the same switch).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether metrics are recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A group commit of `requests` requests and `events` events took `took`.
pub(crate) fn group_committed(requests: usize, events: usize, took: Duration) {
    if !enabled() {
        return;
    }
    metrics::histogram!("chronicle_store_commit_seconds").record(took.as_secs_f64());
    metrics::histogram!("chronicle_store_group_size").record(requests as f64);
    metrics::counter!("chronicle_store_events_total").increment(events as u64);
}

/// `queued` write requests wait for the writer (after a group commit).
pub(crate) fn queue_depth(queued: usize) {
    if enabled() {
        metrics::gauge!("chronicle_store_queue_depth").set(queued as f64);
    }
}

/// A checkpoint took `took`.
pub(crate) fn checkpointed(took: Duration) {
    if enabled() {
        metrics::histogram!("chronicle_store_checkpoint_seconds").record(took.as_secs_f64());
    }
}
