//! `chronicle upgrade-check NEW_WORKFLOW`: would runs recorded under one
//! definition have been decided the same under another? Answers "can
//! in-flight runs continue on the new version?" before deploying it.
//!
//! The recorded history is replayed through `decide` with the new
//! definition in place of the pinned one. The history is cut into the
//! batches one command decided, each starting at an event that shows its
//! command: `RunStarted` (start), an attempt's outcome (it finished), a
//! timeout (time passed), `StepAbandoned` (a recovery or a stop),
//! `RunCancelRequested`, `RunPaused`, `RunResumed`, `RunReleased`; any
//! other first event (a retry started when due, a blocked step routed
//! when capacity freed) is a tick. For each batch, `decide` gets the same
//! command, at the time it was recorded, with as many free slots as the
//! recorded batch started attempts (capacity is the engine's, not the
//! definition's); what it decides must be what was recorded, event by
//! event (type, step, attempt, agent). The recorded events are then
//! folded — outcomes are facts, whatever the definition — and the next
//! batch is checked. The first difference is reported with its seq.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use chronicle_engine::circuit::Breaker;
use chronicle_engine::decide::{AgentView, AttemptResult, Command, Ctx, decide};
use chronicle_engine::event::AgentEvent;
use chronicle_engine::event::RunEvent;
use chronicle_engine::model::{ErrorKind, Workflow};
use chronicle_engine::state::{RunState, evolve};
use chronicle_store::RawEnvelope;
use serde::Serialize;

use crate::ReplayError;

/// The verdict on one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpgradeVerdict {
    /// Every recorded decision is what the new definition decides.
    pub compatible: bool,
    /// Events checked.
    pub events: u64,
    /// The first seq whose event the new definition would not have
    /// recorded (or after which it would record more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference_seq: Option<u64>,
    /// What was recorded there (`TYPE step #attempt`), or `-`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<String>,
    /// What the new definition decides there, or `-`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided: Option<String>,
    /// Why, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn key(e: &RunEvent) -> String {
    let mut s = e.name().to_string();
    if let Some(step) = e.step() {
        s.push(' ');
        s.push_str(step);
    }
    match e {
        RunEvent::StepStarted { attempt, agent, .. } => {
            s.push_str(&format!(" #{attempt}"));
            if let Some(a) = agent {
                s.push_str(&format!(" on {a}"));
            }
        }
        RunEvent::StepAssigned { attempt, agent, .. } => {
            s.push_str(&format!(" #{attempt} to {agent}"));
        }
        RunEvent::StepSucceeded { attempt, .. }
        | RunEvent::StepFailed { attempt, .. }
        | RunEvent::StepAbandoned { attempt, .. } => s.push_str(&format!(" #{attempt}")),
        _ => {}
    }
    s
}

/// The command whose batch starts with `e`.
fn command_of(e: &RunEvent) -> Command {
    match e {
        RunEvent::RunStarted {} => Command::Start,
        RunEvent::StepSucceeded {
            step,
            attempt,
            output,
            duration_ms,
            stdout,
            stderr,
        } => Command::Finished {
            step: step.clone(),
            attempt: *attempt,
            result: AttemptResult::Succeeded {
                output: output.clone(),
                duration_ms: *duration_ms,
                stdout: stdout.clone(),
                stderr: stderr.clone(),
            },
        },
        RunEvent::StepFailed { kind, .. } if *kind == ErrorKind::Timeout => Command::Tick,
        RunEvent::StepFailed { kind, .. } if *kind == ErrorKind::Interrupted => Command::Recover,
        RunEvent::StepFailed {
            step,
            attempt,
            kind,
            message,
            exit_code,
            http_status,
            duration_ms,
            stderr,
            ..
        } => Command::Finished {
            step: step.clone(),
            attempt: *attempt,
            result: AttemptResult::Failed {
                kind: *kind,
                message: message.clone(),
                exit_code: *exit_code,
                http_status: *http_status,
                duration_ms: *duration_ms,
                stderr: stderr.clone(),
            },
        },
        RunEvent::StepAbandoned {
            stopped: true,
            reason,
            ..
        } => Command::Stop {
            reason: reason.clone(),
        },
        RunEvent::StepAbandoned { .. } | RunEvent::RunQuarantined { .. } => Command::Recover,
        RunEvent::RunCancelRequested { reason } => Command::Cancel {
            reason: reason.clone(),
        },
        RunEvent::RunPaused {} => Command::Pause,
        RunEvent::RunResumed {} => Command::Resume,
        RunEvent::RunReleased {} => Command::Release,
        _ => Command::Tick,
    }
}

/// Whether `e` can only start a batch (it records a command or a fact
/// from outside the decider), so a batch before it has ended.
fn starts_batch(e: &RunEvent) -> bool {
    !matches!(command_of(e), Command::Tick)
        || matches!(e, RunEvent::StepFailed { kind, .. } if *kind == ErrorKind::Timeout)
}

