//! The shipped examples on the shipped logs.

use crate::support::{Env, root};

/// What the report must say of one log file, computed here independently
/// of the example's shell scripts.
struct Expected {
    /// Lines as a person counts them (a last line without a newline
    /// counts; CRLF ends a line once).
    lines: u64,
    /// Lines with "error" or "fail", any case.
    errors: u64,
    /// SHA-256 of the bytes, hex.
    sha256: String,
    /// (count, message) of every masked message, most frequent first.
    messages: Vec<(u64, String)>,
}

/// Lowercase, hex runs of 8+ characters as `<id>`, digit runs as `<n>`,
/// whitespace runs as one space (as the report's awk prints them).
fn mask(line: &str) -> String {
    let l = line.to_lowercase();
    let chars: Vec<char> = l.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let hex = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if hex >= 8 {
            out.push_str("<id>");
            i += hex;
        } else if chars[i].is_ascii_digit() {
            let n = chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            out.push_str("<n>");
            i += n;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn expected(file: &str) -> Expected {
    use sha2::Digest;
    let bytes = std::fs::read(root().join("examples/data").join(file)).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let errors = text.lines().filter(|l| {
        let l = l.to_lowercase();
        l.contains("error") || l.contains("fail")
    });
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for l in text.lines() {
        *counts.entry(mask(l)).or_default() += 1;
    }
    let mut messages: Vec<(u64, String)> = counts.into_iter().map(|(m, c)| (c, m)).collect();
    messages.sort_by_key(|m| std::cmp::Reverse(m.0));
    Expected {
        lines: text.lines().count() as u64,
        errors: errors.count() as u64,
        sha256: sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        messages,
    }
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
        let want = expected(&name);
        assert_eq!(f["lines"].as_u64().unwrap(), want.lines, "{name} lines");
        assert_eq!(
            f["error_lines"].as_u64().unwrap(),
            want.errors,
            "{name} error lines"
        );
        assert_eq!(f["sha256"].as_str().unwrap(), want.sha256, "{name} sha256");
        // The ten most frequent: the same counts, and each message with
        // its count (ties may come in any order).
        let top = f["top"].as_array().unwrap();
        assert_eq!(top.len(), 10, "{name} top 10");
        let counts: Vec<u64> = top.iter().map(|t| t["count"].as_u64().unwrap()).collect();
        let want_counts: Vec<u64> = want.messages.iter().take(10).map(|m| m.0).collect();
        assert_eq!(counts, want_counts, "{name} top counts");
        for t in top {
            let entry = (
                t["count"].as_u64().unwrap(),
                t["message"].as_str().unwrap().to_string(),
            );
            assert!(
                want.messages.contains(&entry),
                "{name}: {entry:?} is not a masked message with that count"
            );
        }
    }
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let total: u64 = [
        "HDFS_2k.log",
        "Apache_2k.log",
        "OpenSSH_2k.log",
        "Linux_2k.log",
    ]
    .iter()
    .map(|f| expected(f).lines)
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
