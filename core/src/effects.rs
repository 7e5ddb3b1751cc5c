//! Effects: what the runtime must do for a state. The runtime performs
//! exactly these and nothing the core did not ask for.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::ExecSpec;
use crate::state::{RunState, RunStatus, StepStatus};

/// An attempt the runtime must have running.
#[derive(Clone, Debug, PartialEq)]
pub struct StartAttempt {
    /// Step id.
    pub step: crate::ids::StepId,
    /// Attempt number.
    pub attempt: u32,
    /// Agent, for `skills` steps.
    pub agent: Option<String>,
    /// How to run it (the step's or its agent's executor).
    pub exec: ExecSpec,
    /// Resolved input (secret references still unresolved).
    pub input: Value,
    /// `RUN_ID:STEP_ID`.
    pub idempotency_key: String,
    /// Deadline.
    pub deadline: Option<DateTime<Utc>>,
    /// Working directory.
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: std::collections::BTreeMap<String, String>,
}

/// One effect.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Have this attempt running (start it unless it already runs).
    Run(Box<StartAttempt>),
    /// Kill this attempt (cancel requested).
    Kill {
        /// Step.
        step: crate::ids::StepId,
        /// Attempt.
        attempt: u32,
    },
    /// Wake the run at this time (retry due, deadline).
    Timer(DateTime<Utc>),
    /// Poll `url` every `every_ms` for the step's attempt (until its
    /// answer is terminal; the result comes back as the attempt's).
    Poll {
        /// The step.
        step: crate::ids::StepId,
        /// Its attempt.
        attempt: u32,
        /// The URL.
        url: String,
        /// Between polls, ms.
        every_ms: u64,
    },
}

/// The effects a state asks for. The runtime kills any live attempt that
/// is not listed as `Run`.
pub fn effects(state: &RunState) -> Vec<Effect> {
    let mut out = Vec::new();
    let Some(wf) = state.workflow.as_deref() else {
        return out;
    };
    for s in &wf.steps {
        let Some(st) = state.steps.get(&s.id) else {
            continue;
        };
        match st.status {
            StepStatus::Running => {
                let a = st.last_attempt().expect("a running step has an attempt");
                let sending = matches!(
                    st.wait,
                    Some(crate::state::Wait::Callback {
                        accepted: false,
                        ..
                    })
                );
                if let Some(crate::state::Wait::Poll { url, every_ms }) = &st.wait
                    && !state.cancel_requested
                {
                    out.push(Effect::Poll {
                        step: s.id.clone(),
                        attempt: a.number,
                        url: url.clone(),
                        every_ms: *every_ms,
                    });
                }
                if let Some(wait) = st.wait.as_ref().filter(|_| !sending) {
                    // A waiting step runs nothing: wake at its timer and
                    // its deadline (decide ends the wait; a cancel too).
                    if let crate::state::Wait::Timer { fire_at } = wait {
                        out.push(Effect::Timer(*fire_at));
                    }
                    if let Some(dl) = a.deadline {
                        out.push(Effect::Timer(dl));
                    }
                    continue;
                }
                if state.cancel_requested {
                    out.push(Effect::Kill {
                        step: s.id.clone(),
                        attempt: a.number,
                    });
                    continue;
                }
                let exec = match &a.agent {
                    Some(agent) => wf.agents.get(agent).map(|x| x.exec()).unwrap_or_default(),
                    None => s.exec(),
                };
                out.push(Effect::Run(Box::new(StartAttempt {
                    step: s.id.clone(),
                    attempt: a.number,
                    agent: a.agent.clone(),
                    exec,
                    input: a.input.clone(),
                    idempotency_key: crate::ids::idempotency_key(
                        state.run_id.expect("a created run has an id"),
                        &s.id,
                    ),
                    deadline: a.deadline,
                    workdir: s.workdir.clone(),
                    env: s.env.clone(),
                })));
                if let Some(dl) = a.deadline {
                    out.push(Effect::Timer(dl));
                }
            }
            StepStatus::Retrying if state.status == RunStatus::Running => {
                if let Some(t) = st.retry_at {
                    out.push(Effect::Timer(t));
                }
            }
            _ => {}
        }
    }
    out
}
