//! Given/when/then snapshots for routing to agents, circuit breakers and
//! forks. Each test runs live and through replay (see `support::Sim::apply`).

mod support;

use chronicle_core::circuit::Breaker;
use chronicle_core::decide::{AgentView, Command, decide_fork};
use chronicle_core::model::{CircuitPolicy, ErrorKind, HumanDuration};
use chronicle_core::state::{RunState, fold};
use insta::assert_yaml_snapshot;
use serde_json::json;
use support::{DIAMOND, Sim, brief};

const AGENTS: &str = "
name: agents
agents:
  alpha:
    skills: [summarize, translate]
    command: [alpha]
  beta:
    skills: [summarize]
    command: [beta]
    concurrency: 2
steps:
  - id: both
    skills: [summarize, translate]
  - id: s1
    skills: [summarize]
    strategy: round_robin
  - id: s2
    skills: [summarize]
    strategy: round_robin
  - id: s3
    skills: [summarize]
    strategy: round_robin
";

#[test]
fn routing_by_skills_and_round_robin() {
    let (sim, started) = Sim::start(AGENTS);
    assert_yaml_snapshot!("routing_1_all_skills_and_round_robin", brief(&started));
    let agents: Vec<_> = ["both", "s1", "s2", "s3"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                sim.state.steps[*s]
                    .attempts
                    .last()
                    .and_then(|a| a.agent.clone()),
                sim.status(s),
            )
        })
        .collect();
    assert_yaml_snapshot!("routing_2_who_took_what", agents);
}

#[test]
fn least_loaded_prefers_the_idle_agent() {
    let yaml = "
name: ll
agents:
  busy: { skills: [x], command: [b], concurrency: 4 }
  idle: { skills: [x], command: [i], concurrency: 4 }
steps:
  - id: job
    skills: [x]
    strategy: least_loaded
";
    let mut sim = Sim::empty();
    sim.agents.insert(
        "busy".into(),
        AgentView {
            running: 3,
            ..Default::default()
        },
    );
    sim.cmd(Command::Create {
        run_id: support::run_id(),
        workflow: std::sync::Arc::new(support::wf(yaml)),
        input: json!({}),
        idempotency_key: None,
        seed: 1,
        trace_id: None,
        parent: None,
    });
    assert_yaml_snapshot!("routing_3_least_loaded", brief(&sim.cmd(Command::Start)));
}

#[test]
fn no_agent_with_the_skill_leaves_the_step_unassigned_and_the_rest_goes_on() {
    let yaml = "
name: plan
agents:
  writer: { skills: [write], command: [w] }
steps:
  - id: draft
    skills: [write]
  - id: analyze
    skills: [context_analysis]
  - id: publish
    needs: [draft]
    command: [publish]
";
    let (mut sim, started) = Sim::start(yaml);
    assert_yaml_snapshot!("routing_4_unassigned_with_reason", brief(&started));
    sim.sync_agents();
    sim.ok("draft", json!(null));
    let end = sim.ok("publish", json!(null));
    assert_yaml_snapshot!("routing_5_rest_completes_run_fails", brief(&end));
}

#[test]
fn circuit_open_blocks_then_half_open_probe_closes_it() {
    let yaml = "
name: breaker
agents:
  shaky:
    skills: [work]
    command: [shaky]
    circuit_breaker: { failure_threshold: 2, cool_down: 10s }
steps:
  - id: job
    skills: [work]
    retry: { max_attempts: 5, initial_backoff: 1s, multiplier: 1 }
";
    let policy = CircuitPolicy {
        failure_threshold: 2,
        cool_down: HumanDuration::from_secs(10),
    };
    let (mut sim, _) = Sim::start(yaml);
    sim.breakers.insert("shaky".into(), Breaker::default());
    let mut agent_events = Vec::new();
    for attempt in 1..=2 {
        sim.fail("job", ErrorKind::Transient, Some(1));
        let now = sim.now;
        agent_events.extend(record(
            sim.breakers.get_mut("shaky").unwrap(),
            false,
            attempt,
            now,
            &policy,
        ));
        sim.advance_ms(1000);
        sim.sync_agents();
        let tick = sim.cmd(Command::Tick);
        if sim.breakers["shaky"].state.as_str() == "open" {
            assert_yaml_snapshot!("circuit_2_open_blocks_step", brief(&tick));
        }
    }
    assert_yaml_snapshot!("circuit_1_opened_after_two_failures", agent_events);
    assert_eq!(sim.status("job"), "blocked");
    assert_eq!(
        sim.state.steps["job"].budget_used(),
        2,
        "blocked time spends no attempts"
    );
    sim.advance_ms(10_000);
    let now = sim.now;
    let half = sim.breakers.get_mut("shaky").unwrap().on_tick(now);
    assert_yaml_snapshot!("circuit_3_half_open", half);
    assert_yaml_snapshot!("circuit_4_probe_assigned", brief(&sim.cmd(Command::Tick)));
    sim.ok("job", json!("probe ok"));
    let now = sim.now;
    let closed = record(
        sim.breakers.get_mut("shaky").unwrap(),
        true,
        3,
        now,
        &policy,
    );
    assert_yaml_snapshot!("circuit_5_closed_after_probe", closed);
}

/// Decide an attempt's outcome on a breaker and fold it.
fn record(
    b: &mut Breaker,
    success: bool,
    attempt: u32,
    now: chrono::DateTime<chrono::Utc>,
    policy: &CircuitPolicy,
) -> Vec<chronicle_core::event::AgentEvent> {
    let on = chronicle_core::circuit::AttemptOn {
        run_id: "run",
        step: "job",
        attempt,
    };
    let events = b.decide_outcome(on, success, now, policy);
    for e in &events {
        b.apply(e);
    }
    events
}

#[test]
fn fork_at_a_seq_carries_succeeded_steps() {
    let (mut sim, _) = Sim::start(DIAMOND);
    sim.ok("a", json!({"n": 1}));
    sim.ok("b", json!({"n": 2}));
    let at = sim.state.seq;
    sim.fail("c", ErrorKind::Permanent, Some(3));
    // State of the source at `at`, by folding its history up to there.
    let source: RunState = fold(
        sim.history
            .iter()
            .filter(|(s, _, _)| *s <= at)
            .map(|(s, t, e)| (*s, *t, e)),
    )
    .unwrap();
    let new_run = chronicle_core::ids::RunId(uuid::Uuid::from_u128(2));
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert("b".to_string(), json!({"n": 20}));
    let forked = decide_fork(&source, at, new_run, None, overrides, 7).unwrap();
    assert_yaml_snapshot!("fork_1_run_forked", brief(std::slice::from_ref(&forked)));
    let mut child = Sim::empty();
    child.apply(&[forked]);
    assert_yaml_snapshot!(
        "fork_2_child_starts_remaining_steps",
        brief(&child.cmd(Command::Start))
    );
    let bad = decide_fork(
        &source,
        at,
        new_run,
        None,
        [("zzz".to_string(), json!(1))].into(),
        7,
    )
    .unwrap_err();
    assert_yaml_snapshot!("fork_3_unknown_step_override", bad.to_string());
}
