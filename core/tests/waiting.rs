//! Given/when/then snapshots of waiting steps: durable timers, signals and
//! approvals. Each command runs live and through replay (`Sim::apply`).

mod support;

use chronicle_core::decide::Command;
use chronicle_core::effects::{Effect, effects};
use chronicle_core::event::ApprovalDecision;
use chronicle_core::model::ErrorKind;
use insta::assert_yaml_snapshot;
use serde_json::json;
use support::{Sim, brief, t0};

const SLEEP: &str = "
name: cool-off
steps:
  - id: build
    command: [make]
  - id: cool-off
    needs: [build]
    sleep: 10m
  - id: deploy
    needs: [cool-off]
    command: [deploy]
";

const SIGNAL: &str = "
name: deployed
steps:
  - id: build
    command: [make]
  - id: deployed
    needs: [build]
    signal: deployed
    timeout: 24h
  - id: notify
    needs: [deployed]
    command: [notify]
";

const APPROVAL: &str = "
name: sign-off
steps:
  - id: sign-off
    approval: { approvers: [alice, bob], min_approvals: 2 }
    timeout: 72h
  - id: release
    needs: [sign-off]
    command: [release]
";

fn timers(sim: &Sim) -> Vec<String> {
    effects(&sim.state)
        .iter()
        .map(|e| match e {
            Effect::Timer(t) => format!("timer {}", t.to_rfc3339()),
            other => format!("{other:?}"),
        })
        .collect()
}

fn signal(name: &str, id: &str, data: serde_json::Value) -> Command {
    Command::Signal {
        name: name.into(),
        id: id.into(),
        data,
    }
}

fn decision(step: &str, by: &str, d: ApprovalDecision, comment: Option<&str>) -> Command {
    Command::Approval {
        step: step.into(),
        by: by.into(),
        decision: d,
        comment: comment.map(str::to_string),
    }
}

#[test]
fn a_timer_starts_survives_a_crash_and_fires_once_when_due() {
    let (mut sim, _) = Sim::start(SLEEP);
    assert_yaml_snapshot!(
        "timer_1_build_ok_starts_the_timer",
        brief(&sim.ok("build", json!(null)))
    );
    // The runtime is asked to wake at the timer; nothing runs.
    assert_yaml_snapshot!("timer_2_effects_wake_at_fire_at", timers(&sim));
    // Before it is due, a tick changes nothing.
    sim.advance_ms(9 * 60 * 1000);
    assert!(sim.cmd(Command::Tick).is_empty());
    // A crash and recovery: the wait is not an attempt that was cut off.
    assert_yaml_snapshot!(
        "timer_3_recovery_abandons_nothing",
        brief(&sim.cmd(Command::Recover))
    );
    assert_eq!(sim.status("cool-off"), "running");
    // Due (here: well past due, as after a long outage): it fires once.
    sim.advance_ms(3 * 60 * 60 * 1000);
    assert_yaml_snapshot!(
        "timer_4_fires_and_deploy_starts",
        brief(&sim.cmd(Command::Tick))
    );
    assert!(sim.cmd(Command::Tick).is_empty(), "fires once");
    assert_eq!(sim.status("deploy"), "running");
}

#[test]
fn a_stop_leaves_a_timer_waiting_and_a_cancel_ends_it() {
    let (mut sim, _) = Sim::start(SLEEP);
    sim.ok("build", json!(null));
    assert!(
        sim.cmd(Command::Stop {
            reason: "SIGTERM".into()
        })
        .is_empty(),
        "nothing of a waiting step runs: a stop abandons nothing"
    );
    let canceled = sim.cmd(Command::Cancel {
        reason: "not today".into(),
    });
    assert_yaml_snapshot!("timer_canceled_ends_the_run", brief(&canceled));
    assert_eq!(sim.state.status.as_str(), "canceled");
}

#[test]
fn sleep_until_a_past_moment_fires_at_once() {
    let past = "
name: until
steps:
  - id: wait
    sleep_until: \"2025-01-01T00:00:00Z\"
  - id: after
    needs: [wait]
    command: [echo]
";
    let (sim, created) = Sim::start(past);
    assert_yaml_snapshot!("sleep_until_past_fires_in_the_same_commit", brief(&created));
    assert_eq!(sim.status("after"), "running");
}

