//! `chronicle serve`: a real server on 127.0.0.1 (the binary, as a child
//! process), real HTTP clients, real step processes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Env, Server, marked_processes, wait_for};

const QUICK: &str = "name: quick\nsteps:\n  - id: a\n    shell: echo '{\"n\":1}'\n  - id: b\n    needs: [a]\n    shell: echo \"$INPUT_N\"\n    with: { n: \"${{ steps.a.output.n }}\" }\n";

fn slow(marker: &str, secs: u32) -> String {
    format!(
        "name: slow\nsteps:\n  - id: wait\n    shell: touch {marker}.started; exec sleep {secs} # {marker}\n  - id: after\n    needs: [wait]\n    command: ['true']\n"
    )
}

fn problem(resp: reqwest::blocking::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{resp:?}");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let v: Value = resp.json().unwrap();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status);
    assert_eq!(v["type"], format!("urn:chronicle:problem:{code}"));
    assert!(!v["detail"].as_str().unwrap().is_empty());
    v
}

fn wait_status(s: &Server, run: &str) -> Value {
    let v: Value = s.get(&format!("/v1/runs/{run}?wait=30s")).json().unwrap();
    v
}

#[test]
fn health_auth_and_the_openapi_document() {
    let env = Env::new();
    let s = env.serve(&[]);
    let plain = |p: &str| s.http.get(format!("{}{p}", s.url)).send().unwrap();
    assert_eq!(plain("/healthz").status(), 200);
    assert_eq!(plain("/readyz").status(), 200);
    // No token, a wrong one, a malformed header: 401 and nothing else.
    let r = plain("/v1/runs");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401, "unauthorized");
    let wrong = s
        .http
        .get(format!("{}/v1/runs", s.url))
        .bearer_auth("0".repeat(64))
        .send()
        .unwrap();
    let v = problem(wrong, 401, "unauthorized");
    assert!(!v.to_string().contains(&s.token));
    let basic = s
        .http
        .get(format!("{}/v1/runs", s.url))
        .header("authorization", format!("Basic {}", s.token))
        .send()
        .unwrap();
    problem(basic, 401, "unauthorized");
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.path("chronicle.redb-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The OpenAPI document lists every route, and every route it lists is
    // served (not the 404 fallback).
    let doc: Value = plain("/openapi.json").json().unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut listed = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            listed.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /v1/runs",
        "GET /v1/runs",
        "GET /v1/runs/{id}",
        "GET /v1/runs/{id}/events",
        "GET /v1/runs/{id}/events/stream",
        "GET /v1/runs/{id}/state",
        "GET /v1/runs/{id}/timeline",
        "GET /v1/runs/{id}/export",
        "POST /v1/runs/import",
        "GET /v1/verify",
        "GET /v1/runs/{id}/verify",
        "POST /v1/runs/{id}/cancel",
        "POST /v1/runs/{id}/pause",
        "POST /v1/runs/{id}/resume",
        "POST /v1/runs/{id}/release",
        "POST /v1/runs/{id}/fork",
        "PUT /v1/workflows/{name}",
        "GET /v1/workflows/{name}",
        "GET /v1/workflows",
        "POST /v1/upgrade-check",
        "GET /v1/agents",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(listed, expected);
    for route in &listed {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{name}", "nothing");
        let r = s
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.url))
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        assert!(
            v["code"] != "not_found" && status != 405,
            "{route}: {status} {v}"
        );
    }
    problem(
        s.http.get(format!("{}/v2/nothing", s.url)).send().unwrap(),
        404,
        "not_found",
    );
}

