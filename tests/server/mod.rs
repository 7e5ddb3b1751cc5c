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

/// Submit a workflow definition; the new run's id (202 asserted).
fn submit(s: &Server, wf: &str) -> String {
    let r = s.post("/v1/runs", &json!({"workflow": wf}));
    let status = r.status();
    let v: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 202, "{v}");
    v["run_id"].as_str().unwrap().to_string()
}

fn wait_status(s: &Server, run: &str) -> Value {
    let v: Value = s.get(&format!("/v1/runs/{run}?wait=30s")).json().unwrap();
    v
}

mod board;
mod callbacks;
mod children;
mod cli;
mod garbage;
mod lifecycle;
mod observability;
mod routes;
mod schedules;
mod views;
mod waits;

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
