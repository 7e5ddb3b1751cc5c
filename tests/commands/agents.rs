//! Agents and observability from the CLI: `agents` lists skills, circuits
//! and transitions; a failing health check opens a circuit; traces go out
//! over OTLP/HTTP.

use super::OK;
use crate::support::Env;

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
