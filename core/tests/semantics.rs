//! Given/when/then snapshots that pin the engine's transition semantics.
//! Each test runs live and through replay (see `support::Sim::apply`).

mod support;

use chronicle_core::decide::Command;
use chronicle_core::effects::{Effect, effects};
use chronicle_core::event::RunEvent;
use chronicle_core::model::ErrorKind;
use chronicle_core::state::RunState;
use insta::assert_yaml_snapshot;
use serde_json::json;
use support::{DIAMOND, Sim, brief};

const LINEAR: &str = "
name: linear
steps:
  - id: fetch
    command: [echo, fetch]
  - id: parse
    needs: [fetch]
    command: [echo, parse]
";

const RETRY: &str = "
name: retry
defaults:
  retry: { max_attempts: 3, initial_backoff: 1s, multiplier: 2, max_backoff: 10s }
steps:
  - id: flaky
    command: [./flaky.sh]
    retry: { max_attempts: 3, initial_backoff: 1s, multiplier: 2, max_backoff: 10s, retry_on: { permanent_exit_codes: [64] } }
  - id: after
    needs: [flaky]
    command: [echo, after]
  - id: after2
    needs: [after]
    command: [echo, after2]
";

#[test]
fn linear_run() {
    let (mut sim, created) = Sim::start(LINEAR);
    assert_yaml_snapshot!("linear_1_created_started", brief(&created));
    assert_yaml_snapshot!(
        "linear_2_fetch_ok_starts_parse",
        brief(&sim.ok("fetch", json!({"bytes": 10})))
    );
    assert_yaml_snapshot!(
        "linear_3_parse_ok_run_succeeds",
        brief(&sim.ok("parse", json!({"rows": 3})))
    );
    assert_yaml_snapshot!("linear_4_final_state", sim.state);
}

#[test]
fn diamond_runs_middle_steps_in_parallel() {
    let (mut sim, _) = Sim::start(DIAMOND);
    let after_a = sim.ok("a", json!(1));
    assert_eq!(sim.status("b"), "running");
    assert_eq!(sim.status("c"), "running");
    assert_yaml_snapshot!("diamond_1_a_ok_starts_b_and_c", brief(&after_a));
    assert_yaml_snapshot!("diamond_2_b_ok_d_waits", brief(&sim.ok("b", json!(2))));
    assert_yaml_snapshot!("diamond_3_c_ok_starts_d", brief(&sim.ok("c", json!(3))));
    assert_yaml_snapshot!("diamond_4_d_ok_succeeds", brief(&sim.ok("d", json!(4))));
}

#[test]
fn retry_then_success() {
    let (mut sim, _) = Sim::start(RETRY);
    let failed = sim.fail("flaky", ErrorKind::Transient, Some(1));
    assert_yaml_snapshot!("retry_1_transient_failure_backs_off", brief(&failed));
    sim.advance_ms(999);
    assert!(
        sim.cmd(Command::Tick).is_empty(),
        "retry must wait for its backoff"
    );
    sim.advance_ms(1);
    assert_yaml_snapshot!(
        "retry_2_tick_at_backoff_starts_attempt_2",
        brief(&sim.cmd(Command::Tick))
    );
    let second = sim.fail("flaky", ErrorKind::Transient, Some(1));
    assert_yaml_snapshot!("retry_3_second_failure_backs_off_2s", brief(&second));
    sim.advance_ms(2000);
    sim.cmd(Command::Tick);
    assert_yaml_snapshot!(
        "retry_4_third_attempt_succeeds",
        brief(&sim.ok("flaky", json!("ok")))
    );
    assert_eq!(sim.state.steps["flaky"].attempts.len(), 3);
}

#[test]
fn retries_exhausted_fail_the_step_skip_dependents_and_fail_the_run() {
    let (mut sim, _) = Sim::start(RETRY);
    for _ in 0..2 {
        sim.fail("flaky", ErrorKind::Transient, Some(1));
        sim.advance_ms(60_000);
        sim.cmd(Command::Tick);
    }
    let last = sim.fail("flaky", ErrorKind::Transient, Some(1));
    assert_yaml_snapshot!("exhausted_1_last_failure_skips_and_fails_run", brief(&last));
    assert_yaml_snapshot!("exhausted_2_final_state", sim.state.steps);
}

#[test]
fn permanent_error_is_not_retried() {
    let (mut sim, _) = Sim::start(RETRY);
    assert_yaml_snapshot!(
        "permanent_exit_code_not_retried",
        brief(&sim.fail("flaky", ErrorKind::Transient, Some(64)))
    );
    assert_eq!(sim.state.status.as_str(), "failed");
}