#[test]
fn a_signal_after_the_wait_is_its_output() {
    let (mut sim, _) = Sim::start(SIGNAL);
    assert_yaml_snapshot!(
        "signal_after_1_step_waits",
        brief(&sim.ok("build", json!(null)))
    );
    let got = sim.cmd(signal("deployed", "sig-1", json!({"version": "1.4.2"})));
    assert_yaml_snapshot!(
        "signal_after_2_received_consumed_notify_starts",
        brief(&got)
    );
    assert_eq!(
        sim.state.steps["deployed"].output,
        Some(json!({"version": "1.4.2"}))
    );
    assert!(sim.state.signals.is_empty(), "consumed");
}

#[test]
fn signals_before_the_wait_are_buffered_and_consumed_in_order() {
    let (mut sim, _) = Sim::start(SIGNAL);
    let early = sim.cmd(signal("deployed", "sig-1", json!({"n": 1})));
    assert_yaml_snapshot!("signal_before_1_buffered", brief(&early));
    sim.cmd(signal("deployed", "sig-2", json!({"n": 2})));
    sim.cmd(signal("other", "sig-3", json!({"n": 3})));
    // A repeated id is recorded once: the second delivery decides nothing.
    let repeated = sim.cmd(signal("deployed", "sig-1", json!({"n": 99})));
    assert_yaml_snapshot!("signal_duplicate_id_records_nothing", brief(&repeated));
    assert!(repeated.is_empty());
    assert_eq!(sim.state.signals.len(), 3);
    let reached = sim.ok("build", json!(null));
    assert_yaml_snapshot!("signal_before_2_step_consumes_the_oldest", brief(&reached));
    assert_eq!(sim.state.steps["deployed"].output, Some(json!({"n": 1})));
    let left: Vec<&str> = sim.state.signals.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(left, ["sig-2", "sig-3"]);
}

#[test]
fn a_signal_wait_times_out_without_retry() {
    let (mut sim, _) = Sim::start(SIGNAL);
    sim.ok("build", json!(null));
    sim.advance_ms(24 * 60 * 60 * 1000);
    let out = sim.cmd(Command::Tick);
    assert_yaml_snapshot!("signal_timeout_fails_the_step_and_run", brief(&out));
    assert_eq!(sim.state.status.as_str(), "failed");
}

#[test]
fn approvals_count_listed_approvers_once_each() {
    let (mut sim, created) = Sim::start(APPROVAL);
    assert_yaml_snapshot!("approval_1_requested", brief(&created));
    let stranger = sim
        .try_cmd(decision(
            "sign-off",
            "mallory",
            ApprovalDecision::Approve,
            None,
        ))
        .unwrap_err();
    assert_yaml_snapshot!("approval_2_non_approver_refused", stranger.to_string());
    let first = sim.cmd(decision(
        "sign-off",
        "alice",
        ApprovalDecision::Approve,
        Some("tests green"),
    ));
    assert_yaml_snapshot!("approval_3_first_of_two", brief(&first));
    assert!(
        sim.cmd(decision(
            "sign-off",
            "alice",
            ApprovalDecision::Approve,
            None
        ))
        .is_empty(),
        "alice counts once"
    );
    let second = sim.cmd(decision("sign-off", "bob", ApprovalDecision::Approve, None));
    assert_yaml_snapshot!(
        "approval_4_second_succeeds_and_release_starts",
        brief(&second)
    );
    let late = sim
        .try_cmd(decision("sign-off", "bob", ApprovalDecision::Reject, None))
        .unwrap_err();
    assert_yaml_snapshot!("approval_5_after_the_wait_refused", late.to_string());
}

