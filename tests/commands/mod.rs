//! Each command and each exit code, against a real database: most on
//! both backends (a redb file and PostgreSQL), see `both!`.

use crate::support::Env;

/// `both!(name)`: the test `name(env)` on a redb file and on a fresh
/// PostgreSQL database (the CLI suite on both backends).
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn redb() {
                super::$name(crate::support::Env::new())
            }
            #[test]
            fn postgres() {
                super::$name(crate::support::Env::postgres())
            }
        }
    };
}

mod agents;
mod audit;

const OK: &str = r#"
name: ok
steps:
  - id: a
    shell: echo '{"n":1}'
  - id: b
    needs: [a]
    shell: echo "$INPUT_N"
    with: { n: "${{ steps.a.output.n }}" }
"#;
const FAILS: &str = "name: fails\nsteps:\n  - id: a\n    command: ['false']\n    retry: { max_attempts: 2, initial_backoff: 10ms }\n";

both!(run_status_list_history_replay_verify_export_import);
fn run_status_list_history_replay_verify_export_import(env: Env) {
    let wf = env.write("ok.yaml", OK);
    let out = env.run(&[
        "run",
        wf.to_str().unwrap(),
        "--input",
        "{\"x\": 1}",
        "--idempotency-key",
        "k1",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    assert!(out.stdout.contains("succeeded"));
    // Same idempotency key and request: the same run, not a new one.
    let again = env.run(&[
        "run",
        wf.to_str().unwrap(),
        "--input",
        "{\"x\": 1}",
        "--idempotency-key",
        "k1",
    ]);
    assert_eq!(again.run_id(), run);
    // The same key with another input: refused, nothing created.
    let other = env.run(&["run", wf.to_str().unwrap(), "--idempotency-key", "k1"]);
    assert_eq!(other.code, 2, "{other:?}");
    assert!(
        other
            .stderr
            .contains("idempotency key \"k1\" was used for run"),
        "{other:?}"
    );
    assert_eq!(
        env.run(&["list", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let status = env.run(&["status", &run[..8], "--json"]);
    assert_eq!(status.code, 0, "{status:?}");
    let s = status.json();
    assert_eq!(s["run_id"], run.as_str());
    assert_eq!(s["workflow"], "ok");
    assert_eq!(s["status"], "succeeded");
    assert_eq!(s["steps"][0]["id"], "a");
    assert_eq!(s["steps"][0]["attempts"], 1);
    assert_eq!(s["steps"][1]["status"], "succeeded");

    let list = env.run(&["list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["run_id"], run.as_str());
    assert_eq!(list[0]["status"], "succeeded");
    assert_eq!(
        env.run(&["list", "--status", "failed", "--json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let hist = env.run(&["history", &run, "--json"]);
    let lines: Vec<serde_json::Value> = hist
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0]["payload"]["type"], "RunCreated");
    assert_eq!(lines[6]["payload"]["type"], "RunSucceeded");
    assert!(env.run(&["history", &run]).stdout.contains("StepSucceeded"));

    let at3 = env.run(&["replay", &run, "--at", "3", "--json"]).json();
    assert_eq!(at3["steps"]["a"]["status"], "running");
    assert_eq!(at3["seq"], 3);
    let tl = env.run(&["replay", &run, "--timeline"]);
    assert!(
        tl.stdout.contains("run pending -> running"),
        "{}",
        tl.stdout
    );
    let table = env.run(&["replay", &run]);
    assert!(table.stdout.contains("STEP"));

    let verify = env.run(&["verify", "--json"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert_eq!(verify.json()["ok"], true);

    let export = env.run(&["export", &run]);
    assert_eq!(export.code, 0);
    let file = env.write("history.jsonl", &export.stdout);
    let offline = env
        .run(&[
            "replay",
            "--file",
            file.to_str().unwrap(),
            "--at",
            "5",
            "--json",
        ])
        .json();
    assert_eq!(offline["seq"], 5);

    let other = env.path("other.redb");
    let imp = env.run(&[
        "--db",
        other.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert_eq!(imp.code, 0, "{imp:?}");
    let v2 = env.run(&["--db", other.to_str().unwrap(), "verify", &run]);
    assert_eq!(v2.code, 0, "{v2:?}");
    // Importing twice is refused and changes nothing.
    let twice = env.run(&[
        "--db",
        other.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert_eq!(twice.code, 2, "{twice:?}");
}

both!(a_failed_run_exits_1_and_fork_reruns_from_a_seq);
fn a_failed_run_exits_1_and_fork_reruns_from_a_seq(env: Env) {
    let wf = env.write("fails.yaml", FAILS);
    let out = env.run(&["run", wf.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("failed"));
    let run = out.run_id();
    // Fork at seq 2 (before any attempt) with the step's output overridden: succeeds.
    let fork = env.run(&[
        "fork",
        &run,
        "--at",
        "2",
        "--set-output",
        "a={\"fixed\": true}",
    ]);
    assert_eq!(fork.code, 0, "{fork:?}");
    let child = fork.run_id();
    assert_ne!(child, run);
    let s = env.run(&["status", &child, "--json"]).json();
    assert_eq!(s["forked_from"]["run_id"], run.as_str());
    assert_eq!(s["steps"][0]["output"]["fixed"], true);
    let src = env.run(&["status", &run, "--json"]).json();
    assert_eq!(src["status"], "failed", "the source is untouched");
    assert_eq!(src["forks"][0]["run_id"], child.as_str());
}

both!(pause_cancel_release_and_validate);
fn pause_cancel_release_and_validate(env: Env) {
    let wf = env.write("ok.yaml", OK);
    assert_eq!(env.run(&["validate", wf.to_str().unwrap()]).code, 0);
    // Create a run and leave it paused: run it, then pause on a new run via fork at seq 2.
    let out = env.run(&["run", wf.to_str().unwrap()]);
    let run = out.run_id();
    let paused_cancel = env.run(&["pause", &run]);
    assert_eq!(
        paused_cancel.code, 2,
        "a succeeded run cannot be paused: {paused_cancel:?}"
    );
    assert!(
        paused_cancel.stderr.contains("has ended"),
        "{}",
        paused_cancel.stderr
    );
    let unknown = env.run(&["cancel", "ffffffff"]);
    assert_eq!(unknown.code, 2);
    let quarantine = env.write(
        "q.yaml",
        "name: q\nsteps:\n  - id: a\n    shell: 'test -f ok || exit 1'\n    retry: { max_attempts: 1 }\n    on_exhausted: quarantine\n",
    );
    let q = env.run(&["run", quarantine.to_str().unwrap()]);
    assert_eq!(q.code, 1, "{q:?}");
    assert!(q.stdout.contains("quarantined"));
    let qrun = q.run_id();
    // Recovery does not continue a quarantined run, and says so apart
    // from the runs it continued.
    let rec = env.run(&["recover"]);
    assert_eq!(rec.code, 1, "the quarantined run is reported: {rec:?}");
    assert!(
        rec.stderr.contains("0 run(s) continued") && rec.stderr.contains("1 run(s) quarantined"),
        "{}",
        rec.stderr
    );
    assert!(!rec.stderr.contains("poison"), "{}", rec.stderr);
    env.write("ok", "");
    let rel = env.run(&["release", &qrun]);
    assert_eq!(rel.code, 0, "{rel:?}");
    assert_eq!(
        env.run(&["status", &qrun, "--json"]).json()["status"],
        "succeeded"
    );
    // A paused, then canceled run (created by a quarantine that is paused and canceled).
    let q2 = env.write(
        "q2.yaml",
        "name: q2\nsteps:\n  - id: a\n    command: ['false']\n    retry: { max_attempts: 1 }\n    on_exhausted: quarantine\n",
    );
    let r2 = env.run(&["run", q2.to_str().unwrap()]).run_id();
    let c = env.run(&["cancel", &r2]);
    assert_eq!(c.code, 0, "{c:?}");
    assert!(c.stdout.contains("canceled"));
}

#[test]
fn verify_finds_a_tampered_history_and_exits_1() {
    let env = Env::new();
    let wf = env.write("ok.yaml", OK);
    let run = env.run(&["run", wf.to_str().unwrap()]).run_id();
    let export = env.run(&["export", &run]).stdout;
    // Flip one byte of one payload in the export: import refuses it, naming the seq.
    let tampered = export.replacen("\"n\":1", "\"n\":2", 1);
    assert_ne!(tampered, export);
    let f = env.write("bad.jsonl", &tampered);
    let imp = env.run(&[
        "--db",
        env.path("x.redb").to_str().unwrap(),
        "import",
        f.to_str().unwrap(),
    ]);
    assert_eq!(imp.code, 2, "{imp:?}");
    assert!(
        imp.stderr.contains("hash chain breaks at seq"),
        "{}",
        imp.stderr
    );
}

#[test]
fn bench_rejects_an_unknown_kind_and_schema_prints() {
    let env = Env::new();
    assert_eq!(env.run(&["bench", "nope"]).code, 2);
    let schema = env.run(&["schema"]);
    assert_eq!(schema.code, 0);
    assert!(schema.stdout.contains("\"Workflow\"") || schema.stdout.contains("\"title\""));
}

#[test]
fn a_declared_secret_must_be_set_and_reaches_only_the_steps_that_ask() {
    let env = Env::new();
    let canary = "canary-51d2-secret";
    let wf = env.write(
        "s.yaml",
        "name: s\nsecrets: [API_TOKEN]\nsteps:\n  - id: asks\n    shell: 'echo \"len=${#T}\"'\n    env: { T: '${{ secrets.API_TOKEN }}' }\n  - id: other\n    shell: 'echo \"[$API_TOKEN]\"'\n",
    );
    // Not set: refused before anything is written.
    let mut cmd = env.cmd();
    cmd.env_remove("API_TOKEN")
        .args(["run", wf.to_str().unwrap()]);
    let out = crate::support::Out::from(cmd.output().unwrap());
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("API_TOKEN") && out.stderr.contains("not set"),
        "{}",
        out.stderr
    );
    if env.db().exists() {
        assert_eq!(env.run(&["list", "--json"]).json(), serde_json::json!([]));
    }
    // Set: the step that asks gets it, the other does not see it.
    let mut cmd = env.cmd();
    cmd.env("API_TOKEN", canary)
        .args(["run", wf.to_str().unwrap()]);
    let out = crate::support::Out::from(cmd.output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    let status = env.run(&["status", &out.run_id(), "--json"]).json();
    let asks = status["steps"][0]["output"].to_string();
    let other = status["steps"][1]["output"].to_string();
    assert!(asks.contains(&format!("len={}", canary.len())), "{asks}");
    assert!(
        other.contains("[]"),
        "a step that did not ask saw the secret: {other}"
    );
    assert!(!other.contains(canary));
}

both!(control_characters_in_messages_are_escaped);
fn control_characters_in_messages_are_escaped(env: Env) {
    let wf = env.write(
        "rlo.yaml",
        "name: x\nsteps:\n  - id: a\n    command: ['true']\n    needs: [\"b\\u202ec\\u001b[2J\"]\n",
    );
    let out = env.run(&["validate", wf.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("b\\u{202e}c\\u{001b}[2J"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{202e}') && !out.stderr.contains('\u{1b}'),
        "{:?}",
        out.stderr
    );
}

both!(without_ca_certificates_only_http_steps_fail_and_nothing_panics);
fn without_ca_certificates_only_http_steps_fail_and_nothing_panics(env: Env) {
    let empty = env.path("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let no_certs = |args: &[&str]| {
        let mut c = env.cmd();
        c.env("SSL_CERT_DIR", &empty)
            .env("SSL_CERT_FILE", empty.join("none.pem"))
            .args(args);
        crate::support::Out::from(c.output().unwrap())
    };
    let plain = env.write("plain.yaml", OK);
    let out = no_certs(&["run", plain.to_str().unwrap()]);
    assert_eq!(
        out.code, 0,
        "a run with no http step needs no certificate: {out:?}"
    );
    let http = env.write(
        "http.yaml",
        "name: h\nsteps:\n  - id: a\n    http: { url: 'http://127.0.0.1:9/x' }\n    retry: { max_attempts: 1 }\n",
    );
    let out = no_certs(&["run", http.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let status = env.run(&["status", &out.run_id(), "--json"]).json();
    let error = status["steps"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("CA certificates"), "{status}");
}

both!(json_logs_are_one_object_per_line_with_the_run_and_step);
fn json_logs_are_one_object_per_line_with_the_run_and_step(env: Env) {
    let wf = env.write("ok.yaml", OK);
    let out = env.run(&["-vv", "--log-format", "json", "run", wf.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out.run_id();
    let logs: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let attempts: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["message"] == "attempt started")
        .collect();
    assert_eq!(attempts.len(), 2, "{logs:?}");
    for (a, step) in attempts.iter().zip(["a", "b"]) {
        assert_eq!(a["span"]["run_id"], run.as_str());
        assert_eq!(a["span"]["step_id"], step);
        assert_eq!(a["level"], "DEBUG");
        assert!(a["timestamp"].as_str().is_some());
    }
    // The same through the environment variable.
    let mut c = env.cmd();
    c.env("CHRONICLE_LOG_FORMAT", "json")
        .args(["-vv", "run", wf.to_str().unwrap()]);
    let o = crate::support::Out::from(c.output().unwrap());
    assert!(
        o.stderr.lines().any(|l| l.starts_with("{\"timestamp\"")),
        "{o:?}"
    );
}
