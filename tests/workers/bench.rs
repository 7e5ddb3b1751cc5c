//! `chronicle bench workers` on the test server: every worker count and
//! every round is measured and printed, and the benchmark leaves neither a
//! database nor a worker process behind.

use serde_json::Value;

use super::{admin, postgres_server};
use crate::support::{BIN, marked_processes};

/// Databases the workers benchmark creates on the server.
fn bench_databases() -> usize {
    admin("SELECT datname FROM pg_database WHERE datname LIKE 'chronicle\\_bench\\_w%'")
        .into_iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count()
}

#[test]
fn bench_workers_measures_every_count_in_every_round_and_cleans_up() {
    let before = bench_databases();
    let out = std::process::Command::new(BIN)
        .args(["--db", &postgres_server(), "bench", "workers", "--json"])
        .env("CHRONICLE_BENCH_RUNS", "40")
        .env("CHRONICLE_BENCH_WORKERS", "1,2")
        .env("CHRONICLE_BENCH_ROUNDS", "2")
        .output()
        .unwrap();
    let out = crate::support::Out::from(out);
    assert_eq!(out.code, 0, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["rounds"], 2, "{v}");
    assert_eq!(v["runs"], 40, "{v}");
    for n in ["1", "2"] {
        let rounds = v["runs_per_s_32_rounds"][n].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{v}");
        assert!(rounds.iter().all(|r| r.as_f64().unwrap() > 0.0), "{v}");
        let median = v["runs_per_s_32"][n].as_f64().unwrap();
        // The median of two rounds is one of them.
        assert!(rounds.iter().any(|r| r.as_f64() == Some(median)), "{v}");
        // Every run appends, so every measurement committed to the log.
        assert!(v["write_commits_per_run"][n].as_f64().unwrap() > 0.0, "{v}");
        assert!(
            v["commits_per_run"][n].as_f64().unwrap()
                >= v["write_commits_per_run"][n].as_f64().unwrap(),
            "{v}"
        );
    }
    assert!(v["scaling_2"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["scaling_4"], 0.0, "4 workers were not measured: {v}");
    assert!(v["pg_commit_ms"].as_f64().unwrap() > 0.0, "{v}");
    // Every measurement's database was dropped, and its workers stopped.
    assert_eq!(bench_databases(), before);
    assert!(marked_processes("chronicle_bench_w").is_empty());
}