#[test]
fn a_rejection_fails_the_step() {
    let (mut sim, _) = Sim::start(APPROVAL);
    let out = sim.cmd(decision(
        "sign-off",
        "bob",
        ApprovalDecision::Reject,
        Some("not this week"),
    ));
    assert_yaml_snapshot!("approval_rejected_fails_step_and_run", brief(&out));
    assert_eq!(sim.state.status.as_str(), "failed");
}

#[test]
fn a_rejection_follows_on_exhausted_quarantine() {
    let q = "
name: q
steps:
  - id: ok
    approval: {}
    on_exhausted: quarantine
";
    let (mut sim, _) = Sim::start(q);
    let out = sim.cmd(decision("ok", "anyone", ApprovalDecision::Reject, None));
    assert!(
        out.iter().any(|e| e.name() == "RunQuarantined"),
        "{:?}",
        brief(&out)
    );
}

#[test]
fn waits_hold_no_slot_and_the_state_says_what_they_wait_for() {
    let (mut sim, _) = Sim::start(SIGNAL);
    sim.ok("build", json!(null));
    let st = &sim.state.steps["deployed"];
    assert_yaml_snapshot!("wait_in_state", st.wait);
    assert!(sim.state.executing().is_empty());
    assert_eq!(sim.state.running().len(), 1);
    // With no slot free, a waiting step still starts (it runs nothing);
    // an executing one does not.
    let (mut full, _) = Sim::start(APPROVAL);
    full.slots = 0;
    assert_eq!(full.status("sign-off"), "running");
    assert!(full.state.steps["sign-off"].wait.is_some());
    let _ = t0();
    let _ = ErrorKind::Timeout;
}

/// A parent with a child workflow (the child's definition pinned in the
/// parent's, as the loader embeds it).
fn parent_yaml() -> String {
    "
name: parent
steps:
  - id: audit
    workflow: child.yaml
    child: { name: child, steps: [ { id: x, command: [x] } ] }
    with: { data: d }
  - id: after
    needs: [audit]
    command: [echo]
"
    .to_string()
}

fn child_id() -> chronicle_core::ids::RunId {
    chronicle_core::ids::RunId(uuid::Uuid::from_u128(
        0x0190_0000_0000_7000_8000_0000_0000_0002,
    ))
}

#[test]
fn a_child_run_is_recorded_once_and_its_failure_fails_the_step() {
    let (mut sim, created) = Sim::start(&parent_yaml());
    assert_yaml_snapshot!("child_1_step_starts", brief(&created[2..]));
    let fx: Vec<String> = effects(&sim.state)
        .iter()
        .map(|e| match e {
            Effect::Run(sa) => format!(
                "run {} attempt {}: child {}",
                sa.step,
                sa.attempt,
                sa.exec
                    .child
                    .as_ref()
                    .map(|c| c.name.as_str())
                    .unwrap_or("-")
            ),
            other => format!("{other:?}"),
        })
        .collect();
    assert_yaml_snapshot!("child_2_effect_runs_the_child", fx);
    let started = sim.cmd(Command::ChildStarted {
        step: "audit".into(),
        attempt: 1,
        child_run_id: child_id(),
    });
    assert_yaml_snapshot!("child_3_started_recorded", brief(&started));
    // The same child found again (a retry of the message): recorded once.
    assert!(
        sim.cmd(Command::ChildStarted {
            step: "audit".into(),
            attempt: 1,
            child_run_id: child_id(),
        })
        .is_empty()
    );
    let failed = sim.fail("audit", ErrorKind::Permanent, None);
    assert_yaml_snapshot!("child_4_child_failure_fails_the_parent", brief(&failed));
}

#[test]
fn canceling_the_parent_kills_the_child_attempt() {
    let (mut sim, _) = Sim::start(&parent_yaml());
    sim.cmd(Command::ChildStarted {
        step: "audit".into(),
        attempt: 1,
        child_run_id: child_id(),
    });
    sim.cmd(Command::Cancel {
        reason: "stop it".into(),
    });
    let fx: Vec<String> = effects(&sim.state)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_yaml_snapshot!("child_parent_cancel_kills_the_child_attempt", fx);
    let ended = sim.fail("audit", ErrorKind::Canceled, None);
    assert_yaml_snapshot!("child_parent_canceled", brief(&ended));
}

