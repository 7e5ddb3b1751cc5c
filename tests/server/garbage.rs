//! Garbage to every route: every answer a 4xx problem, the server up,
//! nothing written.

use super::*;

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
                let p = path
                    .replace("{id}", seg)
                    .replace("{name}", seg)
                    .replace("{step}", seg)
                    .replace("{token}", seg);
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
