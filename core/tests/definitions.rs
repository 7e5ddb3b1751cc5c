//! Bad definitions: each gets a clear error naming the file, the step and,
//! where known, the line — pinned by snapshots.

use chronicle_core::model::parse_definition;

const OK_STEP: &str = "  - id: a\n    command: [echo, a]\n";

fn err(file: &str, text: &str) -> String {
    match parse_definition(file, text) {
        Ok(_) => panic!("{file} should be rejected"),
        Err(e) => e.to_string(),
    }
}

/// Ten levels of aliases, each repeating the one below ten times.
fn alias_bomb() -> String {
    let mut s = String::from("name: bad\ninput:\n  a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(",");
        s.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    s.push_str(&format!("steps:\n{OK_STEP}"));
    s
}

fn steps(body: &str) -> String {
    format!("name: bad\nsteps:\n{body}")
}

#[test]
fn bad_definitions_are_rejected_with_clear_messages() {
    let huge = "x".repeat((1 << 20) + 1);
    let many: String = (0..10_001)
        .map(|i| format!("  - id: s{i}\n    command: [true]\n"))
        .collect();
    let cases: Vec<(&str, String)> = vec![
        ("malformed_yaml", "name: bad\nsteps: [\n  - id: a\n".into()),
        (
            "duplicate_key",
            format!("name: bad\nname: again\nsteps:\n{OK_STEP}"),
        ),
        (
            "negative_count",
            steps("  - id: a\n    command: [echo]\n    retry: { max_attempts: -3 }\n"),
        ),
        ("alias_bomb", alias_bomb()),
        (
            "control_character_in_name",
            format!("name: \"x\\u202eevil\"\nsteps:\n{OK_STEP}"),
        ),
        ("not_a_mapping", "- just\n- a list\n".into()),
        ("missing_name", format!("steps:\n{OK_STEP}")),
        ("empty_name", format!("name: ''\nsteps:\n{OK_STEP}")),
        ("no_steps", "name: bad\nsteps: []\n".into()),
        (
            "unknown_top_field",
            format!("name: bad\ncolour: blue\nsteps:\n{OK_STEP}"),
        ),
        (
            "unknown_step_field",
            steps("  - id: a\n    command: [echo]\n    retires: 3\n"),
        ),
        ("duplicate_step_id", steps(&format!("{OK_STEP}{OK_STEP}"))),
        ("bad_step_id", steps("  - id: 'a b'\n    command: [echo]\n")),
        (
            "unknown_dependency",
            steps("  - id: a\n    needs: [ghost]\n    command: [echo]\n"),
        ),
        (
            "needs_itself",
            steps("  - id: a\n    needs: [a]\n    command: [echo]\n"),
        ),
        (
            "needs_twice",
            steps(&format!(
                "{OK_STEP}  - id: b\n    needs: [a, a]\n    command: [echo]\n"
            )),
        ),
        (
            "cycle_of_three",
            steps(
                "  - id: a\n    needs: [c]\n    command: [echo]\n  - id: b\n    needs: [a]\n    command: [echo]\n  - id: c\n    needs: [b]\n    command: [echo]\n",
            ),
        ),
        ("no_executor", steps("  - id: a\n    needs: []\n")),
        (
            "two_executors",
            steps("  - id: a\n    command: [echo]\n    shell: echo hi\n"),
        ),
        (
            "executor_and_skills",
            steps("  - id: a\n    command: [echo]\n    skills: [x]\n"),
        ),
        ("empty_command", steps("  - id: a\n    command: []\n")),
        ("empty_skills", steps("  - id: a\n    skills: []\n")),
        (
            "bad_http_url",
            steps("  - id: a\n    http: { url: 'ftp://example.com' }\n"),
        ),
        (
            "bad_duration",
            steps("  - id: a\n    command: [echo]\n    timeout: soon\n"),
        ),
        (
            "zero_timeout",
            steps("  - id: a\n    command: [echo]\n    timeout: 0s\n"),
        ),
        (
            "negative_timeout",
            steps("  - id: a\n    command: [echo]\n    timeout: -5\n"),
        ),
        (
            "zero_max_attempts",
            steps("  - id: a\n    command: [echo]\n    retry: { max_attempts: 0 }\n"),
        ),
        (
            "multiplier_below_one",
            steps("  - id: a\n    command: [echo]\n    retry: { multiplier: 0.5 }\n"),
        ),
        (
            "initial_above_max_backoff",
            steps(
                "  - id: a\n    command: [echo]\n    retry: { initial_backoff: 10m, max_backoff: 1m }\n",
            ),
        ),
        (
            "bad_jitter",
            steps("  - id: a\n    command: [echo]\n    retry: { jitter: some }\n"),
        ),
        (
            "bad_on_exhausted",
            steps("  - id: a\n    command: [echo]\n    on_exhausted: panic\n"),
        ),
        (
            "template_unknown_step",
            steps("  - id: a\n    command: [echo]\n    with: { x: '${{ steps.ghost.output }}' }\n"),
        ),
        (
            "template_not_upstream",
            steps(
                "  - id: a\n    command: [echo]\n  - id: b\n    command: [echo]\n    with: { x: '${{ steps.a.output }}' }\n",
            ),
        ),
        (
            "template_bad_expression",
            steps("  - id: a\n    command: [echo]\n    with: { x: '${{ env.HOME }}' }\n"),
        ),
        (
            "template_unclosed",
            steps("  - id: a\n    command: [echo]\n    with: { x: '${{ input.file' }\n"),
        ),
        (
            "undeclared_secret",
            steps("  - id: a\n    command: [echo]\n    with: { t: '${{ secrets.TOKEN }}' }\n"),
        ),
        (
            "strategy_without_skills",
            steps("  - id: a\n    command: [echo]\n    strategy: round_robin\n"),
        ),
        (
            "agent_without_executor",
            format!("name: bad\nagents:\n  bot: {{ skills: [x] }}\nsteps:\n{OK_STEP}"),
        ),
        (
            "agent_zero_concurrency",
            format!(
                "name: bad\nagents:\n  bot: {{ skills: [x], command: [bot], concurrency: 0 }}\nsteps:\n{OK_STEP}"
            ),
        ),
        (
            "agent_zero_failure_threshold",
            format!(
                "name: bad\nagents:\n  bot: {{ skills: [x], command: [bot], circuit_breaker: {{ failure_threshold: 0 }} }}\nsteps:\n{OK_STEP}"
            ),
        ),
        (
            "agent_no_skills",
            format!(
                "name: bad\nagents:\n  bot: {{ skills: [], command: [bot] }}\nsteps:\n{OK_STEP}"
            ),
        ),
        (
            "zero_crash_limit",
            format!("name: bad\ndefaults: {{ quarantine_after_crashes: 0 }}\nsteps:\n{OK_STEP}"),
        ),
        (
            "string_too_long",
            steps(&format!("  - id: a\n    shell: '{huge}'\n")),
        ),
        ("too_many_steps", steps(&many)),
    ];
    assert!(cases.len() >= 30);
    for (name, text) in cases {
        let msg = err("bad.yaml", &text);
        insta::assert_snapshot!(name, msg);
    }
}

#[test]
fn json_definitions_report_line_and_column() {
    let msg = err(
        "bad.json",
        "{\"name\": \"x\", \"steps\": [ {\"id\": \"a\", \"command\": [\"echo\"], \"oops\": 1} ]}",
    );
    insta::assert_snapshot!("json_unknown_field", msg);
    let cyc = err(
        "cycle.json",
        "{\"name\": \"x\", \"steps\": [\n {\"id\": \"a\", \"needs\": [\"b\"], \"command\": [\"echo\"]},\n {\"id\": \"b\", \"needs\": [\"a\"], \"command\": [\"echo\"]}\n]}",
    );
    insta::assert_snapshot!("json_cycle", cyc);
}

#[test]
fn a_good_definition_round_trips_and_hashes_stably() {
    let text = "name: good\nsteps:\n  - id: a\n    command: [echo, a]\n    timeout: 30s\n";
    let wf = parse_definition("good.yaml", text).unwrap();
    let again = parse_definition("good.json", &serde_json::to_string(&wf).unwrap()).unwrap();
    assert_eq!(wf, again);
    assert_eq!(wf.sha256(), again.sha256());
    assert_eq!(wf.steps[0].timeout.unwrap().ms, 30_000);
}

#[test]
fn the_json_schema_is_published_and_current() {
    let schema = chronicle_core::model::json_schema();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/workflow.schema.json"
    ))
    .expect("docs/workflow.schema.json is committed (regenerate with CHRONICLE_WRITE_SCHEMA=1)");
    if std::env::var("CHRONICLE_WRITE_SCHEMA").is_ok() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/workflow.schema.json"),
            &schema,
        )
        .unwrap();
        return;
    }
    assert_eq!(
        committed, schema,
        "docs/workflow.schema.json is stale: rerun with CHRONICLE_WRITE_SCHEMA=1"
    );
}

#[test]
fn an_agents_health_check_is_one_command_script_or_url() {
    let agent = |health: &str| {
        format!(
            "name: h\nagents:\n  a:\n    skills: [x]\n    command: ['true']\n    health: {health}\nsteps:\n  - id: s\n    skills: [x]\n"
        )
    };
    let ok = parse_definition("h.yaml", &agent("{ shell: 'true', interval: 10s }")).unwrap();
    let h = ok.agents["a"].health.as_ref().unwrap();
    assert_eq!((h.interval.ms, h.timeout.ms), (10_000, 5_000));
    for (bad, why) in [
        (
            "{ shell: 'true', http: 'http://x' }",
            "exactly one of command, shell, http (has 2)",
        ),
        (
            "{ interval: 10s }",
            "exactly one of command, shell, http (has 0)",
        ),
        ("{ http: 'ftp://x' }", "must start with http:// or https://"),
        ("{ command: [] }", "health.command is an empty argv list"),
        ("{ shell: 'true', interval: 0s }", "must be above zero"),
    ] {
        let e = parse_definition("h.yaml", &agent(bad)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}
