//! Waiting steps through a real server: a durable timer across kill -9,
//! signals from another process, approvals by listed approvers only.

use super::*;

fn events(s: &Server, run: &str) -> Vec<Value> {
    s.get(&format!("/v1/runs/{run}/events?limit=10000"))
        .json::<Value>()
        .unwrap()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"].clone())
        .collect()
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

/// Poll the status until `pred` holds (20 s).
fn until(s: &Server, run: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
        if pred(&v) {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{what}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn step<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()
}

#[test]
fn a_timer_survives_kill_9_of_the_server_and_fires_once() {
    let env = Env::new();
    let s = env.serve(&[]);
    let wf = "name: nap\nsteps:\n  - id: nap\n    sleep: 2s\n  - id: after\n    needs: [nap]\n    command: ['true']\n";
    let run = submit(&s, wf);
    let waiting = until(&s, &run, "the timer armed", |v| {
        step(v, "nap")["wait"]["for"] == "timer"
    });
    assert!(
        step(&waiting, "nap")["wait"]["fire_at"].is_string(),
        "{waiting}"
    );
    s.kill9();
    // On the file, between the two servers: still waiting on its timer.
    let st = env.run(&["status", &run]);
    assert!(
        st.stdout.contains("waiting: nap for its timer, due at"),
        "{st:?}"
    );
    std::thread::sleep(Duration::from_millis(2500)); // due while no server runs
    let s = env.serve(&[]);
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    let evs = events(&s, &run);
    assert_eq!(count(&evs, "TimerStarted"), 1);
    assert_eq!(count(&evs, "TimerFired"), 1, "fires once");
    assert_eq!(
        count(&evs, "StepAbandoned"),
        0,
        "a wait is not cut by a crash"
    );
    assert_eq!(step(&done, "nap")["attempts"], 1);
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn signals_from_the_cli_through_the_server_before_and_after_the_wait() {
    let env = Env::new();
    let marker = format!("sig-{}", std::process::id());
    let s = env.serve(&[]);
    // `first` waits for a file the test creates, so the early signal
    // surely comes before `deployed` waits.
    let gate = env.path(&format!("{marker}.go"));
    let wf = format!(
        "name: sig\nsteps:\n  - id: first\n    shell: while [ ! -e {} ]; do sleep 0.05; done\n  - id: deployed\n    needs: [first]\n    signal: deployed\n    timeout: 1m\n  - id: again\n    needs: [deployed]\n    signal: deployed\n    timeout: 1m\n  - id: notify\n    needs: [again]\n    shell: echo \"{{\\\"v\\\":\\\"$INPUT_V\\\"}}\"\n    with: {{ v: \"${{{{ steps.deployed.output.version }}}}\" }}\n",
        gate.display()
    );
    let run = submit(&s, &wf);
    // Before the wait: recorded and buffered.
    let early = env.run(&[
        "signal",
        &run,
        "deployed",
        "--data",
        r#"{"version":"1.4.2"}"#,
        "--id",
        "d-1",
    ]);
    assert_eq!(early.code, 0, "{early:?}");
    assert!(early.stdout.contains("recorded"), "{early:?}");
    let again = env.run(&[
        "signal",
        &run,
        "deployed",
        "--data",
        r#"{"version":"9"}"#,
        "--id",
        "d-1",
    ]);
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("already recorded"), "{again:?}");
    let buffered: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
    assert_eq!(
        buffered["signals"].as_array().unwrap().len(),
        1,
        "{buffered}"
    );
    std::fs::write(&gate, "").unwrap();
    // `deployed` consumes the early one; `again` waits for a new one.
    let waiting = until(&s, &run, "again waits", |v| {
        step(v, "again")["wait"]["for"] == "signal"
    });
    assert_eq!(
        step(&waiting, "deployed")["output"],
        json!({"version": "1.4.2"})
    );
    assert!(
        waiting["signals"].as_array().unwrap().is_empty(),
        "consumed"
    );
    // After the wait: through the API this time.
    let r = s.post(
        &format!("/v1/runs/{run}/signals/deployed"),
        &json!({"data": {"version": "1.4.3"}}),
    );
    assert_eq!(r.status(), 202);
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(step(&done, "again")["output"], json!({"version": "1.4.3"}));
    assert_eq!(step(&done, "notify")["output"], json!({"v": "1.4.2"}));
    let evs = events(&s, &run);
    assert_eq!(count(&evs, "SignalReceived"), 2, "the repeated id once");
    // A signal to an ended run is refused.
    let late = s.post(&format!("/v1/runs/{run}/signals/deployed"), &json!({}));
    problem(late, 409, "not_applicable");
    let bad = s.post(&format!("/v1/runs/{run}/signals/%01x"), &json!({}));
    problem(bad, 400, "bad_request");
}

#[test]
fn approvals_count_only_listed_approvers_and_a_refusal_records_nothing() {
    let env = Env::new();
    let s = env.serve(&[]);
    let wf = "name: ok\nsteps:\n  - id: sign-off\n    approval: { approvers: [alice, bob], min_approvals: 1 }\n    timeout: 1h\n  - id: ship\n    needs: [sign-off]\n    command: ['true']\n";
    let run = submit(&s, wf);
    let waiting = until(&s, &run, "approval requested", |v| {
        step(v, "sign-off")["wait"]["for"] == "approval"
    });
    assert_eq!(
        step(&waiting, "sign-off")["wait"]["pending"],
        json!(["alice", "bob"])
    );
    let before = events(&s, &run);
    // Someone else: refused with a clear message, recorded nowhere.
    let out = env.run(&["approve", &run, "sign-off", "--as", "mallory"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("mallory is not an approver of step sign-off"),
        "{out:?}"
    );
    let r = s.post(
        &format!("/v1/runs/{run}/steps/sign-off/approval"),
        &json!({"by": "mallory", "decision": "approve"}),
    );
    let p = problem(r, 409, "not_approver");
    assert!(p["detail"].as_str().unwrap().contains("alice, bob"), "{p}");
    assert_eq!(events(&s, &run), before, "nothing recorded");
    problem(
        s.post(
            &format!("/v1/runs/{run}/steps/ship/approval"),
            &json!({"by": "alice", "decision": "approve"}),
        ),
        409,
        "not_waiting",
    );
    problem(
        s.post(
            &format!("/v1/runs/{run}/steps/sign-off/approval"),
            &json!({"by": "alice", "decision": "maybe"}),
        ),
        400,
        "bad_request",
    );
    // A listed approver: the step succeeds and the run goes on.
    let ok = env.run(&[
        "approve",
        &run,
        "sign-off",
        "--as",
        "alice",
        "--comment",
        "ship it",
    ]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("approved by alice"), "{ok:?}");
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    let decided: Vec<Value> = events(&s, &run)
        .into_iter()
        .filter(|e| e["type"] == "ApprovalDecided")
        .collect();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0]["by"], "alice");
    assert_eq!(decided[0]["comment"], "ship it");
    // A rejection fails the step and the run.
    let run2 = submit(&s, wf);
    until(&s, &run2, "approval requested", |v| {
        step(v, "sign-off")["wait"]["for"] == "approval"
    });
    let no = env.run(&[
        "reject",
        &run2,
        "sign-off",
        "--as",
        "bob",
        "--comment",
        "not this week",
    ]);
    assert_eq!(no.code, 0, "{no:?}");
    let failed = wait_status(&s, &run2);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        step(&failed, "sign-off")["last_error"],
        "rejected by bob: not this week"
    );
    assert_eq!(step(&failed, "ship")["status"], "skipped");
}

