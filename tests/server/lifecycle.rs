//! The server's life: event streams, many clients, kill -9, SIGTERM, the
//! stream cap.

use super::*;

#[test]
fn sse_resumes_after_last_event_id_with_no_gap_and_no_duplicate() {
    let env = Env::new();
    let s = env.serve(&[]);
    let wf = "name: steps\nsteps:\n  - id: a\n    shell: sleep 0.2; echo 1\n  - id: b\n    needs: [a]\n    shell: sleep 0.2; echo 2\n  - id: c\n    needs: [b]\n    shell: sleep 0.2; echo 3\n";
    let r = s.post("/v1/runs", &json!({"workflow": wf}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Disconnect mid-run after 3 events, resume from the last id seen.
    let (first, ended) = read_stream(&s, &run, None, Some(3));
    assert!(!ended);
    let last = first.last().unwrap().0;
    let (rest, ended) = read_stream(&s, &run, Some(last), None);
    assert!(ended, "the stream ends with the run");
    let all: Vec<(u64, String)> = first.into_iter().chain(rest).collect();
    let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let history = env.run(&["history", &run, "--json"]);
    assert_eq!(history.code, 0, "{history:?}");
    let lines: Vec<&str> = history.stdout.lines().collect();
    let data: Vec<&str> = all.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(data, lines, "the stream is history --json, line for line");
    // A stream of an ended run replays it whole and ends.
    let (again, ended) = read_stream(&s, &run, Some(0), None);
    assert!(ended);
    assert_eq!(again.len(), lines.len());
    let r = s.get("/v1/runs/00000000-0000-0000-0000-000000000000/events/stream");
    problem(r, 404, "unknown_run");
}

#[test]
fn sixteen_clients_submit_400_runs_with_repeated_keys() {
    let env = Env::new();
    let s = env.serve(&[]);
    let wf = "name: tiny\nsteps:\n  - id: a\n    command: ['true']\n";
    let ids = std::sync::Mutex::new(BTreeMap::<String, BTreeSet<String>>::new());
    let all = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for c in 0..16 {
            let (s, ids, all) = (&s, &ids, &all);
            scope.spawn(move || {
                for i in 0..25 {
                    let n = c * 25 + i;
                    // Every 4th run reuses a key another client also sends.
                    let key = (n % 4 == 0).then(|| format!("key-{}", n % 40));
                    let mut req = s
                        .http
                        .post(format!("{}/v1/runs", s.url))
                        .bearer_auth(&s.token)
                        .json(&json!({"workflow": wf}));
                    if let Some(k) = &key {
                        req = req.header("idempotency-key", k);
                    }
                    let r = req.send().unwrap();
                    assert!(matches!(r.status().as_u16(), 200 | 202), "{r:?}");
                    let id = r.json::<Value>().unwrap()["run_id"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    if let Some(k) = key {
                        ids.lock().unwrap().entry(k).or_default().insert(id.clone());
                    }
                    all.lock().unwrap().push(id);
                }
            });
        }
    });
    for (k, runs) in ids.lock().unwrap().iter() {
        assert_eq!(runs.len(), 1, "key {k} has runs {runs:?}");
    }
    let distinct: BTreeSet<String> = all.lock().unwrap().iter().cloned().collect();
    let keys = ids.lock().unwrap().len();
    assert_eq!(
        distinct.len(),
        300 + keys,
        "300 unkeyed runs and one per key"
    );
    for id in &distinct {
        let st = wait_status(&s, id);
        assert_eq!(st["status"], "succeeded", "{st}");
    }
    let listed: Value = s.get("/v1/runs?limit=1000").json().unwrap();
    assert_eq!(listed["runs"].as_array().unwrap().len(), distinct.len());
}

#[test]
fn kill_9_of_the_server_mid_run_then_serve_again_finishes_it() {
    let env = Env::new();
    let marker = format!("k9-{}", std::process::id());
    let s = env.serve(&[]);
    let r = s.post("/v1/runs", &json!({"workflow": slow(&marker, 2)}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&env.path(&format!("{marker}.started")));
    s.kill9();
    // The watchdog kills the step's process group when the engine dies.
    let t = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "orphan step process");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stale discovery file is ignored: commands work on the file.
    assert!(env.path("chronicle.redb-server.json").exists());
    let st = env.run(&["status", &run, "--json"]);
    assert_eq!(st.code, 0, "{st:?}");
    assert_eq!(st.json()["status"], "running");
    let s = env.serve(&[]);
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["steps"][0]["attempts"], 2,
        "the cut attempt and its retry"
    );
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(marked_processes(&marker).is_empty());
    assert!(s.term().success());
    assert!(
        !env.path("chronicle.redb-server.json").exists(),
        "removed at a clean exit"
    );
}

#[test]
fn sigterm_with_a_step_running_stops_within_the_grace_period() {
    let env = Env::new();
    let marker = format!("term-{}", std::process::id());
    let s = env.serve(&["--grace", "1s"]);
    let r = s.post("/v1/runs", &json!({"workflow": slow(&marker, 30)}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&env.path(&format!("{marker}.started")));
    let t = Instant::now();
    let status = s.term();
    assert!(status.success(), "{status:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        marked_processes(&marker).is_empty(),
        "the step's process was killed"
    );
    let h = env.run(&["history", &run, "--json"]);
    let last: Value = serde_json::from_str(h.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["payload"]["type"], "StepAbandoned", "{last}");
    assert_eq!(last["payload"]["stopped"], true);
    assert!(
        last["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("SIGTERM"),
        "{last}"
    );
    let v = env.run(&["verify"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert!(v.stdout.contains("closed cleanly"), "{v:?}");
}

#[test]
fn streams_are_capped_and_a_client_that_does_not_read_stalls_nothing() {
    let env = Env::new();
    let s = env.serve(&["--max-streams", "2"]);
    let wf =
        "name: many\nsteps:\n  - id: a\n    command: ['true']\n    retry: { max_attempts: 1 }\n";
    // Two clients open a stream of a run that goes on, and never read.
    let marker = format!("cap-{}", std::process::id());
    let r = s.post("/v1/runs", &json!({"workflow": slow(&marker, 30)}));
    let slow_run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stuck = || {
        std::net::TcpStream::connect(s.url.trim_start_matches("http://")).map(|mut c| {
            use std::io::Write;
            write!(
                c,
                "GET /v1/runs/{slow_run}/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                s.token
            )
            .unwrap();
            c
        })
    };
    let _c = stuck().unwrap();
    let _d = stuck().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    problem(
        s.get(&format!("/v1/runs/{slow_run}/events/stream")),
        503,
        "too_many_streams",
    );
    // The engine goes on: 50 runs finish while the streams are stuck.
    for _ in 0..50 {
        let r = s.post("/v1/runs", &json!({"workflow": wf}));
        let id = r.json::<Value>().unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(wait_status(&s, &id)["status"], "succeeded");
    }
    s.post(&format!("/v1/runs/{slow_run}/cancel"), &json!({}));
    crate::support::kill_marked(&marker);
}