#[test]
fn timeout_fails_the_attempt_and_retries() {
    let yaml = "
name: timeout
steps:
  - id: slow
    command: [sleep, '60']
    timeout: 2s
    retry: { max_attempts: 2, initial_backoff: 500ms }
";
    let (mut sim, started) = Sim::start(yaml);
    assert_yaml_snapshot!("timeout_1_started_with_deadline", brief(&started));
    sim.advance_ms(1999);
    assert!(sim.cmd(Command::Tick).is_empty());
    sim.advance_ms(1);
    assert_yaml_snapshot!("timeout_2_deadline_passed", brief(&sim.cmd(Command::Tick)));
    // The late result of the timed-out attempt is stale and changes nothing.
    assert!(sim.ok("slow", json!("late")).is_empty());
    let fx: Vec<String> = effects(&sim.state)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_yaml_snapshot!("timeout_3_effects_timer_for_retry", fx);
}

#[test]
fn stale_results_are_ignored() {
    let (mut sim, _) = Sim::start(LINEAR);
    let out = sim.cmd(Command::Finished {
        step: "fetch".into(),
        attempt: 7,
        result: chronicle_core::decide::AttemptResult::Succeeded {
            output: json!(null),
            duration_ms: 1,
            stdout: None,
            stderr: None,
        },
    });
    assert!(out.is_empty());
}

#[test]
fn continue_on_failure_lets_dependents_run() {
    let yaml = "
name: tolerant
steps:
  - id: lint
    command: [lint]
    continue_on_failure: true
    retry: { max_attempts: 1 }
  - id: build
    needs: [lint]
    command: [build]
";
    let (mut sim, _) = Sim::start(yaml);
    assert_yaml_snapshot!(
        "continue_on_failure_1_dependent_starts",
        brief(&sim.fail("lint", ErrorKind::Transient, Some(2)))
    );
    assert_yaml_snapshot!(
        "continue_on_failure_2_run_succeeds",
        brief(&sim.ok("build", json!(null)))
    );
}

