//! A run's state at its head, at a seq, or at a time; from the latest
//! snapshot at or before the target where one exists.

use chronicle_engine::event::RunEvent;
use chronicle_engine::ids::RunId;
use chronicle_engine::ids::RunStream;
use chronicle_engine::state::{RunState, evolve};
use chronicle_store::{RawEnvelope, Seq, Store};
use chrono::{DateTime, Utc};

use crate::ReplayError;

/// Where to stop folding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The last event.
    Head,
    /// Up to and including this seq.
    Seq(u64),
    /// Every event recorded at or before this time.
    Time(DateTime<Utc>),
}

/// Fold `envelopes` (one stream, ascending) onto `state` up to `target`.
pub fn fold_envelopes<'a>(
    mut state: RunState,
    envelopes: impl IntoIterator<Item = &'a RawEnvelope>,
    target: Target,
) -> Result<RunState, ReplayError> {
    for env in envelopes {
        if !within(env, target) {
            break;
        }
        let ev = RunEvent::from_json(&env.payload)
            .map_err(|e| chronicle_engine::runtime::decode_error(env, e))?;
        state = evolve(
            state,
            chronicle_engine::ids::Seq(env.seq.0),
            env.recorded_at,
            &ev,
        )?;
    }
    Ok(state)
}

fn within(env: &RawEnvelope, target: Target) -> bool {
    match target {
        Target::Head => true,
        Target::Seq(n) => env.seq.0 <= n,
        Target::Time(t) => env.recorded_at <= t,
    }
}

/// The state of `run` at `target`, starting from the latest usable
/// snapshot (seq targets and the head) or from seq 1 (time targets).
///
/// Errors: [`ReplayError::UnknownRun`] for an empty stream,
/// [`ReplayError::OutOfRange`] for a seq past the head, fold errors.
pub fn state_at(store: &Store, run: RunId, target: Target) -> Result<RunState, ReplayError> {
    let stream = run.stream();
    let to = match target {
        Target::Seq(0) => {
            return Err(ReplayError::OutOfRange(format!(
                "run {run}: seqs start at 1"
            )));
        }
        Target::Seq(n) => Some(Seq(n)),
        _ => None,
    };
    // Snapshots are keyed by seq: usable for seq targets and the head.
    let use_snapshot = !matches!(target, Target::Time(_));
    let (snapshot, envs) = store.read_for_fold(&stream, to, use_snapshot)?;
    let mut state = RunState::default();
    if let Some((_, bytes)) = &snapshot
        && let Ok(s) = serde_json::from_slice::<RunState>(bytes)
    {
        state = s;
    }
    if snapshot.is_none() && envs.is_empty() {
        return Err(ReplayError::UnknownRun(run.to_string()));
    }
    let reached = envs.last().map(|e| e.seq.0).unwrap_or(state.seq.0);
    if let Some(Seq(n)) = to
        && reached < n
    {
        return Err(ReplayError::OutOfRange(format!(
            "run {run} has events 1..={reached}; seq {n} is outside the history"
        )));
    }
    if state.seq > 0 && envs.first().is_some_and(|e| e.seq.0 != state.seq.0 + 1) {
        // A snapshot that does not line up with the log: fold from scratch.
        let all = store.read_stream(&stream, Seq(1))?;
        return fold_envelopes(RunState::default(), &all, target);
    }
    let state = fold_envelopes(state, &envs, target)?;
    if state.run_id.is_none() {
        return Err(ReplayError::OutOfRange(format!(
            "run {run} has no event at or before that time"
        )));
    }
    Ok(state)
}

/// Fold the whole stream from seq 1 without snapshots (the reference).
pub fn full_fold(store: &Store, run: RunId) -> Result<RunState, ReplayError> {
    let envs = store.read_stream(&run.stream(), Seq(1))?;
    if envs.is_empty() {
        return Err(ReplayError::UnknownRun(run.to_string()));
    }
    fold_envelopes(RunState::default(), &envs, Target::Head)
}