#[test]
fn every_route_and_its_errors() {
    let env = Env::new();
    let s = env.serve(&["--body-limit", "65536"]);
    // Create: a definition as YAML text, then as a JSON object.
    let r = s.post("/v1/runs", &json!({"workflow": QUICK, "input": {"x": 1}}));
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let v: Value = r.json().unwrap();
    let run = v["run_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/runs/{run}"));
    assert_eq!(v["workflow"], "quick");
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][1]["output"], 1);
    let obj = json!({"name": "obj", "steps": [{"id": "a", "command": ["true"]}]});
    assert_eq!(s.post("/v1/runs", &json!({"workflow": obj})).status(), 202);

    // Bad input writes nothing.
    let before = s.get("/v1/runs").json::<Value>().unwrap()["runs"]
        .as_array()
        .unwrap()
        .len();
    let bad = "name: bad\nsteps:\n  - id: a\n    command: ['true']\n  - id: b\n    needs: [missing]\n    command: ['true']\n";
    let v = problem(
        s.post("/v1/runs", &json!({"workflow": bad})),
        422,
        "invalid_workflow",
    );
    assert_eq!(v["step"], "b", "{v}");
    assert_eq!(v["line"], 5, "{v}");
    assert_eq!(v["exit_code"], 2);
    let r = s
        .http
        .post(format!("{}/v1/runs", s.url))
        .bearer_auth(&s.token)
        .body("{not json")
        .send()
        .unwrap();
    problem(r, 400, "bad_request");
    problem(
        s.post("/v1/runs", &json!({"workflow": QUICK, "input": [1]})),
        422,
        "invalid_input",
    );
    problem(
        s.post("/v1/runs", &json!({"workflow": QUICK, "extra": 1})),
        400,
        "bad_request",
    );
    problem(s.post("/v1/runs", &json!({})), 400, "bad_request");
    let huge = json!({"workflow": QUICK, "input": {"pad": "x".repeat(70_000)}});
    problem(s.post("/v1/runs", &huge), 413, "body_too_large");
    let after = s.get("/v1/runs").json::<Value>().unwrap()["runs"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // Idempotency: same key and body → the same run (200); another body → 422.
    let keyed = |input: Value| {
        s.http
            .post(format!("{}/v1/runs", s.url))
            .bearer_auth(&s.token)
            .header("idempotency-key", "order-1")
            .json(&json!({"workflow": QUICK, "input": input}))
            .send()
            .unwrap()
    };
    let first = keyed(json!({"k": 1}));
    assert_eq!(first.status(), 202);
    let id1 = first.json::<Value>().unwrap()["run_id"].clone();
    let again = keyed(json!({"k": 1}));
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().unwrap()["run_id"], id1);
    problem(keyed(json!({"k": 2})), 422, "idempotency_key_reused");

    // Registered workflows: versions kept, a run pins its version.
    let put = |text: &str| {
        s.http
            .put(format!("{}/v1/workflows/quick", s.url))
            .bearer_auth(&s.token)
            .body(text.to_string())
            .send()
            .unwrap()
    };
    let r = put(QUICK);
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["version"], 1);
    assert_eq!(
        put(QUICK).status(),
        200,
        "the same definition keeps its version"
    );
    let v2 = QUICK.replace("echo \"$INPUT_N\"", "echo \"v2 $INPUT_N\"");
    let r = put(&v2);
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["version"], 2);
    problem(
        put("name: other\nsteps:\n  - id: a\n    command: ['true']\n"),
        422,
        "invalid_input",
    );
    problem(put("name: quick\nsteps: []\n"), 422, "invalid_workflow");
    let list: Value = s.get("/v1/workflows").json().unwrap();
    assert_eq!(list["workflows"][0]["name"], "quick");
    assert_eq!(list["workflows"][0]["latest_version"], 2);
    let one: Value = s.get("/v1/workflows/quick?version=1").json().unwrap();
    assert_eq!(one["version"], 1);
    problem(s.get("/v1/workflows/nothing"), 404, "unknown_workflow");
    let r = s.post("/v1/runs", &json!({"workflow_name": "quick"}));
    assert_eq!(r.status(), 202);
    let pinned: Value = r.json().unwrap();
    assert_eq!(pinned["workflow_version"], 2);
    let st = wait_status(&s, pinned["run_id"].as_str().unwrap());
    assert_eq!(st["steps"][1]["output"]["stdout"], "v2 1\n", "{st}");
    let r = s.post("/v1/runs", &json!({"workflow_name": "quick", "version": 1}));
    let old = wait_status(&s, r.json::<Value>().unwrap()["run_id"].as_str().unwrap());
    assert_eq!(old["steps"][1]["output"], 1, "version 1 is kept: {old}");
    problem(
        s.post("/v1/runs", &json!({"workflow_name": "nope"})),
        404,
        "unknown_workflow",
    );

    // Listing: newest first, filtered, paged with a cursor.
    let all: Value = s.get("/v1/runs").json().unwrap();
    let ids: Vec<String> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 5);
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() {
            "/v1/runs?limit=2".to_string()
        } else {
            format!("/v1/runs?limit=2&cursor={cursor}")
        };
        let page: Value = s.get(&q).json().unwrap();
        for r in page["runs"].as_array().unwrap() {
            paged.push(r["run_id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(paged, ids, "pages concatenate to the whole list");
    let created: Vec<String> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created_at"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "newest first");
    let quick: Value = s.get("/v1/runs?workflow=obj").json().unwrap();
    assert_eq!(quick["runs"].as_array().unwrap().len(), 1);
    problem(s.get("/v1/runs?status=nope"), 400, "bad_request");
    problem(s.get("/v1/runs?cursor=garbage"), 400, "bad_request");
    problem(s.get("/v1/runs?limit=x"), 400, "bad_request");

    // One run: status, events, state, timeline, export, verify.
    problem(
        s.get("/v1/runs/00000000-0000-0000-0000-000000000000"),
        404,
        "unknown_run",
    );
    problem(s.get("/v1/runs/zzzz"), 404, "unknown_run");
    problem(
        s.get(&format!("/v1/runs/{run}?wait=soon")),
        400,
        "bad_request",
    );
    let page: Value = s
        .get(&format!("/v1/runs/{run}/events?after=2&limit=2"))
        .json()
        .unwrap();
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!(page["last_seq"], 7);
    let at2: Value = s.get(&format!("/v1/runs/{run}/state?at=2")).json().unwrap();
    assert_eq!(at2["status"], "running");
    assert_eq!(at2["seq"], 2);
    problem(
        s.get(&format!("/v1/runs/{run}/state?at=99")),
        400,
        "bad_request",
    );
    problem(
        s.get(&format!("/v1/runs/{run}/state?at_time=yesterday")),
        400,
        "bad_request",
    );
    let tl: Value = s.get(&format!("/v1/runs/{run}/timeline")).json().unwrap();
    assert_eq!(tl.as_array().unwrap().len(), 7);
    let export = s.get(&format!("/v1/runs/{run}/export"));
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let export = export.text().unwrap();
    assert_eq!(export.lines().count(), 7);
    let v: Value = s.get(&format!("/v1/runs/{run}/verify")).json().unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let v: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(v["ok"], true, "{v}");

    // Import: the same run again is refused; garbage is refused; a second
    // server takes the export.
    let import = |srv: &Server, body: String| {
        srv.http
            .post(format!("{}/v1/runs/import", srv.url))
            .bearer_auth(&srv.token)
            .body(body)
            .send()
            .unwrap()
    };
    problem(import(&s, export.clone()), 400, "bad_history");
    problem(import(&s, "garbage\n".into()), 400, "bad_history");
    let other = Env::new();
    let s2 = other.serve(&[]);
    let r = import(&s2, export.clone());
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().unwrap()["run_id"], run.as_str());
    assert_eq!(
        s2.get(&format!("/v1/runs/{run}/export")).text().unwrap(),
        export
    );

    // Control: each applies or is a 409.
    problem(
        s.post(&format!("/v1/runs/{run}/cancel"), &json!({})),
        409,
        "not_applicable",
    );
    problem(
        s.post(&format!("/v1/runs/{run}/release"), &json!({})),
        409,
        "not_applicable",
    );
    let marker = format!("ctl-{}", std::process::id());
    let r = s.post("/v1/runs", &json!({"workflow": slow(&marker, 30)}));
    let slow_run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&env.path(&format!("{marker}.started")));
    let paused: Value = s
        .post(&format!("/v1/runs/{slow_run}/pause"), &json!({}))
        .json()
        .unwrap();
    assert_eq!(paused["status"], "paused");
    let resumed: Value = s
        .post(&format!("/v1/runs/{slow_run}/resume"), &json!({}))
        .json()
        .unwrap();
    assert_eq!(resumed["status"], "running");
    let canceled: Value = s
        .post(
            &format!("/v1/runs/{slow_run}/cancel"),
            &json!({"reason": "test over"}),
        )
        .json()
        .unwrap();
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    let t = Instant::now();
    while !marked_processes(&marker).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the canceled step's process lives on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    problem(
        s.post(&format!("/v1/runs/{slow_run}/pause"), &json!({})),
        409,
        "not_applicable",
    );

    // Fork from a seq, with an output override.
    let r = s.post(
        &format!("/v1/runs/{run}/fork"),
        &json!({"at": 4, "set_output": {"a": {"n": 5}}}),
    );
    assert_eq!(r.status(), 202);
    let fork: Value = r.json().unwrap();
    let child = fork["run_id"].as_str().unwrap();
    let st = wait_status(&s, child);
    assert_eq!(st["status"], "succeeded");
    assert_eq!(st["forked_from"]["run_id"], run.as_str());
    problem(
        s.post(&format!("/v1/runs/{run}/fork"), &json!({"at": 99})),
        400,
        "bad_request",
    );
    problem(
        s.post(&format!("/v1/runs/{run}/fork"), &json!({"at": "x"})),
        400,
        "bad_request",
    );
}

