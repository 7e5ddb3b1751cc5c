//! Properties of the decider: for random command sequences, the events
//! `decide` returns always fold without error; folding the whole history
//! equals the state kept step by step (checked by `Sim::apply` after every
//! command); folding twice gives equal states.

mod support;

use chronicle_core::decide::{AttemptResult, Command};
use chronicle_core::model::ErrorKind;
use chronicle_core::state::fold;
use proptest::prelude::*;
use serde_json::json;
use support::Sim;

const WORKFLOW: &str = "
name: props
defaults:
  retry: { max_attempts: 3, initial_backoff: 1s, jitter: full }
  quarantine_after_crashes: 2
agents:
  a1: { skills: [x], command: [a1], concurrency: 1, circuit_breaker: { failure_threshold: 2, cool_down: 5s } }
  a2: { skills: [x, y], command: [a2], concurrency: 2 }
steps:
  - id: s1
    command: [s1]
    timeout: 3s
  - id: s2
    needs: [s1]
    skills: [x]
    strategy: round_robin
  - id: s3
    needs: [s1]
    shell: 'true'
    continue_on_failure: true
  - id: s4
    needs: [s2, s3]
    skills: [y]
    on_exhausted: quarantine
  - id: s5
    skills: [z]
  - id: s6
    needs: [s4]
    command: [s6]
    at_most_once: true
    with: { v: '${{ steps.s4.output }}' }
";

#[derive(Debug, Clone)]
enum Op {
    Finish { pick: usize, outcome: u8 },
    Tick { ms: i64 },
    Recover,
    Pause,
    Resume,
    Cancel,
    Release,
    Slots(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..6usize, 0..6u8).prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        4 => (0..8000i64).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Recover),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => Just(Op::Cancel),
        1 => Just(Op::Release),
        1 => (0..4usize).prop_map(Op::Slots),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
    #[test]
    fn decided_events_always_fold_and_replay_equals_live(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut sim, _) = Sim::start(WORKFLOW);
        for op in ops {
            sim.sync_agents();
            let cmd = match op {
                Op::Finish { pick, outcome } => {
                    let running: Vec<(String, u32)> = sim.state.running().into_iter().map(|(s, a)| (s.to_string(), a)).collect();
                    if running.is_empty() { continue; }
                    let (step, attempt) = running[pick % running.len()].clone();
                    let result = match outcome {
                        0 | 1 => AttemptResult::Succeeded { output: json!({"n": outcome}), duration_ms: 1, stdout: None, stderr: None },
                        k => AttemptResult::Failed {
                            kind: [ErrorKind::Transient, ErrorKind::Permanent, ErrorKind::Timeout, ErrorKind::Canceled][(k - 2) as usize],
                            message: "boom".into(), exit_code: Some(1), http_status: None, duration_ms: 1, stderr: None,
                        },
                    };
                    Command::Finished { step: step.into(), attempt, result }
                }
                Op::Tick { ms } => { sim.advance_ms(ms); Command::Tick }
                Op::Recover => Command::Recover,
                Op::Pause => Command::Pause,
                Op::Resume => Command::Resume,
                Op::Cancel => Command::Cancel { reason: "prop".into() },
                Op::Release => Command::Release,
                Op::Slots(n) => { sim.slots = n; continue; }
            };
            // Rejections are fine; accepted events must fold (Sim::apply asserts it).
            let _ = sim.try_cmd(cmd);
        }
        let a = fold(sim.history.iter().map(|(s, t, e)| (*s, *t, e))).unwrap();
        let b = fold(sim.history.iter().map(|(s, t, e)| (*s, *t, e))).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &sim.state);
        // Seqs are contiguous from 1.
        for (i, (seq, _, _)) in sim.history.iter().enumerate() {
            prop_assert_eq!(*seq, i as u64 + 1);
        }
    }
}
