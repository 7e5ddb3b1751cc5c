//! `/metrics` and traces through the server.

use super::*;

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