/// Read a run's SSE stream: `(seq, data)` per event, until `stop` events
/// were read (then the connection is dropped) or the `end` event.
fn read_stream(
    s: &Server,
    run: &str,
    last_event_id: Option<u64>,
    stop: Option<usize>,
) -> (Vec<(u64, String)>, bool) {
    let mut req = s
        .http
        .get(format!("{}/v1/runs/{run}/events/stream", s.url))
        .bearer_auth(&s.token);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut out = Vec::new();
    let (mut id, mut data, mut event) = (None, String::new(), String::new());
    for line in BufReader::new(resp).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            if event == "end" {
                return (out, true);
            }
            if let Some(i) = id.take() {
                out.push((i, std::mem::take(&mut data)));
                if Some(out.len()) == stop {
                    return (out, false);
                }
            }
            event.clear();
            continue;
        }
        if let Some(v) = line
            .strip_prefix("id: ")
            .or_else(|| line.strip_prefix("id:"))
        {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        {
            data.push_str(v);
        } else if let Some(v) = line
            .strip_prefix("event: ")
            .or_else(|| line.strip_prefix("event:"))
        {
            event = v.trim().to_string();
        }
    }
    (out, false)
}

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
fn two_terminals_status_list_and_cancel_beside_a_running_run() {
    let env = Env::new();
    let marker = format!("two-{}", std::process::id());
    let _s = env.serve(&[]);
    let wf = env.write("slow.yaml", &slow(&marker, 30));
    let runner = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path(&format!("{marker}.started")));
    let list = env.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    let run = list.json()[0]["run_id"].as_str().unwrap().to_string();
    let st = env.run(&["status", &run]);
    assert_eq!(st.code, 0, "{st:?}");
    assert!(st.stdout.contains("running"), "{st:?}");
    // recover is the server's job while it runs.
    let r = env.run(&["recover"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("holds"), "{r:?}");
    let c = env.run(&["cancel", &run]);
    assert_eq!(c.code, 0, "{c:?}");
    assert_eq!(c.stdout.trim(), format!("run {run} canceled"));
    let out = crate::support::Out::from(runner.wait_with_output().unwrap());
    assert_eq!(out.code, 1, "a canceled run exits 1: {out:?}");
    assert!(
        out.stdout.contains(&format!("run {run} canceled")),
        "{out:?}"
    );
    assert!(out.stderr.contains("RunCanceled"), "{out:?}");
}

