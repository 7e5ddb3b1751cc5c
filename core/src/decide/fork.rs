//! The first event of a forked run.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Rejected;
use crate::event::{CarriedStep, Lineage, RunEvent};
use crate::ids::RunId;
use crate::state::{RunState, StepStatus};

/// The first event of a run forked from `source` (its state at the fork
/// seq): succeeded steps are carried with their outputs, `outputs`
/// overrides or adds step outputs, `input` replaces the run input.
///
/// Errors: [`Rejected::BadFork`] for an empty source or an override that
/// names an unknown step.
pub fn decide_fork(
    source: &RunState,
    at_seq: crate::ids::Seq,
    new_run: RunId,
    input: Option<Value>,
    outputs: BTreeMap<String, Value>,
    seed: u64,
) -> Result<RunEvent, Rejected> {
    let (Some(from), Some(wf)) = (source.run_id, source.workflow.as_ref()) else {
        return Err(Rejected::BadFork(
            "the source run has no events at that seq".into(),
        ));
    };
    let mut carried: BTreeMap<String, CarriedStep> = source
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Succeeded)
        .filter_map(|(k, s)| {
            s.output.clone().map(|o| {
                (
                    k.to_string(),
                    CarriedStep {
                        output: o,
                        overridden: false,
                    },
                )
            })
        })
        .collect();
    for (step, output) in outputs {
        if wf.step(&step).is_none() {
            return Err(Rejected::BadFork(format!(
                "--set-output names unknown step {step}"
            )));
        }
        carried.insert(
            step,
            CarriedStep {
                output,
                overridden: true,
            },
        );
    }
    Ok(RunEvent::RunForked {
        run_id: new_run,
        lineage: Lineage {
            forked_from: from,
            at_seq,
        },
        workflow: wf.clone(),
        workflow_sha256: source.workflow_sha256.clone(),
        input: input.unwrap_or_else(|| source.input.clone()),
        carried,
        seed,
    })
}