#[test]
fn crash_mid_attempt_is_abandoned_and_retried_with_the_same_key() {
    let (mut sim, _) = Sim::start(LINEAR);
    let rec = sim.cmd(Command::Recover);
    assert_yaml_snapshot!("crash_1_abandoned_and_restarted", brief(&rec));
    let keys: Vec<String> = rec
        .iter()
        .chain(sim.history.iter().map(|(_, _, e)| e))
        .filter_map(|e| match e {
            RunEvent::StepStarted {
                idempotency_key, ..
            } => Some(idempotency_key.clone()),
            _ => None,
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    // An abandoned attempt does not spend the retry budget.
    assert_eq!(sim.state.steps["fetch"].budget_used(), 1);
}

#[test]
fn three_crashes_in_a_row_quarantine_the_run() {
    let (mut sim, _) = Sim::start(LINEAR);
    sim.cmd(Command::Recover);
    sim.cmd(Command::Recover);
    let third = sim.cmd(Command::Recover);
    assert_yaml_snapshot!("crash_2_third_crash_quarantines", brief(&third));
    assert_eq!(sim.state.status.as_str(), "quarantined");
    // Released: the step runs again with a fresh crash count.
    assert_yaml_snapshot!(
        "crash_3_release_restarts_step",
        brief(&sim.cmd(Command::Release))
    );
    assert_eq!(sim.state.steps["fetch"].crash_streak, 0);
}

#[test]
fn at_most_once_step_is_failed_as_interrupted() {
    let yaml = "
name: pay
steps:
  - id: charge
    http: { url: 'http://127.0.0.1:1/charge' }
    at_most_once: true
";
    let (mut sim, _) = Sim::start(yaml);
    assert_yaml_snapshot!(
        "crash_4_at_most_once_interrupted",
        brief(&sim.cmd(Command::Recover))
    );
    assert_eq!(sim.state.status.as_str(), "failed");
}

#[test]
fn on_exhausted_quarantine_then_release() {
    let yaml = "
name: careful
steps:
  - id: migrate
    command: [migrate]
    retry: { max_attempts: 1 }
    on_exhausted: quarantine
  - id: report
    needs: [migrate]
    command: [report]
";
    let (mut sim, _) = Sim::start(yaml);
    assert_yaml_snapshot!(
        "quarantine_1_exhausted",
        brief(&sim.fail("migrate", ErrorKind::Transient, Some(1)))
    );
    assert_eq!(sim.status("report"), "waiting");
    let released = sim.cmd(Command::Release);
    assert_yaml_snapshot!("quarantine_2_released_step_restarts", brief(&released));
    assert_yaml_snapshot!(
        "quarantine_3_then_completes",
        brief(&{
            let mut all = sim.ok("migrate", json!(null));
            all.extend(sim.ok("report", json!(null)));
            all
        })
    );
}

#[test]
fn cancel_while_running() {
    let (mut sim, _) = Sim::start(DIAMOND);
    sim.ok("a", json!(1));
    let req = sim.cmd(Command::Cancel {
        reason: "operator asked".into(),
    });
    assert_yaml_snapshot!("cancel_1_requested", brief(&req));
    let fx: Vec<String> = effects(&sim.state)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_yaml_snapshot!("cancel_2_effects_kill_running", fx);
    sim.fail("b", ErrorKind::Canceled, None);
    let last = sim.fail("c", ErrorKind::Canceled, None);
    assert_yaml_snapshot!("cancel_3_last_kill_ends_run_canceled", brief(&last));
    let again = sim.try_cmd(Command::Resume).unwrap_err();
    assert_yaml_snapshot!(
        "cancel_4_commands_after_end_are_rejected",
        again.to_string()
    );
}

#[test]
fn pause_and_resume() {
    let (mut sim, _) = Sim::start(LINEAR);
    assert_yaml_snapshot!("pause_1_paused", brief(&sim.cmd(Command::Pause)));
    assert_yaml_snapshot!(
        "pause_2_running_attempt_finishes_nothing_starts",
        brief(&sim.ok("fetch", json!(1)))
    );
    assert_eq!(sim.status("parse"), "ready");
    assert_yaml_snapshot!(
        "pause_3_resume_starts_ready_steps",
        brief(&sim.cmd(Command::Resume))
    );
}

#[test]
fn templates_resolve_from_upstream_outputs_and_run_input() {
    let yaml = "
name: templated
input: { file: default.log }
secrets: [TOKEN]
steps:
  - id: count
    command: [wc]
    with: { path: '${{ input.file }}' }
  - id: report
    needs: [count]
    command: [report]
    with:
      lines: '${{ steps.count.output.lines }}'
      title: 'Report of ${{ input.file }} (${{ steps.count.output.lines }} lines)'
      auth: 'Bearer ${{ secrets.TOKEN }}'
";
    let (mut sim, started) = Sim::start(yaml);
    assert_yaml_snapshot!("template_1_input_default", brief(&started));
    assert_yaml_snapshot!(
        "template_2_resolved_from_output_secret_kept",
        brief(&sim.ok("count", json!({"lines": 2000})))
    );
}

#[test]
fn unresolvable_template_fails_the_attempt_permanently() {
    let yaml = "
name: missing
steps:
  - id: count
    command: [wc]
  - id: report
    needs: [count]
    command: [report]
    with: { lines: '${{ steps.count.output.lines }}' }
";
    let (mut sim, _) = Sim::start(yaml);
    assert_yaml_snapshot!(
        "template_3_missing_field_fails",
        brief(&sim.ok("count", json!({"words": 1})))
    );
}

#[test]
fn global_slots_limit_new_attempts() {
    let (mut sim, _) = Sim::start(DIAMOND);
    sim.slots = 1;
    let after_a = sim.ok("a", json!(1));
    assert_yaml_snapshot!("slots_1_only_one_starts", brief(&after_a));
    sim.slots = 1;
    assert_yaml_snapshot!(
        "slots_2_tick_starts_the_other",
        brief(&sim.cmd(Command::Tick))
    );
}

#[test]
fn rejected_commands_name_the_problem() {
    let (mut sim, _) = Sim::start(LINEAR);
    let msgs = vec![
        sim.try_cmd(Command::Start).unwrap_err().to_string(),
        sim.try_cmd(Command::Release).unwrap_err().to_string(),
        sim.try_cmd(Command::Resume)
            .map(|e| e.len().to_string())
            .unwrap_or_else(|e| e.to_string()),
        Sim::empty().try_cmd(Command::Tick).unwrap_err().to_string(),
    ];
    assert_yaml_snapshot!("rejections", msgs);
}

#[test]
fn a_transition_that_cannot_happen_is_an_error_naming_run_seq_event_state() {
    let (sim, _) = Sim::start(LINEAR);
    let bad = RunEvent::StepSucceeded {
        step: "parse".into(),
        attempt: 1,
        output: json!(null),
        duration_ms: 1,
        stdout: None,
        stderr: None,
    };
    let err = chronicle_core::state::evolve(sim.state.clone(), sim.state.seq + 1, sim.now, &bad)
        .unwrap_err();
    assert_yaml_snapshot!("fold_error_step_never_started", err.to_string());
    let first = chronicle_core::state::evolve(
        RunState::default(),
        chronicle_core::ids::Seq(1),
        sim.now,
        &RunEvent::RunStarted {},
    )
    .unwrap_err();
    assert_yaml_snapshot!("fold_error_first_event", first.to_string());
}

#[test]
fn effects_list_attempts_to_run() {
    let (sim, _) = Sim::start(DIAMOND);
    let fx = effects(&sim.state);
    assert!(matches!(&fx[0], Effect::Run(s) if s.step == "a" && s.attempt == 1));
    assert_yaml_snapshot!(
        "effects_run_first_step",
        fx.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>()
    );
}

#[test]
fn unknown_event_type_is_an_error() {
    let err =
        serde_json::from_str::<RunEvent>(r#"{"type":"StepTeleported","step":"a"}"#).unwrap_err();
    assert!(err.to_string().contains("StepTeleported"), "{err}");
}