/// The command suite on a file and through a server prints the same and
/// exits the same.
#[test]
fn commands_print_and_exit_alike_with_and_without_a_server() {
    let env = Env::new();
    let wf = env.write("quick.yaml", QUICK);
    let fails = env.write(
        "fails.yaml",
        "name: fails\nsteps:\n  - id: a\n    command: ['false']\n",
    );
    let ok = env.run(&["run", wf.to_str().unwrap(), "--input", "{\"x\": 2}"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let run = ok.run_id();
    let bad = env.run(&["run", fails.to_str().unwrap()]);
    assert_eq!(bad.code, 1);
    let failed = bad.run_id();
    let fork = env.run(&["fork", &run, "--at", "4", "--set-output", "a={\"n\": 9}"]);
    assert_eq!(fork.code, 0, "{fork:?}");
    let short = &run[..13];
    let wf_s = wf.to_str().unwrap();
    let fails_s = fails.to_str().unwrap();
    let suite: Vec<Vec<&str>> = vec![
        vec!["upgrade-check", wf_s],
        vec!["upgrade-check", fails_s, "--json"],
        vec!["upgrade-check", fails_s, "--runs", &run],
        vec!["list"],
        vec!["list", "--json"],
        vec!["list", "--status", "failed"],
        vec!["list", "--status", "nope"],
        vec!["status", short],
        vec!["status", &run, "--json"],
        vec!["status", &failed],
        vec!["status", "ffff"],
        vec!["history", &run],
        vec!["history", &run, "--json"],
        vec!["history", "00000000-0000-0000-0000-000000000000"],
        vec!["replay", &run, "--at", "3"],
        vec!["replay", &run, "--at", "3", "--json"],
        vec!["replay", &run, "--timeline"],
        vec!["replay", &run, "--timeline", "--json"],
        vec!["replay", &run, "--at", "99"],
        vec!["replay", &run, "--at-time", "nonsense"],
        vec!["verify", &run],
        vec!["verify", &run, "--json"],
        vec!["export", &run],
        vec!["agents"],
        vec!["agents", "--json"],
        vec!["diff", &run, &run],
        vec!["diff", &run, &failed, "--json"],
        vec!["cancel", &run],
        vec!["pause", &failed],
        vec!["resume", &run],
        vec!["release", &run],
        vec!["fork", &run, "--at", "99"],
    ];
    // verify reports the commit journal, which a server holds open: the
    // one line (and JSON member) that differs on purpose.
    let run_cmd = |args: &[&str]| {
        let mut o = env.run(args);
        if args[0] == "verify" {
            if args.contains(&"--json") {
                let mut v = o.json();
                v.as_object_mut().unwrap().remove("journal");
                o.stdout = v.to_string();
            } else {
                o.stdout = o
                    .stdout
                    .lines()
                    .filter(|l| !l.contains("  journal  "))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
        o
    };
    let direct: Vec<_> = suite.iter().map(|args| run_cmd(args)).collect();
    let _s = env.serve(&[]);
    for (args, d) in suite.iter().zip(&direct) {
        let r = run_cmd(args);
        assert_eq!(
            (r.code, &r.stdout),
            (d.code, &d.stdout),
            "{args:?}\nserver: {r:?}\nfile: {d:?}"
        );
        if d.code != 0 {
            assert_eq!(r.stderr, d.stderr, "{args:?}");
        }
    }
    // Commands that execute: the same summary and exit code.
    let through = env.run(&["run", wf.to_str().unwrap(), "--input", "{\"x\": 2}"]);
    assert_eq!(through.code, 0, "{through:?}");
    let strip = |s: &str| {
        s.replace(&through.run_id(), "RUN")
            .replace(&ok.run_id(), "RUN")
    };
    let summary = |s: &str| {
        s.lines()
            .filter(|l| !l.contains(':'))
            .map(strip)
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&through.stderr), summary(&ok.stderr));
    assert_eq!(strip(&through.stdout), strip(&ok.stdout));
    let fails2 = env.run(&["run", fails.to_str().unwrap()]);
    assert_eq!(fails2.code, 1, "{fails2:?}");
    let detached = env.run(&["run", wf.to_str().unwrap(), "--detach"]);
    assert_eq!(detached.code, 0);
    let id = detached.stdout.trim();
    assert_eq!(id.len(), 36, "{detached:?}");
    let follow = env.run(&["history", id, "--follow"]);
    assert_eq!(follow.code, 0);
    assert!(follow.stdout.contains("RunSucceeded"), "{follow:?}");
}

#[test]
fn tls_serves_https_and_the_cli_trusts_the_servers_certificate() {
    let env = Env::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = env.write("cert.pem", &cert.pem());
    let key_path = env.write("key.pem", &key.serialize_pem());
    let mut c = env.cmd();
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    let discovery: Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("chronicle.redb-server.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(discovery["url"], url.as_str());
    assert!(
        discovery["tls_cert"]
            .as_str()
            .unwrap()
            .ends_with("cert.pem")
    );
    // The CLI goes through the server over TLS, trusting its certificate.
    let wf = env.write("quick.yaml", QUICK);
    let t = Instant::now();
    let run = loop {
        let r = env.run(&["run", wf.to_str().unwrap()]);
        if r.code == 0 || t.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(run.code, 0, "{run:?}");
    let list = env.run(&["list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    // Plain HTTP to the TLS port gets no answer; a client that does not
    // trust the certificate is refused.
    let plain = reqwest::blocking::Client::new()
        .get(url.replace("https://", "http://") + "/healthz")
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    let untrusted = reqwest::blocking::Client::builder()
        .tls_certs_only([])
        .build()
        .unwrap()
        .get(format!("{url}/healthz"))
        .send();
    assert!(untrusted.is_err());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
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

/// The board example through the API, as the README shows it with curl:
/// register, submit, follow the stream, read the result — its figures
/// checked against counts made here.
#[test]
fn the_board_example_through_the_api() {
    let env = Env::new();
    let s = env.serve(&[]);
    let log_path = crate::support::root().join("examples/data/OpenSSH_2k.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let definition =
        std::fs::read_to_string(crate::support::root().join("examples/board.yaml")).unwrap();
    let r = s
        .http
        .put(format!("{}/v1/workflows/board", s.url))
        .bearer_auth(&s.token)
        .body(definition)
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s.post(
        "/v1/runs",
        &json!({"workflow_name": "board", "input": {"file": log_path}}),
    );
    assert_eq!(r.status(), 202);
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (events, ended) = read_stream(&s, &run, None, None);
    assert!(ended);
    let types: Vec<String> = events
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["payload"]["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(types.last().unwrap(), "RunSucceeded", "{types:?}");
    let st: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
    let out = |id: &str| {
        st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}"))
            .clone()
    };
    for (step, agent) in [
        ("cfo", "cfo"),
        ("cto", "cto"),
        ("cmo", "cmo"),
        ("coo", "coo"),
    ] {
        assert_eq!(out(step)["agent"], agent, "routed by skill");
        let c = out(step)["output"]["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
    }
    let failed = log
        .lines()
        .filter(|l| l.contains("Failed password"))
        .count();
    let break_ins = log
        .lines()
        .filter(|l| l.contains("POSSIBLE BREAK-IN ATTEMPT"))
        .count();
    let users: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split("Invalid user ").nth(1))
        .filter_map(|rest| rest.split(' ').next())
        .filter(|u| !u.is_empty()) // as the example's [^ ]+
        .collect();
    assert_eq!(out("cfo")["output"]["figures"]["failed_logins"], failed);
    assert_eq!(
        out("cto")["output"]["figures"]["break_in_attempts"],
        break_ins
    );
    assert_eq!(
        out("cmo")["output"]["figures"]["distinct_invalid_users"],
        users.len()
    );
    // The synthesis counts the approvals and weighs them.
    let recs: Vec<(String, f64)> = ["cfo", "cto", "cmo", "coo"]
        .iter()
        .map(|s| {
            let o = out(s)["output"].clone();
            (
                o["recommendation"].as_str().unwrap().to_string(),
                o["confidence"].as_f64().unwrap(),
            )
        })
        .collect();
    let approve: f64 = recs
        .iter()
        .filter(|(r, _)| r == "approve")
        .map(|(_, c)| c)
        .sum();
    let total: f64 = recs.iter().map(|(_, c)| c).sum();
    let decision = if approve > total - approve {
        "approve"
    } else {
        "defer"
    };
    let syn = out("synthesis")["output"].clone();
    assert_eq!(syn["decision"], decision, "{syn}");
    assert_eq!(
        syn["approving"],
        recs.iter().filter(|(r, _)| r == "approve").count()
    );
    let weight = if decision == "approve" {
        approve
    } else {
        total - approve
    };
    assert!(
        (syn["confidence"].as_f64().unwrap() - weight / total).abs() < 0.01,
        "{syn}"
    );
}

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_what_the_histories_say() {
    let env = Env::new();
    let s = env.serve(&[]);
    let agents =
        std::fs::read_to_string(crate::support::root().join("examples/agents.yaml")).unwrap();
    let log = crate::support::root().join("examples/data/OpenSSH_2k.log");
    let r = s.post(
        "/v1/runs",
        &json!({"workflow": agents, "input": {"file": log}}),
    );
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait_status(&s, &run)["status"], "succeeded");
    let r = s.post("/v1/runs", &json!({"workflow": QUICK}));
    let quick = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&s, &quick);
    // Open on loopback: no token.
    let resp = s.http.get(format!("{}/metrics", s.url)).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().unwrap();
    // Every figure against the history, counted here.
    let history = env.run(&["history", &run, "--json"]);
    let types: Vec<Value> = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["payload"].clone())
        .collect();
    let count = |f: &dyn Fn(&Value) -> bool| types.iter().filter(|p| f(p)).count() as f64;
    let succeeded = count(&|p| p["type"] == "StepSucceeded");
    let failed = count(&|p| p["type"] == "StepFailed" && p["kind"] != "timeout");
    let retried = count(&|p| p["type"] == "StepFailed" && !p["next_retry_at"].is_null());
    let no_agent = count(&|p| p["type"] == "StepUnassigned" && p["blocked"] == false);
    assert!(failed >= 2.0 && no_agent >= 1.0, "{types:?}");
    assert_eq!(
        metric(&text, "chronicle_runs_started_total{workflow=\"agents\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "chronicle_runs_started_total{workflow=\"quick\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "chronicle_runs_finished_total{workflow=\"agents\",status=\"succeeded\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "chronicle_step_attempts_total{workflow=\"agents\",status=\"succeeded\"}"
        ),
        Some(succeeded)
    );
    assert_eq!(
        metric(
            &text,
            "chronicle_step_attempts_total{workflow=\"agents\",status=\"failed\"}"
        ),
        Some(failed)
    );
    assert_eq!(
        metric(&text, "chronicle_step_retries_total{workflow=\"agents\"}"),
        Some(retried)
    );
    assert_eq!(
        metric(
            &text,
            "chronicle_steps_unassigned_total{reason=\"no_agent\"}"
        ),
        Some(no_agent)
    );
    assert_eq!(
        metric(&text, "chronicle_circuit_state{agent=\"brittle\"}"),
        Some(2.0),
        "its circuit opened"
    );
    assert_eq!(
        metric(&text, "chronicle_circuit_state{agent=\"steady\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "chronicle_agent_load{agent=\"steady\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "chronicle_runs_active{status=\"running\"}"),
        Some(0.0)
    );
    let all_events = env
        .run(&["history", &quick, "--json"])
        .stdout
        .lines()
        .count() as f64
        + types.len() as f64;
    let store_events = metric(&text, "chronicle_store_events_total").unwrap();
    assert!(store_events >= all_events, "{store_events} < {all_events}");
    assert!(metric(&text, "chronicle_store_commit_seconds_count").unwrap() > 0.0);
    assert!(text.contains("chronicle_step_duration_seconds_bucket{workflow=\"agents\",le="));
    assert!(text.contains("chronicle_store_group_size_bucket{le=\"1\"}"));
    // No run id is a label value.
    assert!(!text.contains(&run) && !text.contains(&quick));
}

#[test]
fn metrics_need_a_token_beyond_loopback() {
    let env = Env::new();
    for (extra, token) in [
        (vec![], None),
        (vec!["--metrics-token", "scrape-me"], Some("scrape-me")),
    ] {
        let mut c = env.cmd();
        c.args(["serve", "--listen", "0.0.0.0:0"])
            .args(&extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line.trim().rsplit(':').next().unwrap().to_string();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let api_token = std::fs::read_to_string(env.path("chronicle.redb-token")).unwrap();
        let http = reqwest::blocking::Client::new();
        let t = Instant::now();
        while http.get(&url).send().is_err() {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        problem(http.get(&url).send().unwrap(), 401, "unauthorized");
        let good = token
            .map(str::to_string)
            .unwrap_or_else(|| api_token.trim().to_string());
        assert_eq!(
            http.get(&url).bearer_auth(&good).send().unwrap().status(),
            200
        );
        if token.is_some() {
            problem(
                http.get(&url).bearer_auth(api_token.trim()).send().unwrap(),
                401,
                "unauthorized",
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn serve_refuses_a_damaged_or_held_database_and_changes_nothing() {
    let env = Env::new();
    std::fs::write(env.db(), b"not a redb file at all, just bytes").unwrap();
    let before = crate::support::digest(&env.db());
    let out = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("chronicle.redb"), "{out:?}");
    assert_eq!(
        crate::support::digest(&env.db()),
        before,
        "the file is untouched"
    );
    assert!(!env.path("chronicle.redb-server.json").exists());
    assert!(!env.path("chronicle.redb-token").exists());
    // A database another process holds: exit 3, nothing written.
    let env = Env::new();
    let marker = format!("held-{}", std::process::id());
    let wf = env.write("slow.yaml", &slow(&marker, 30));
    let mut runner = env
        .cmd()
        .args(["run", wf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&env.path(&format!("{marker}.started")));
    let out = env.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("in use by another process"), "{out:?}");
    assert!(!env.path("chronicle.redb-server.json").exists());
    let _ = runner.kill();
    let _ = runner.wait();
    crate::support::kill_marked(&marker);
}

#[test]
fn a_run_created_with_a_traceparent_joins_the_callers_trace() {
    let env = Env::new();
    let s = env.serve(&[]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = s
        .http
        .post(format!("{}/v1/runs", s.url))
        .bearer_auth(&s.token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"workflow": QUICK}))
        .send()
        .unwrap();
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&s, &run);
    let first: Value = s
        .get(&format!("/v1/runs/{run}/events?limit=1"))
        .json()
        .unwrap();
    assert_eq!(first["events"][0]["payload"]["trace_id"], trace);
    // Without one, the run's own id is its trace.
    let r = s.post("/v1/runs", &json!({"workflow": QUICK}));
    let other = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let first: Value = s
        .get(&format!("/v1/runs/{other}/events?limit=1"))
        .json()
        .unwrap();
    assert_eq!(
        first["events"][0]["payload"]["trace_id"],
        other.replace('-', "")
    );
    // A step sees the run's trace in TRACEPARENT.
    let wf = "name: tp\nsteps:\n  - id: a\n    shell: |\n      printf '{\"tp\": \"%s\"}' \"$TRACEPARENT\"\n";
    let r = s
        .http
        .post(format!("{}/v1/runs", s.url))
        .bearer_auth(&s.token)
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"workflow": wf}))
        .send()
        .unwrap();
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let st = wait_status(&s, &run);
    let tp = st["steps"][0]["output"]["tp"].as_str().unwrap().to_string();
    assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
}

/// Garbage to every route of the OpenAPI document: odd path segments,
/// query strings and bodies. Every answer is a 4xx problem (never a 5xx,
/// never a hang), the server stays up, and nothing is written.
#[test]
fn garbage_to_every_route_gets_a_problem_and_changes_nothing() {
    let env = Env::new();
    let s = env.serve(&["--body-limit", "65536"]);
    let r = s.post("/v1/runs", &json!({"workflow": QUICK}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&s, &run);
    let doc: Value = s
        .http
        .get(format!("{}/openapi.json", s.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let verify_before: Value = s.get("/v1/verify").json().unwrap();
    let segments = [
        "%00",
        "..",
        "%2e%2e%2f",
        "zz",
        "\u{202e}x",
        &"f".repeat(5000),
        "-1",
        "0",
    ];
    let queries = [
        "?at=-1",
        "?at=18446744073709551616",
        "?after=x&limit=-5",
        "?wait=99999999999s",
        "?cursor=%ff%fe",
        "?status[]=1",
        "?at_time=2026-13-45",
    ];
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"workflow\": 5}".to_vec(),
        b"{\"at\": \"x\", \"input\": []}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        format!("{{\"workflow\": \"{}\"}}", "a: [".repeat(2000)).into_bytes(),
        vec![b'x'; 70_000],
    ];
    let mut seen = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            for seg in segments {
                let p = path.replace("{id}", seg).replace("{name}", seg);
                // GETs get every query; the others every body.
                let (qs, bs): (Vec<&str>, Vec<&Vec<u8>>) = if method == "get" {
                    (queries.to_vec(), vec![&bodies[0]])
                } else {
                    (vec![""], bodies.iter().collect())
                };
                for q in qs {
                    for &body in &bs {
                        let resp = s
                            .http
                            .request(
                                method.to_uppercase().parse().unwrap(),
                                format!("{}{p}{q}", s.url),
                            )
                            .bearer_auth(&s.token)
                            .body(body.clone())
                            .timeout(Duration::from_secs(30))
                            .send();
                        let Ok(resp) = resp else { continue }; // an unsendable URL
                        let status = resp.status().as_u16();
                        seen += 1;
                        assert!(
                            status < 500,
                            "{method} {p}{q} ({} bytes): {status}",
                            body.len()
                        );
                        if !(200..300).contains(&status) {
                            let ct = resp
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap_or("").to_string());
                            assert!(
                                status == 404
                                    || status == 405
                                    || ct.as_deref() == Some("application/problem+json"),
                                "{method} {p}{q}: {status} {ct:?}"
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(seen > 1000, "{seen} requests");
    assert_eq!(
        s.http
            .get(format!("{}/healthz", s.url))
            .send()
            .unwrap()
            .status(),
        200
    );
    let runs: Value = s.get("/v1/runs").json().unwrap();
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
    let verify_after: Value = s.get("/v1/verify").json().unwrap();
    assert_eq!(verify_after["ok"], true);
    assert_eq!(
        verify_after["streams"], verify_before["streams"],
        "nothing was appended"
    );
}
