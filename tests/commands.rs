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

both!(a_recorded_head_proves_the_history_up_to_it_unchanged);
fn a_recorded_head_proves_the_history_up_to_it_unchanged(env: Env) {
    let marker = format!("head-{}", std::process::id());
    let wf = env.write(
        "wf.yaml",
        &format!("name: h\nsteps:\n  - id: a\n    shell: touch a.started; sleep 1 # {marker}\n  - id: b\n    needs: [a]\n    command: ['true']\n"),
    );
    // A run left in flight by kill -9: record its head.
    let mut child = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::support::wait_for(&env.path("a.started"));
    child.kill().unwrap();
    child.wait().unwrap();
    crate::support::kill_marked(&marker);
    let v = env.run(&["verify", "--json"]).json();
    let stream = &v["streams"][0];
    let run = stream["stream"].as_str().unwrap().to_string();
    let head = stream["head_hash"].as_str().unwrap().to_string();
    let head_seq = stream["head_seq"].as_u64().unwrap();
    assert_eq!(head.len(), 64);
    assert_eq!(stream["events"].as_u64().unwrap(), head_seq);
    // The run goes on: events are appended after the recorded head. On
    // PostgreSQL the killed process's lease must expire first (10 s):
    // until then `recover` names its holder and continues nothing.
    let t = std::time::Instant::now();
    loop {
        let r = env.run(&["recover"]);
        assert_eq!(r.code, 0, "{r:?}");
        if r.stderr.contains("1 run(s) continued") {
            break;
        }
        assert!(env.url.is_some(), "redb continues it at once: {r:?}");
        assert!(r.stderr.contains("held by "), "{r:?}");
        assert!(t.elapsed().as_secs() < 30, "never continued: {r:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let ok = env.run(&["verify", &run, "--expect-head", &head]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains(&format!(
            "{head} is event {head_seq}: the history up to it is unchanged"
        )),
        "{ok:?}"
    );
    let j = env
        .run(&["verify", &run, "--expect-head", &head, "--json"])
        .json();
    assert_eq!(j["expect_head"]["found_at_seq"], head_seq);
    assert!(j["streams"][0]["head_seq"].as_u64().unwrap() > head_seq);
    // Another hash: not this run's history.
    let other = "0".repeat(64);
    let bad = env.run(&["verify", &run, "--expect-head", &other]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stdout.contains("FAIL  head"), "{bad:?}");
    let malformed = env.run(&["verify", &run, "--expect-head", "xyz"]);
    assert_eq!(malformed.code, 2, "{malformed:?}");
    let no_run = env.run(&["verify", "--expect-head", &head]);
    assert_eq!(no_run.code, 2, "{no_run:?}");
}

both!(diff_compares_two_runs_and_finds_where_they_diverge);
fn diff_compares_two_runs_and_finds_where_they_diverge(env: Env) {
    let wf = env.write(
        "d.yaml",
        "name: d\ninput: { ok: \"yes\" }\nsteps:\n  - id: check\n    shell: test \"$INPUT_OK\" = yes && echo '{\"n\":1}'\n    retry: { max_attempts: 1 }\n    with: { ok: \"${{ input.ok }}\" }\n  - id: after\n    needs: [check]\n    shell: echo \"$INPUT_N\"\n    with: { n: \"${{ steps.check.output.n }}\" }\n",
    );
    let a = env.run(&["run", wf.to_str().unwrap()]);
    assert_eq!(a.code, 0, "{a:?}");
    let b = env.run(&["run", wf.to_str().unwrap(), "--input", "{\"ok\": \"no\"}"]);
    assert_eq!(b.code, 1, "{b:?}");
    let (a, b) = (a.run_id(), b.run_id());
    // A run against itself: equivalent, exit 0.
    let same = env.run(&["diff", &a, &a]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(same.stdout.contains("the runs are equivalent"));
    // Another input: the input, the steps and the history differ, exit 1.
    let d = env.run(&["diff", &a, &b, "--json"]);
    assert_eq!(d.code, 1, "{d:?}");
    let v = d.json();
    assert_eq!(v["equivalent"], false);
    assert_eq!(v["definition"]["same"], true);
    assert_eq!(v["input"]["changes"][0]["path"], "ok");
    assert_eq!(v["input"]["changes"][0]["a"], "yes");
    assert_eq!(v["input"]["changes"][0]["b"], "no");
    assert_eq!(v["steps"][0]["a"]["status"], "succeeded");
    assert_eq!(v["steps"][0]["b"]["status"], "failed");
    // Both histories read: Created, Started, StepStarted check, then the
    // outcome differs — at seq 4.
    let seq_of = |run: &str, ty: &str| -> u64 {
        env.run(&["history", run, "--json"])
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["payload"]["type"] == ty)
            .unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(v["diverge_at"], seq_of(&a, "StepSucceeded"));
    assert_eq!(v["diverge"]["a"], "StepSucceeded check");
    assert_eq!(v["diverge"]["b"], "StepFailed check");
    let text = env.run(&["diff", &a, &b]);
    assert!(
        text.stdout
            .contains("diverges at seq 4: a StepSucceeded check / b StepFailed check"),
        "{text:?}"
    );
    // A run and its fork with an output override: the histories agree
    // (the fork goes on as the source did), the outputs differ.
    let f = env.run(&["fork", &a, "--at", "4", "--set-output", "check={\"n\": 7}"]);
    assert_eq!(f.code, 0, "{f:?}");
    let fork = f.run_id();
    let v = env.run(&["diff", &a, &fork, "--json"]).json();
    assert_eq!(v["diverge_at"], serde_json::Value::Null, "{v}");
    assert_eq!(v["steps"][1]["b"]["output"], 7);
    assert_eq!(v["equivalent"], false);
    let unknown = env.run(&["diff", &a, "ffff"]);
    assert_eq!(unknown.code, 2);
}

both!(agents_lists_skills_circuits_and_transitions);
fn agents_lists_skills_circuits_and_transitions(env: Env) {
    let out = env.run_in_root(&["run", "examples/agents.yaml"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = env.run(&["agents", "--json"]).json();
    let agents = v["agents"].as_array().unwrap();
    let by = |n: &str| agents.iter().find(|a| a["name"] == n).unwrap().clone();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["brittle", "classifier", "steady", "summarizer"]);
    // brittle failed twice in a row: its circuit opened (agents.yaml says
    // failure_threshold: 2).
    let brittle = by("brittle");
    assert_eq!(brittle["circuit"]["state"], "open");
    assert_eq!(brittle["circuit"]["failures"], 2);
    assert!(brittle["circuit"]["open_until"].is_string());
    let events: Vec<&str> = brittle["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        ["FailureCounted", "FailureCounted", "CircuitOpened"]
    );
    assert_eq!(by("steady")["circuit"]["state"], "closed");
    assert_eq!(by("summarizer")["skills"], serde_json::json!(["summarize"]));
    assert_eq!(by("summarizer")["concurrency"], 2);
    assert_eq!(by("classifier")["workflows"], serde_json::json!(["agents"]));
    let text = env.run(&["agents"]);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("brittle") && l.contains("open")),
        "{text:?}"
    );
}