/// Whether `b` continues the batch `a` started (several attempts
/// abandoned by one recovery or stop).
fn same_command(a: &RunEvent, b: &RunEvent) -> bool {
    matches!(
        (a, b),
        (RunEvent::StepAbandoned { stopped: x, .. }, RunEvent::StepAbandoned { stopped: y, .. }) if x == y
    )
}

/// Check `envs` (one run's history, in order) against `new`.
///
/// Errors: an event that does not decode ([`ReplayError::BadFile`] names
/// the seq), an empty history.
/// `agents(t)` gives the agents' circuits as they were at time `t` (from
/// their streams: [`AgentTimelines`]), so that routing is decided with
/// the availability the engine saw.
pub fn check(
    envs: &[RawEnvelope],
    new: &Workflow,
    agents: &dyn Fn(DateTime<Utc>) -> BTreeMap<String, AgentView>,
) -> Result<UpgradeVerdict, ReplayError> {
    let bad = |seq: u64, message: String| ReplayError::BadFile {
        file: "<history>".into(),
        message: format!("seq {seq}: {message}"),
    };
    let events: Vec<RunEvent> = envs
        .iter()
        .map(|e| RunEvent::from_json(&e.payload).map_err(|err| bad(e.seq.0, err.to_string())))
        .collect::<Result<_, _>>()?;
    let Some(first) = events.first() else {
        return Err(bad(0, "the history is empty".into()));
    };
    let differ = |seq: u64, recorded: Option<String>, decided: Option<String>, reason: String| {
        UpgradeVerdict {
            compatible: false,
            events: events.len() as u64,
            first_difference_seq: Some(seq),
            recorded: Some(recorded.unwrap_or_else(|| "-".into())),
            decided: Some(decided.unwrap_or_else(|| "-".into())),
            reason: Some(reason),
        }
    };
    // The first event, with the new definition pinned instead.
    let wf = std::sync::Arc::new(new.clone());
    let sha = new.sha256();
    let first = match first.clone() {
        RunEvent::RunCreated {
            run_id,
            input,
            idempotency_key,
            seed,
            trace_id,
            parent,
            ..
        } => RunEvent::RunCreated {
            run_id,
            workflow: wf,
            workflow_sha256: sha,
            input,
            idempotency_key,
            seed,
            trace_id,
            parent,
        },
        RunEvent::RunForked {
            run_id,
            lineage,
            input,
            carried,
            seed,
            ..
        } => RunEvent::RunForked {
            run_id,
            lineage,
            workflow: wf,
            workflow_sha256: sha,
            input,
            carried,
            seed,
        },
        other => {
            return Err(bad(
                1,
                format!(
                    "the first event is {}, not RunCreated or RunForked",
                    other.name()
                ),
            ));
        }
    };
    let mut state = match evolve(
        RunState::default(),
        chronicle_engine::ids::Seq(1),
        envs[0].recorded_at,
        &first,
    ) {
        Ok(s) => s,
        Err(e) => {
            return Ok(differ(
                1,
                Some(events[0].name().into()),
                None,
                format!("the first event does not fit the new definition: {e}"),
            ));
        }
    };
    let mut i = 1;
    while i < events.len() {
        let now = envs[i].recorded_at;
        // The recorded batch: up to the next event that starts one (a
        // recovery or a stop abandons every running attempt in one batch).
        let end = (i + 1..events.len())
            .find(|&j| starts_batch(&events[j]) && !same_command(&events[i], &events[j]))
            .unwrap_or(events.len());
        let started = events[i..end]
            .iter()
            .filter(|e| matches!(e, RunEvent::StepStarted { .. }))
            .count();
        let seq = i as u64 + 1;
        // Capacity is the engine's: decide with every slot free, and when
        // that starts more than was recorded, with as many as the
        // recorded batch used (an engine at its limit).
        let view = agents(now);
        let attempt = |slots: usize| {
            decide(
                &state,
                command_of(&events[i]),
                &Ctx {
                    slots,
                    agents: view.clone(),
                    ..Ctx::at(now)
                },
            )
        };
        let matches = |d: &[RunEvent]| {
            !d.is_empty()
                && d.iter()
                    .enumerate()
                    .all(|(k, e)| events.get(i + k).map(key) == Some(key(e)))
        };
        let decided = match attempt(usize::MAX) {
            Ok(d) if matches(&d) => d,
            first => match attempt(started) {
                Ok(d) if matches(&d) => d,
                _ => match first {
                    Ok(d) => d,
                    Err(e) => {
                        return Ok(differ(
                            seq,
                            Some(key(&events[i])),
                            None,
                            format!("the new definition refuses the command: {e}"),
                        ));
                    }
                },
            },
        };
        if decided.is_empty() {
            return Ok(differ(
                seq,
                Some(key(&events[i])),
                None,
                "the new definition decides nothing here".into(),
            ));
        }
        for (k, d) in decided.iter().enumerate() {
            let at = i + k;
            let recorded = events.get(at);
            if recorded.map(key) != Some(key(d)) {
                let reason = why(&state, recorded, d);
                return Ok(differ(
                    at as u64 + 1,
                    recorded.map(key),
                    Some(key(d)),
                    reason,
                ));
            }
        }
        // Fold what was recorded (outcomes are facts).
        for (k, e) in events[i..i + decided.len()].iter().enumerate() {
            let at = i + k;
            state = match evolve(
                state,
                chronicle_engine::ids::Seq(at as u64 + 1),
                envs[at].recorded_at,
                e,
            ) {
                Ok(s) => s,
                Err(err) => {
                    return Ok(differ(
                        at as u64 + 1,
                        Some(key(e)),
                        None,
                        format!("the recorded event does not fold under the new definition: {err}"),
                    ));
                }
            };
        }
        let next = i + decided.len();
        // The same commit (one time) recorded more than the new definition
        // decides: the first extra event is the difference.
        if next < events.len()
            && envs[next].recorded_at == envs[i].recorded_at
            && !starts_batch(&events[next])
        {
            let r = &events[next];
            let reason = match r.step() {
                Some(s) if !state.wf().steps.iter().any(|x| x.id.as_str() == s) => {
                    format!("step {s} is not in the new definition")
                }
                _ => "the new definition decides nothing more in this commit".into(),
            };
            return Ok(differ(next as u64 + 1, Some(key(r)), None, reason));
        }
        i = next;
    }
    Ok(UpgradeVerdict {
        compatible: true,
        events: events.len() as u64,
        first_difference_seq: None,
        recorded: None,
        decided: None,
        reason: None,
    })
}