#[test]
fn a_signal_and_an_approval_on_the_file_without_a_server() {
    let env = Env::new();
    let wf = env.write(
        "w.yaml",
        "name: w\nsteps:\n  - id: go\n    signal: go\n  - id: ok\n    needs: [go]\n    approval: { approvers: [alice] }\n  - id: done\n    needs: [ok]\n    command: ['true']\n",
    );
    // No server: `run` executes in this process until the run waits only
    // for the outside world, says so, and exits.
    let out = env.run(&["run", wf.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.trim_end().ends_with("running"), "{out:?}");
    assert!(
        out.stderr.contains("waits: go for the signal \"go\""),
        "{out:?}"
    );
    let run = out.run_id();
    let before = std::fs::read(env.db()).unwrap();
    let bad = env.run(&["approve", &run, "ok", "--as", "mallory"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(
        std::fs::read(env.db()).unwrap(),
        before,
        "a refusal leaves the file untouched"
    );
    let sig = env.run(&["signal", &run, "go", "--data", "{\"n\":1}"]);
    assert_eq!(sig.code, 0, "{sig:?}");
    let rec = env.run(&["recover"]);
    assert_eq!(rec.code, 0, "{rec:?}");
    let st = env.run(&["status", &run, "--json"]).json();
    assert_eq!(st["steps"][0]["output"], json!({"n": 1}), "{st}");
    assert_eq!(st["steps"][1]["wait"]["for"], "approval", "{st}");
    let ok = env.run(&["approve", &run, "ok", "--as", "alice"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let rec = env.run(&["recover"]);
    assert_eq!(rec.code, 0, "{rec:?}");
    assert_eq!(
        env.run(&["status", &run, "--json"]).json()["status"],
        "succeeded"
    );
}

#[test]
fn the_release_example_waits_for_an_approval_and_a_signal() {
    let env = Env::new();
    let s = env.serve_from(&crate::support::root(), &[]);
    let out_dir = env.path("out");
    let out = env.run_in_root(&[
        "run",
        "examples/release.yaml",
        "--input",
        &json!({"out": out_dir}).to_string(),
        "--detach",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let run = out
        .stdout
        .split_whitespace()
        .find(|w| w.len() == 36)
        .unwrap()
        .to_string();
    until(&s, &run, "waits for the sign-off", |v| {
        step(v, "sign-off")["wait"]["for"] == "approval"
    });
    let st = env.run(&["status", &run]);
    assert!(
        st.stdout
            .contains("waiting: sign-off for approval: 0 of 1; pending: alice, bob"),
        "{st:?}"
    );
    let ok = env.run(&[
        "approve",
        &run,
        "sign-off",
        "--as",
        "alice",
        "--comment",
        "ship it",
    ]);
    assert_eq!(ok.code, 0, "{ok:?}");
    until(&s, &run, "waits for the deployment", |v| {
        step(v, "deployed")["wait"]["for"] == "signal"
    });
    let sig = env.run(&[
        "signal",
        &run,
        "deployed",
        "--data",
        r#"{"version":"1.4.2","url":"https://example.org/app"}"#,
    ]);
    assert_eq!(sig.code, 0, "{sig:?}");
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        step(&done, "notify")["output"]["message"],
        "release 1.4.2 is live at https://example.org/app"
    );
    assert!(
        step(&done, "deploy")["output"]["approved_by"] == json!(["alice"]),
        "{done}"
    );
    assert!(out_dir.join("app-1.4.2.tar.gz").exists());
}

#[test]
fn a_fork_before_the_signal_waits_again_and_after_it_keeps_it() {
    let env = Env::new();
    let s = env.serve(&[]);
    let wf = "name: f\nsteps:\n  - id: deployed\n    signal: deployed\n  - id: after\n    needs: [deployed]\n    command: ['true']\n";
    let run = submit(&s, wf);
    until(&s, &run, "waits", |v| {
        step(v, "deployed")["wait"]["for"] == "signal"
    });
    let r = s.post(
        &format!("/v1/runs/{run}/signals/deployed"),
        &json!({"data": {"v": 1}}),
    );
    assert_eq!(r.status(), 202);
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded");
    let evs = events(&s, &run);
    let received = evs
        .iter()
        .position(|e| e["type"] == "SignalReceived")
        .unwrap() as u64
        + 1;
    let consumed = evs
        .iter()
        .position(|e| e["type"] == "StepSucceeded" && e["step"] == "deployed")
        .unwrap() as u64
        + 1;
    let fork = |at: u64| -> String {
        let r = s.post(&format!("/v1/runs/{run}/fork"), &json!({"at": at}));
        assert_eq!(r.status(), 202, "fork at {at}");
        r.json::<Value>().unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = fork(received - 1);
    let waiting = until(&s, &before, "the fork waits again", |v| {
        step(v, "deployed")["wait"]["for"] == "signal"
    });
    assert_eq!(waiting["status"], "running");
    let after = fork(consumed);
    let kept = wait_status(&s, &after);
    assert_eq!(kept["status"], "succeeded", "{kept}");
    assert_eq!(step(&kept, "deployed")["output"], json!({"v": 1}));
    // Time travel over the waits: the state at each seq folds.
    for at in 1..=done["seq"].as_u64().unwrap() {
        let r = s.get(&format!("/v1/runs/{run}/state?at={at}"));
        assert_eq!(r.status(), 200, "state at {at}");
    }
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // The waiting fork ends when canceled.
    let c = s.post(&format!("/v1/runs/{before}/cancel"), &json!({}));
    assert_eq!(c.json::<Value>().unwrap()["status"], "canceled");
}
