//! Every route and its errors (the board example with curl's calls is in
//! `board`, garbage to every route in `garbage`).

use super::*;

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
        "GET /v1/runs/{id}/attempts",
        "GET /v1/changes",
        "GET /v1/runs/{id}/export",
        "POST /v1/runs/import",
        "GET /v1/verify",
        "GET /v1/runs/{id}/verify",
        "POST /v1/runs/{id}/cancel",
        "POST /v1/runs/{id}/pause",
        "POST /v1/runs/{id}/resume",
        "POST /v1/runs/{id}/release",
        "POST /v1/runs/{id}/fork",
        "POST /v1/runs/{id}/signals/{name}",
        "POST /v1/runs/{id}/steps/{step}/approval",
        "POST /v1/callbacks/{token}",
        "POST /v1/schedules",
        "GET /v1/schedules",
        "GET /v1/schedules/{name}",
        "DELETE /v1/schedules/{name}",
        "POST /v1/schedules/{name}/pause",
        "POST /v1/schedules/{name}/resume",
        "POST /v1/schedules/{name}/trigger",
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
            .replace("{name}", "nothing")
            .replace("{step}", "nothing")
            .replace("{token}", "nothing");
        let r = s
            .http
            .request(method.parse().unwrap(), format!("{}{path}", s.url))
            .bearer_auth(&s.token)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        if path == "/v1/changes" {
            // A stream that lasts: its head says it is served.
            assert_eq!(status, 200);
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            continue;
        }
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