/// Why a recorded event and a decided one differ, in words.
fn why(state: &RunState, recorded: Option<&RunEvent>, decided: &RunEvent) -> String {
    let Some(r) = recorded else {
        return format!(
            "the new definition goes on with {} where the history ends",
            key(decided)
        );
    };
    let wf = state.wf();
    let step_known = |s: &str| wf.steps.iter().any(|x| x.id.as_str() == s);
    if let Some(s) = r.step()
        && !step_known(s)
    {
        return format!("step {s} is not in the new definition");
    }
    match (r, decided) {
        (RunEvent::StepStarted { step: a, .. }, RunEvent::StepStarted { step: b, .. }) if a != b => {
            format!("the new definition starts {b} where {a} was started (dependencies or order changed)")
        }
        (RunEvent::StepStarted { attempt: a, .. }, RunEvent::StepStarted { attempt: b, .. }) if a != b => {
            "attempt numbers differ (the retry policy changed)".into()
        }
        (RunEvent::StepStarted { agent: a, .. }, RunEvent::StepStarted { agent: b, .. }) if a != b => {
            "the step is routed to another agent (skills or agents changed)".into()
        }
        (_, RunEvent::StepFailed { .. }) | (RunEvent::StepFailed { .. }, _) => {
            "an outcome is classified differently (the retry policy changed)".into()
        }
        (
            RunEvent::StepAssigned { .. } | RunEvent::StepStarted { .. },
            RunEvent::StepSkipped { .. } | RunEvent::RunFailed { .. } | RunEvent::RunSucceeded {},
        ) => "the new definition would not start this attempt (fewer attempts allowed, or a step or dependency changed)".into(),
        (
            RunEvent::StepSkipped { .. } | RunEvent::RunFailed { .. } | RunEvent::RunSucceeded {},
            RunEvent::StepAssigned { .. } | RunEvent::StepStarted { .. },
        ) => "the new definition would start another attempt (more attempts allowed, or a step or dependency changed)".into(),
        _ => "the decisions differ here".into(),
    }
}

/// Each agent's circuit over time, folded from its stream (`agent:NAME`).
#[derive(Clone, Debug, Default)]
pub struct AgentTimelines {
    /// Per agent: `(time of the event, breaker after it)`, in order.
    pub agents: BTreeMap<String, Vec<(DateTime<Utc>, Breaker)>>,
}

impl AgentTimelines {
    /// Fold every agent stream of `store`.
    ///
    /// Errors: storage errors; an agent event that does not decode.
    pub fn read(store: &chronicle_store::Store) -> Result<Self, ReplayError> {
        let mut out = Self::default();
        for head in store.streams_with_prefix("agent:")? {
            let chronicle_store::StreamId::Named(name) = &head.stream else {
                continue;
            };
            let Some(agent) = name.strip_prefix("agent:") else {
                continue;
            };
            let mut b = Breaker::default();
            let mut line = Vec::new();
            for env in store.read_stream(&head.stream, chronicle_store::Seq(1))? {
                b.apply(&env.decode::<AgentEvent>()?);
                line.push((env.recorded_at, b.clone()));
            }
            out.agents.insert(agent.to_string(), line);
        }
        Ok(out)
    }

    /// The agents' circuits at `t` (the last event at or before it).
    pub fn at(&self, t: DateTime<Utc>) -> BTreeMap<String, AgentView> {
        self.agents
            .iter()
            .map(|(name, line)| {
                let circuit = line
                    .iter()
                    .take_while(|(at, _)| *at <= t)
                    .last()
                    .map(|(_, b)| b.state)
                    .unwrap_or_default();
                (
                    name.clone(),
                    AgentView {
                        running: 0,
                        circuit,
                    },
                )
            })
            .collect()
    }
}
