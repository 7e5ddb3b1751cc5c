//! `chronicle upgrade-check`: the examples' recorded runs against their
//! own definitions and small edits of them, pinned by snapshots.

use crate::support::{Env, root};

/// Run `example` once, then check it against each edited definition;
/// one line per case. `with_seq`: whether the seq of the first
/// difference is deterministic for this example (runs whose steps end
/// in parallel may record them in another order).
fn verdicts(example: &str, cases: &[(&str, String)], with_seq: bool) -> String {
    let env = Env::new();
    let out = env.run_in_root(&["run", &format!("examples/{example}.yaml")]);
    assert!(out.code == 0, "{out:?}");
    let mut lines = Vec::new();
    for (name, text) in cases {
        let file = env.write(&format!("{name}.yaml"), text);
        let r = env.run_in_root(&["upgrade-check", file.to_str().unwrap(), "--json"]);
        let v = r.json();
        assert_eq!(r.code, if v["compatible"] == true { 0 } else { 1 }, "{r:?}");
        let run = &v["runs"][0];
        let line = if run["compatible"] == true {
            format!("{name}: compatible ({} events)", run["events"])
        } else {
            let at = if with_seq {
                format!(" at seq {}", run["first_difference_seq"])
            } else {
                String::new()
            };
            format!(
                "{name}: differs{at}: recorded {}; decides {} ({})",
                run["recorded"].as_str().unwrap(),
                run["decided"].as_str().unwrap(),
                run["reason"].as_str().unwrap()
            )
        };
        lines.push(line);
    }
    lines.join("\n")
}

#[test]
fn log_audit_against_small_edits() {
    let original = std::fs::read_to_string(root().join("examples/log-audit.yaml")).unwrap();
    let cases = vec![
        ("unchanged", original.clone()),
        // Another script for a step: the same decisions.
        (
            "command-changed",
            original.replacen(
                "examples/log-audit/count.sh",
                "examples/log-audit/./count.sh",
                1,
            ),
        ),
        // A retry policy that never applied: the same decisions.
        (
            "retry-changed",
            original.replacen("retry: { max_attempts: 4,", "retry: { max_attempts: 7,", 1),
        ),
        // A dependency added: errors-hdfs would wait for count-hdfs.
        (
            "dependency-added",
            original.replacen(
                "  - id: errors-hdfs\n",
                "  - id: errors-hdfs\n    needs: [count-hdfs]\n",
                1,
            ),
        ),
    ];
    for (name, c) in &cases[1..] {
        assert_ne!(c, &original, "the edit {name} applies");
    }
    insta::assert_snapshot!(verdicts("log-audit", &cases, true));
}

#[test]
fn agents_against_small_edits() {
    let original = std::fs::read_to_string(root().join("examples/agents.yaml")).unwrap();
    let cases = vec![
        ("unchanged", original.clone()),
        // Fewer attempts: extract-ids would have given up before steady.
        (
            "fewer-attempts",
            original.replacen("max_attempts: 4", "max_attempts: 2", 1),
        ),
        // A step removed: what was recorded of it no longer fits.
        (
            "step-removed",
            original.replacen(
                "  - id: analyze-context\n    skills: [context_analysis]\n    continue_on_failure: true\n",
                "",
                1,
            ),
        ),
    ];
    for (name, c) in &cases[1..] {
        assert_ne!(c, &original, "the edit {name} applies");
    }
    insta::assert_snapshot!(verdicts("agents", &cases, false));
}
