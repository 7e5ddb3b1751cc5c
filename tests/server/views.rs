//! The views the web UI reads: the run list's search and counts, the
//! attempts projection (Gantt and step panel), a timeline's tail, and
//! the change feed.

use super::*;

use crate::support::root;

#[test]
fn the_list_searches_by_id_prefix_and_key_and_counts_per_status() {
    let env = Env::new();
    let s = env.serve(&[]);
    let create = |key: Option<&str>, wf: &str| -> String {
        let mut r = s
            .http
            .post(format!("{}/v1/runs", s.url))
            .bearer_auth(&s.token)
            .json(&json!({"workflow": wf}));
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        let v: Value = r.send().unwrap().json().unwrap();
        let run = v["run_id"].as_str().unwrap().to_string();
        wait_status(&s, &run);
        run
    };
    let a = create(Some("order-171"), QUICK);
    let b = create(Some("order-172"), QUICK);
    let failing = "name: failing\nsteps:\n  - id: x\n    command: ['false']\n    retry: { max_attempts: 1 }\n";
    let c = create(None, failing);
    let list = |q: &str| -> Value { s.get(&format!("/v1/runs{q}")).json().unwrap() };
    let ids = |v: &Value| -> BTreeSet<String> {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = list("");
    assert_eq!(ids(&all).len(), 3);
    assert_eq!(all["counts"]["succeeded"], 2, "{all}");
    assert_eq!(all["counts"]["failed"], 1, "{all}");
    assert_eq!(all["counts"]["running"], 0, "{all}");
    let keyed = list("?q=order-17");
    assert_eq!(ids(&keyed), BTreeSet::from([a.clone(), b.clone()]));
    assert_eq!(ids(&list("?q=order-172")), BTreeSet::from([b.clone()]));
    // An id prefix (what the UI shows: the first 8 characters) finds it.
    assert!(ids(&list(&format!("?q={}", &c[..13]))).contains(&c));
    assert!(ids(&list("?q=nothing-like-this")).is_empty());
    // The status filter narrows the rows, not the counts.
    let failed = list("?status=failed");
    assert_eq!(ids(&failed), BTreeSet::from([c.clone()]));
    assert_eq!(failed["counts"]["succeeded"], 2, "{failed}");
    // The workflow filter narrows both.
    let quick = list("?workflow=quick");
    assert_eq!(quick["counts"]["failed"], 0, "{quick}");
    assert_eq!(ids(&quick).len(), 2);
}

#[test]
fn attempts_link_to_their_events_with_outcomes_backoff_stderr_and_routing() {
    let env = Env::new();
    let s = env.serve_from(&root(), &[]);
    let agents = std::fs::read_to_string(root().join("examples/agents.yaml")).unwrap();
    let timeout = "name: slow\nsteps:\n  - id: nap\n    shell: exec sleep 5\n    timeout: 300ms\n    retry: { max_attempts: 1 }\n";
    let run_of = |wf: &str| -> String {
        let r = s.post("/v1/runs", &json!({"workflow": wf}));
        let run = r.json::<Value>().unwrap()["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        wait_status(&s, &run);
        run
    };
    let run = run_of(&agents);
    let view: Value = s.get(&format!("/v1/runs/{run}/attempts")).json().unwrap();
    let history: Vec<Value> = s
        .get(&format!("/v1/runs/{run}/events?limit=10000"))
        .json::<Value>()
        .unwrap()["events"]
        .as_array()
        .unwrap()
        .clone();
    let event = |seq: u64| history[(seq - 1) as usize]["payload"].clone();
    let attempts = view["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty());
    for a in attempts {
        let started = event(a["started_seq"].as_u64().unwrap());
        assert_eq!(started["type"], "StepStarted", "{a}");
        assert_eq!(started["step"], a["step"]);
        assert_eq!(started["attempt"], a["attempt"]);
        let ended = event(a["ended_seq"].as_u64().unwrap());
        assert_eq!(ended["step"], a["step"], "{a}");
        assert_eq!(ended["attempt"], a["attempt"], "{a}");
        let want = match ended["type"].as_str().unwrap() {
            "StepSucceeded" => "succeeded",
            "StepFailed" => "failed",
            "StepAbandoned" => "abandoned",
            other => panic!("{other}"),
        };
        assert_eq!(a["outcome"], want, "{a}");
    }
    let extract: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["step"] == "extract-ids")
        .collect();
    assert!(extract.len() >= 2, "{extract:?}");
    let brittle = extract
        .iter()
        .find(|a| a["agent"] == "brittle")
        .expect("an attempt on brittle");
    assert_eq!(brittle["outcome"], "failed");
    assert!(
        brittle["stderr"]
            .as_str()
            .unwrap()
            .contains("upstream model unavailable"),
        "{brittle}"
    );
    assert!(brittle["next_retry_at"].is_string(), "a backoff: {brittle}");
    let last = extract.last().unwrap();
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["agent"], "steady");
    let routed = view["routing"]["extract-ids"].as_array().unwrap();
    assert!(
        routed
            .iter()
            .any(|d| d["agent"] == "steady" && d["why"].as_str().unwrap().contains("circuit")),
        "{routed:?}"
    );
    let unassigned = view["routing"]["analyze-context"].as_array().unwrap();
    assert!(unassigned.iter().all(|d| d["agent"].is_null()));
    assert!(
        unassigned[0]["why"]
            .as_str()
            .unwrap()
            .contains("context_analysis"),
        "{unassigned:?}"
    );

    // At a seq: only the attempts started by then, the open one running.
    let first_end = attempts
        .iter()
        .map(|a| a["ended_seq"].as_u64().unwrap())
        .min()
        .unwrap();
    let early: Value = s
        .get(&format!("/v1/runs/{run}/attempts?at={}", first_end - 1))
        .json()
        .unwrap();
    assert_eq!(early["seq"], first_end - 1);
    let early = early["attempts"].as_array().unwrap();
    assert!(!early.is_empty());
    assert!(
        early
            .iter()
            .all(|a| a["outcome"] == "running" && a["ended_seq"].is_null()),
        "{early:?}"
    );
    assert!(
        early
            .iter()
            .all(|a| a["started_seq"].as_u64().unwrap() < first_end)
    );
    let bad = s.get(&format!("/v1/runs/{run}/attempts?at=999999"));
    problem(bad, 400, "bad_request");

    // A timeout is named as such.
    let slow = run_of(timeout);
    let view: Value = s.get(&format!("/v1/runs/{slow}/attempts")).json().unwrap();
    assert_eq!(view["attempts"][0]["outcome"], "timed_out", "{view}");

    // A timeline's tail equals the same entries of the whole timeline.
    let whole: Vec<Value> = s.get(&format!("/v1/runs/{run}/timeline")).json().unwrap();
    let head = whole.len() as u64;
    for since in [0, 1, head / 2, head - 1, head] {
        let tail: Vec<Value> = s
            .get(&format!("/v1/runs/{run}/timeline?since={since}"))
            .json()
            .unwrap();
        assert_eq!(tail, whole[since as usize..].to_vec(), "since {since}");
    }
    let one: Vec<Value> = s
        .get(&format!(
            "/v1/runs/{run}/timeline?at={}&since={}",
            head / 2,
            head / 2 - 1
        ))
        .json()
        .unwrap();
    assert_eq!(one, vec![whole[(head / 2 - 1) as usize].clone()]);
}

#[test]
fn the_change_feed_names_each_committed_run_event() {
    let env = Env::new();
    let s = env.serve(&[]);
    let resp = s.get("/v1/changes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<Value>(data)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    // Subscribed before the run exists: every one of its events comes, in order.
    std::thread::sleep(Duration::from_millis(200));
    let r = s.post("/v1/runs", &json!({"workflow": QUICK}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the run's events on the change feed");
        if v["run_id"] != run.as_str() {
            continue;
        }
        seqs.push(v["seq"].as_u64().unwrap());
        if v["type"] == "RunSucceeded" {
            break;
        }
    }
    let head: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
    assert_eq!(
        seqs,
        (1..=head["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    );
}