both!(a_failing_health_check_opens_the_agents_circuit_until_it_passes);
fn a_failing_health_check_opens_the_agents_circuit_until_it_passes(env: Env) {
    let wf = env.write(
        "h.yaml",
        "name: h\nagents:\n  flaky:\n    skills: [x]\n    shell: echo '{\"ok\":true}'\n    health: { shell: 'test -f healthy', interval: 100ms, timeout: 2s }\n    circuit_breaker: { failure_threshold: 5, cool_down: 300ms }\nsteps:\n  - id: first\n    shell: touch first.started; while [ ! -f healthy ]; do sleep 0.05; done; sleep 0.5\n  - id: work\n    needs: [first]\n    skills: [x]\n",
    );
    let child = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for(&env.path("first.started"));
    // Several failed checks, then the agent becomes healthy; `first` goes
    // on 0.5 s later, so a check (every 100 ms) has seen it healthy before
    // `work` is routed.
    std::thread::sleep(std::time::Duration::from_millis(500));
    std::fs::write(env.path("healthy"), "").unwrap();
    let out = crate::support::Out::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    let v = env.run(&["agents", "--json"]).json();
    let flaky = &v["agents"][0];
    assert_eq!(flaky["name"], "flaky");
    assert_eq!(flaky["health"]["healthy"], true, "{flaky}");
    assert_eq!(flaky["health"]["detail"], "exit 0");
    assert_eq!(
        flaky["circuit"]["state"], "closed",
        "the probe closed it: {flaky}"
    );
    let events: Vec<&str> = flaky["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    // A verdict is recorded when it changes; the failing check opened the
    // circuit; after the cool-down one probe (the step) closed it.
    let pos = |name: &str| {
        events
            .iter()
            .position(|e| *e == name)
            .unwrap_or_else(|| panic!("{name} in {events:?}"))
    };
    assert_eq!(events[0], "HealthChecked");
    assert!(
        pos("CircuitOpened") < pos("CircuitHalfOpened"),
        "{events:?}"
    );
    assert!(
        pos("CircuitHalfOpened") < pos("CircuitClosed"),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "HealthChecked").count(),
        2,
        "{events:?}"
    );
    // The step ran on the agent only once it was healthy again.
    let work = env.run(&["status", &out.run_id(), "--json"]).json();
    assert_eq!(work["steps"][1]["agent"], "flaky");
    assert_eq!(work["steps"][1]["attempts"], 1);
}

#[test]
fn traces_are_exported_over_otlp_http_with_the_run_as_the_trace() {
    use std::io::{Read, Write};
    // A real OTLP/HTTP receiver: it answers 200 and keeps each request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<(String, Vec<u8>)>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Read the head, then the body by its Content-Length.
            let (head, body_start) = loop {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::new(), 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
                }
            };
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < body_start + len {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            let _ = tx.send((head, buf[body_start..].to_vec()));
        }
    });
    let env = Env::new();
    let wf = env.write("ok.yaml", OK);
    let mut c = env.cmd();
    c.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    )
    .args(["run", wf.to_str().unwrap()]);
    let out = crate::support::Out::from(c.output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    let run: uuid::Uuid = out.run_id().parse().unwrap();
    let (head, body) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("an OTLP export");
    assert!(head.starts_with("POST /v1/traces "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-protobuf"),
        "{head}"
    );
    // The spans' trace id is the run id, in the protobuf's bytes.
    assert!(
        body.windows(16).any(|w| w == run.as_bytes()),
        "the run id is the trace id of the exported spans"
    );
    assert!(
        body.windows(7).any(|w| w == b"attempt"),
        "attempt spans exported"
    );
}