const CALLBACK: &str = "
name: render
steps:
  - id: render
    http: { method: POST, url: \"http://renderer.example/jobs\" }
    completion: callback
    timeout: 1h
    retry: { max_attempts: 1 }
  - id: other
    signal: never
";

fn issue(sim: &mut Sim) -> Vec<chronicle_core::event::RunEvent> {
    sim.cmd(Command::CallbackIssued {
        step: "render".into(),
        attempt: 1,
        token_sha256: "ab".repeat(32),
    })
}

#[test]
fn a_callback_completes_the_step_once() {
    let (mut sim, _) = Sim::start(CALLBACK);
    assert_yaml_snapshot!("callback_1_issued", brief(&issue(&mut sim)));
    // The request is in flight: a crash now abandons the attempt.
    assert_eq!(sim.state.executing().len(), 1);
    let accepted = sim.ok("render", json!({"job": 7}));
    assert_yaml_snapshot!("callback_2_accepted_waits", brief(&accepted));
    assert!(sim.state.executing().is_empty(), "accepted: nothing runs");
    assert!(sim.state.parked(), "waits only for the outside world");
    let done = sim.cmd(Command::Callback {
        token_sha256: "ab".repeat(32),
        output: json!({"pdf": "x.pdf"}),
    });
    assert_yaml_snapshot!("callback_3_received_succeeds", brief(&done));
    let twice = sim
        .try_cmd(Command::Callback {
            token_sha256: "ab".repeat(32),
            output: json!({}),
        })
        .unwrap_err();
    assert_yaml_snapshot!("callback_4_twice_refused", twice.to_string());
}

#[test]
fn a_callback_after_the_timeout_is_refused() {
    let (mut sim, _) = Sim::start(CALLBACK);
    issue(&mut sim);
    sim.ok("render", json!({"job": 7}));
    sim.advance_ms(60 * 60 * 1000);
    let timed_out = sim.cmd(Command::Tick);
    assert_yaml_snapshot!("callback_timeout_fails_the_step", brief(&timed_out));
    let late = sim
        .try_cmd(Command::Callback {
            token_sha256: "ab".repeat(32),
            output: json!({}),
        })
        .unwrap_err();
    assert_yaml_snapshot!("callback_after_timeout_refused", late.to_string());
    assert!(late.to_string().contains("no step of run"), "{late}");
}

#[test]
fn polling_starts_after_the_request_is_accepted_and_survives_recovery() {
    let wf = "
name: poll
steps:
  - id: render
    http: { method: POST, url: \"http://renderer.example/jobs\" }
    completion: { poll: { url: \"http://renderer.example/jobs/${{ steps.render.output.id }}\", every: 30s } }
";
    let (mut sim, _) = Sim::start(wf);
    let accepted = sim.ok("render", json!({"id": 42}));
    assert_yaml_snapshot!("poll_1_accepted_polls_the_resolved_url", brief(&accepted));
    let fx: Vec<String> = effects(&sim.state)
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_yaml_snapshot!("poll_2_effect_polls", fx);
    assert!(
        sim.cmd(Command::Recover).is_empty(),
        "a crash does not cut the polling"
    );
    let done = sim.ok("render", json!({"status": "done", "pdf": "42.pdf"}));
    assert_yaml_snapshot!("poll_3_terminal_answer_succeeds", brief(&done));
}

#[test]
fn a_pause_lets_a_timer_fire_but_starts_nothing_until_resumed() {
    let (mut sim, _) = Sim::start(SLEEP);
    sim.ok("build", json!(null));
    sim.cmd(Command::Pause);
    sim.advance_ms(10 * 60 * 1000);
    let fired = sim.cmd(Command::Tick);
    assert_yaml_snapshot!("pause_timer_fires_nothing_starts", brief(&fired));
    assert_eq!(sim.status("deploy"), "ready");
    let resumed = sim.cmd(Command::Resume);
    assert_eq!(resumed.last().unwrap().name(), "StepStarted");
    assert_eq!(sim.status("deploy"), "running");
}
