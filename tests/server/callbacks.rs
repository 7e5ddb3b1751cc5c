//! `completion: callback` steps against a real HTTP service in the test:
//! it answers 202 and calls back later.

use super::*;

use std::io::{Read, Write};
use std::net::TcpListener;

/// A one-request HTTP service: answers 202 `{"job": 1}` and sends the
/// request's `Chronicle-Callback-Url` header and JSON body back.
fn service() -> (String, std::sync::mpsc::Receiver<(String, Value)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jobs", l.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = l.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = conn.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let head = text[..i].to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    break (head, buf[i + 4..i + 4 + len].to_vec());
                }
            }
        };
        let callback = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("chronicle-callback-url")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let reply = "{\"job\": 1}";
        write!(
            conn,
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        )
        .unwrap();
        let _ = tx.send((
            callback,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ));
    });
    (url, rx)
}

fn wf(url: &str, secret: bool) -> String {
    let extra = if secret {
        "    callback_secret: RENDER_KEY\n"
    } else {
        ""
    };
    let secrets = if secret {
        "secrets: [RENDER_KEY]\n"
    } else {
        ""
    };
    format!(
        "name: render\n{secrets}steps:\n  - id: render\n    http: {{ method: POST, url: \"{url}\" }}\n    with: {{ page: 3 }}\n    completion: callback\n{extra}    timeout: 1m\n  - id: after\n    needs: [render]\n    command: ['true']\n"
    )
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    // HMAC-SHA256 by its definition (RFC 2104), to check the server's.
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(body.iter().copied())
        .collect();
    let ih = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(ih.iter().copied())
        .collect();
    Sha256::digest(&outer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_callback_completes_the_step_once_and_only_its_hash_is_recorded() {
    let env = Env::new();
    let s = env.serve(&[]);
    let (url, got) = service();
    let r = s.post("/v1/runs", &json!({"workflow": wf(&url, false)}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (callback, body) = got.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        callback.starts_with(&format!("{}/v1/callbacks/", s.url)),
        "{callback}"
    );
    assert_eq!(body["callback_url"], callback.as_str(), "{body}");
    assert_eq!(body["page"], 3);
    let token = callback.rsplit('/').next().unwrap().to_string();
    // Accepted: the step waits for the callback.
    let t = Instant::now();
    loop {
        let v: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
        if v["steps"][0]["wait"]["accepted"] == true {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No bearer token: the one-time token is the credential.
    let call = |path: &str, body: &Value| {
        s.http
            .post(format!("{}{path}", s.url))
            .json(body)
            .send()
            .unwrap()
    };
    let ok = call(
        &format!("/v1/callbacks/{token}"),
        &json!({"rendered": "page-3.pdf"}),
    );
    assert_eq!(ok.status(), 200, "{:?}", ok.text());
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["steps"][0]["output"],
        json!({"rendered": "page-3.pdf"})
    );
    problem(
        call(&format!("/v1/callbacks/{token}"), &json!({})),
        409,
        "callback_done",
    );
    problem(
        call(&format!("/v1/callbacks/{}", "0".repeat(64)), &json!({})),
        404,
        "unknown_callback",
    );
    problem(
        call("/v1/callbacks/not-a-token!", &json!({})),
        404,
        "unknown_callback",
    );
    // The history holds the token's SHA-256, never the token.
    let export = s.get(&format!("/v1/runs/{run}/export")).text().unwrap();
    assert!(!export.contains(&token), "the token is not in the log");
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(export.contains(&sha));
    for kind in ["CallbackIssued", "CallbackAccepted", "CallbackReceived"] {
        assert!(export.contains(kind), "{kind}");
    }
}

#[test]
fn a_signed_callback_must_verify() {
    let env = Env::new();
    let s = env.serve_with(env.dir.path(), &[("RENDER_KEY", "k3y")], &[]);
    let (url, got) = service();
    let r = s.post("/v1/runs", &json!({"workflow": wf(&url, true)}));
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (callback, _) = got.recv_timeout(Duration::from_secs(20)).unwrap();
    let body = br#"{"rendered":"signed.pdf"}"#;
    let post = |sig: Option<String>| {
        let mut r = s
            .http
            .post(&callback)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = sig {
            r = r.header("chronicle-signature", sig);
        }
        r.send().unwrap()
    };
    // Wait until accepted, then try a missing and a wrong signature.
    let t = Instant::now();
    while s.get(&format!("/v1/runs/{run}")).json::<Value>().unwrap()["steps"][0]["wait"]["accepted"]
        != true
    {
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    }
    problem(post(None), 401, "bad_signature");
    problem(
        post(Some(format!("sha256={}", hmac_hex(b"wrong", body)))),
        401,
        "bad_signature",
    );
    let ok = post(Some(format!("sha256={}", hmac_hex(b"k3y", body))));
    assert_eq!(ok.status(), 200, "{:?}", ok.text());
    let done = wait_status(&s, &run);
    assert_eq!(
        done["steps"][0]["output"],
        json!({"rendered": "signed.pdf"})
    );
}

/// A job service: `POST /jobs` answers 202 `{"id": 7}`; `GET /jobs/7`
/// answers `running` until `done_after` polls, then `done`.
fn job_service(done_after: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let polls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = polls.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 8192];
            let n = conn.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, body) = if req.starts_with("POST /jobs") {
                ("202 Accepted", "{\"id\": 7}".to_string())
            } else if req.starts_with("GET /jobs/7") {
                let k = seen.fetch_add(1, Ordering::SeqCst) + 1;
                if k >= done_after {
                    (
                        "200 OK",
                        "{\"status\": \"done\", \"pdf\": \"page-7.pdf\"}".to_string(),
                    )
                } else {
                    ("200 OK", "{\"status\": \"running\"}".to_string())
                }
            } else {
                ("404 Not Found", "{}".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, polls)
}

#[test]
fn polling_completes_the_step_and_survives_kill_9() {
    use std::sync::atomic::Ordering;
    let env = Env::new();
    let (base, polls) = job_service(12);
    let wf = format!(
        "name: poll\nsteps:\n  - id: render\n    http: {{ method: POST, url: \"{base}/jobs\" }}\n    completion: {{ poll: {{ url: \"{base}/jobs/${{{{ steps.render.output.id }}}}\", every: 100ms }} }}\n    timeout: 1m\n"
    );
    let s = env.serve(&[]);
    let r = s.post("/v1/runs", &json!({"workflow": wf}));
    assert_eq!(r.status(), 202, "{:?}", r.text());
    let run = r.json::<Value>().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Polling: the step waits on the resolved URL.
    let t = Instant::now();
    loop {
        let v: Value = s.get(&format!("/v1/runs/{run}")).json().unwrap();
        if v["steps"][0]["wait"]["for"] == "poll" {
            assert_eq!(v["steps"][0]["wait"]["url"], format!("{base}/jobs/7"));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    while polls.load(Ordering::SeqCst) < 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A crash mid-polling: the next server polls on (no new request).
    s.kill9();
    let s = env.serve(&[]);
    let done = wait_status(&s, &run);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["steps"][0]["output"]["pdf"], "page-7.pdf");
    assert_eq!(done["steps"][0]["attempts"], 1, "the request was sent once");
    let events: Value = s.get(&format!("/v1/runs/{run}/events")).json().unwrap();
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["payload"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "PollStarted").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"StepAbandoned"), "{kinds:?}");
}
