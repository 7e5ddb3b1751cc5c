//! The shipped examples on the shipped logs.

use crate::support::{Env, root};

/// Lines and error/failure lines of a file, computed here independently.
fn expected(file: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(root().join("examples/data").join(file)).unwrap();
    let lines = text.matches('\n').count() as u64;
    let errors = text.lines().filter(|l| {
        let l = l.to_lowercase();
        l.contains("error") || l.contains("fail")
    });
    (lines, errors.count() as u64)
}

#[test]
fn log_audit_report_counts_match_the_files() {
    let env = Env::new();
    let out_dir = env.path("out");
    let input = format!("{{\"out\": \"{}\"}}", out_dir.display());
    let out = env.run_in_root(&["run", "examples/log-audit.yaml", "--input", &input]);
    assert_eq!(out.code, 0, "{out:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let files = report["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    for f in files {
        let name = f["file"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let (lines, errors) = expected(&name);
        assert_eq!(f["lines"].as_u64().unwrap(), lines, "{name} lines");
        assert_eq!(
            f["error_lines"].as_u64().unwrap(),
            errors,
            "{name} error lines"
        );
        assert_eq!(f["top"].as_array().unwrap().len(), 10, "{name} top 10");
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let total: u64 = [
        "HDFS_2k.log",
        "Apache_2k.log",
        "OpenSSH_2k.log",
        "Linux_2k.log",
    ]
    .iter()
    .map(|f| expected(f).0)
    .sum();
    assert!(md.contains(&format!("**{total}**")), "{md}");
}

#[test]
fn log_audit_flaky_step_retries() {
    let env = Env::new();
    let input = format!("{{\"out\": \"{}\"}}", env.path("out").display());
    let mut c = env.cmd();
    c.current_dir(root()).env("CHRONICLE_FLAKY", "1").args([
        "run",
        "examples/log-audit.yaml",
        "--input",
        &input,
    ]);
    let out = crate::support::Out::from(c.output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    let s = env.run(&["status", &out.run_id(), "--json"]).json();
    let errors = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["id"] == "errors-hdfs")
        .unwrap()
        .clone();
    assert_eq!(errors["attempts"], 3, "{errors}");
}

#[test]
fn agents_routes_by_skill_opens_a_circuit_and_leaves_one_task_unassigned() {
    let env = Env::new();
    let out = env.run_in_root(&["run", "examples/agents.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    let s = env.run(&["status", &out.run_id(), "--json"]).json();
    let step = |id: &str| {
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(step("summarize")["agent"], "summarizer");
    assert_eq!(step("classify")["agent"], "classifier");
    assert_eq!(step("extract-ids")["agent"], "steady");
    assert_eq!(step("analyze-context")["status"], "failed");
    assert_eq!(
        step("analyze-context")["reason"],
        "no agent has skill context_analysis"
    );
    let verify = env.run(&["verify", "--json"]).json();
    let streams: Vec<String> = verify["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["stream"].as_str().unwrap().to_string())
        .collect();
    assert!(
        streams.contains(&"agent:brittle".to_string()),
        "the circuit opened on agent:brittle: {streams:?}"
    );
    assert_eq!(verify["ok"], true);
}
