//! Auditing from the CLI: a recorded head proves the history up to it
//! unchanged; `diff` finds where two runs diverge (both backends).

use crate::support::Env;

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
