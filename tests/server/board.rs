//! The board example through the API, with the calls the README makes
//! with curl.

use super::*;

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
