//! A log altered in PostgreSQL behind Chronicle's back (an event's payload
//! edited, an event deleted): `verify` names each damaged run and what is
//! wrong, commands on them fail with a clear error, and a worker that
//! claims them quarantines them once — it neither executes them nor
//! claims them again and again — while the other runs go on.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::support::Env;

/// The runs as `list --json` shows them, by id.
fn runs(env: &Env, url: &str) -> HashMap<String, Value> {
    chronicle(env, url, &["list", "--json"])
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r["run_id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// Wait (at most 30 s, polling `list`) until `done` holds of the runs.
fn wait_runs(env: &Env, url: &str, done: impl Fn(&HashMap<String, Value>) -> bool) {
    let t = Instant::now();
    while !done(&runs(env, url)) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{:?}",
            runs(env, url)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_altered_log_is_reported_and_its_runs_quarantined_once() {
    let env = Env::new();
    let url = fresh_postgres();
    let wf = env.write(
        "t.yaml",
        "name: t\nsteps:\n  - id: a\n    command: [sh, -c, 'echo 1']\n  - id: b\n    needs: [a]\n    signal: go\n",
    );
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let out = chronicle(&env, &url, &["run", wf.to_str().unwrap(), "--detach"]);
            assert_eq!(out.code, 0, "{out:?}");
            out.stdout.trim().to_string()
        })
        .collect();
    let (edited, gapped, sound) = (&ids[0], &ids[1], &ids[2]);
    let mut w = worker(&env, &url, "2s", "w1.log");
    wait_runs(&env, &url, |r| ids.iter().all(|id| r[id]["seq"] == 6));
    let _ = w.kill();
    let _ = w.wait();
    // Behind Chronicle's back: one letter of an event's payload changed,
    // another run's event deleted.
    let db = |sql: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.simple_query(sql).await.unwrap()
        })
    };
    db(&format!(
        "UPDATE chronicle_events SET payload = overlay(payload placing '\\x5a'::bytea from 40 for 1) \
         WHERE stream = '{edited}' AND seq = 4; \
         DELETE FROM chronicle_events WHERE stream = '{gapped}' AND seq = 3"
    ));
    let verify = chronicle(&env, &url, &["verify"]);
    assert_eq!(verify.code, 1, "{verify:?}");
    assert!(
        verify.stdout.contains(&format!("FAIL  {edited}")) && verify.stdout.contains("altered"),
        "{verify:?}"
    );
    assert!(
        verify.stdout.contains(&format!("FAIL  {gapped}"))
            && verify.stdout.contains("gap from seq 3"),
        "{verify:?}"
    );
    assert!(
        !verify.stdout.contains(&format!("FAIL  {sound}")),
        "{verify:?}"
    );
    for run in [edited, gapped] {
        let status = chronicle(&env, &url, &["status", run]);
        assert_eq!(status.code, 3, "{status:?}");
        assert!(status.stderr.contains(run.as_str()), "{status:?}");
        assert!(!status.stderr.contains("panicked"), "{status:?}");
    }
    // A worker takes the runs over once the dead one's leases expire.
    let mut w = worker(&env, &url, "2s", "w2.log");
    let t = Instant::now();
    loop {
        let r = runs(&env, &url);
        if r[edited]["status"] == "quarantined" && r[gapped]["status"] == "quarantined" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Quarantined once: their leases stay with this worker, not claimed
    // again every second.
    let lease_epochs = || -> Vec<String> {
        db(&format!(
            "SELECT run || ':' || epoch || ':' || coalesce(owner, '-') FROM chronicle_leases \
             WHERE run IN ('{edited}', '{gapped}') ORDER BY run"
        ))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect()
    };
    let before = lease_epochs();
    assert_eq!(before.len(), 2, "{before:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lease_epochs(),
        before,
        "the damaged runs were claimed again"
    );
    // The sound run goes on.
    let signal = chronicle(&env, &url, &["signal", sound, "go"]);
    assert_eq!(signal.code, 0, "{signal:?}");
    wait_runs(&env, &url, |r| r[sound]["status"] == "succeeded");
    let _ = w.kill();
    let _ = w.wait();
    // Nothing was appended to the damaged runs: their seq is where the
    // first worker left it.
    let r = runs(&env, &url);
    assert_eq!(r[edited]["seq"], 6, "{r:?}");
    assert_eq!(r[gapped]["seq"], 6, "{r:?}");
    let log = std::fs::read_to_string(env.path("w2.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
