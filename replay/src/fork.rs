//! Fork: a new run from run R at seq N. Its history starts with
//! `RunForked { from: R, at: N }` carrying the outputs of R's succeeded
//! steps at N; R is untouched. Lineage is visible both ways: the child's
//! `RunForked` names R, and the `forks` index lists R's forks.

use std::collections::BTreeMap;

use chronicle_engine::decide::decide_fork;
use chronicle_engine::ids::RunId;
use chronicle_engine::runtime::Engine;
use chronicle_engine::runtime::index::FORKS;
use chronicle_store::IndexOp;
use serde_json::Value;

use crate::ReplayError;
use crate::rebuild::{Target, state_at};

/// Fork `source` at `at_seq` with an optional new input and output
/// overrides; the new run starts executing in `engine`.
///
/// Errors: unknown run, seq out of range, an override for an unknown step.
pub async fn fork(
    engine: &Engine,
    source: RunId,
    at_seq: u64,
    input: Option<Value>,
    outputs: BTreeMap<String, Value>,
) -> Result<RunId, ReplayError> {
    let state = state_at(engine.store(), source, Target::Seq(at_seq))?;
    let new_run = engine.new_run_id();
    let seed = new_run.0.as_u128() as u64;
    let first = decide_fork(
        &state,
        chronicle_engine::ids::Seq(at_seq),
        new_run,
        input,
        outputs,
        seed,
    )
    .map_err(chronicle_engine::runtime::EngineError::from)?;
    let lineage = IndexOp::Put {
        index: FORKS.into(),
        key: format!("{source}/{new_run}"),
        value: at_seq.to_string().into_bytes(),
    };
    Ok(engine.start_from(first, vec![lineage]).await?)
}

/// The forks of `run`: `(child, at_seq)`.
pub fn forks_of(
    store: &chronicle_store::Store,
    run: RunId,
) -> Result<Vec<(RunId, u64)>, ReplayError> {
    Ok(store
        .index_scan(FORKS, &format!("{run}/"))?
        .into_iter()
        .filter_map(|(k, v)| {
            let child = k.split('/').nth(1)?.parse().ok()?;
            let at = std::str::from_utf8(&v).ok()?.parse().ok()?;
            Some((child, at))
        })
        .collect())
}
