//! `chronicle bench`: the benchmarks of `chronicle-bench`, printed.

use std::path::Path;

use crate::error::CliError;

/// `chronicle bench store|steps|replay`.
pub fn bench(db: &Path, which: &str, json: bool, dir: Option<&Path>) -> Result<u8, CliError> {
    let postgres = db.to_str().filter(|s| chronicle_store::is_postgres_url(s));
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None if postgres.is_some() => ".".into(),
        None => db
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into()),
    }
    .join("chronicle-bench");
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::storage(format!("cannot create {}: {e}", dir.display())))?;
    let value = match which {
        "store" => serde_json::to_value(chronicle_bench::store::run(&dir)?),
        "steps" => serde_json::to_value(chronicle_bench::steps::run_on(&dir, postgres)?),
        "workers" => {
            let Some(server) = postgres else {
                return Err(CliError::input(
                    "bench workers measures workers on PostgreSQL: give --db postgres://USER@HOST/DB",
                ));
            };
            let exe = std::env::current_exe()
                .map_err(|e| CliError::storage(format!("cannot find this binary: {e}")))?;
            // CHRONICLE_BENCH_RUNS: runs measured per worker count.
            let runs = std::env::var("CHRONICLE_BENCH_RUNS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3000);
            // CHRONICLE_BENCH_WORKERS: the worker counts (default 1,2,4).
            let counts: Vec<usize> = std::env::var("CHRONICLE_BENCH_WORKERS")
                .ok()
                .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
                .filter(|c: &Vec<usize>| !c.is_empty())
                .unwrap_or_else(|| vec![1, 2, 4]);
            // CHRONICLE_BENCH_ROUNDS: rounds, each measuring every count.
            let rounds = std::env::var("CHRONICLE_BENCH_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(chronicle_bench::workers::DEFAULT_ROUNDS);
            serde_json::to_value(chronicle_bench::workers::run_counts(
                &exe, server, runs, &counts, rounds,
            )?)
        }
        "replay" => serde_json::to_value(chronicle_bench::replay::run(&dir)?),
        "api" => serde_json::to_value(chronicle_bench::api::run(&dir)?),
        "timers" => {
            // CHRONICLE_BENCH_PENDING_TIMERS: how many runs wait on a timer
            // during the recovery figure (default 100,000).
            let pending = std::env::var("CHRONICLE_BENCH_PENDING_TIMERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000);
            serde_json::to_value(chronicle_bench::timers::run(&dir, pending)?)
        }
        "cli" => {
            let exe = std::env::current_exe()
                .map_err(|e| CliError::storage(format!("cannot find this binary: {e}")))?;
            serde_json::to_value(chronicle_bench::cli::run(&dir, &exe)?)
        }
        "scheduler" => serde_json::to_value(
            chronicle_bench::scheduler::run()
                .map_err(|e| CliError::storage(format!("cannot start the runtime: {e}")))?,
        ),
        other => return Err(CliError::input(format!("unknown benchmark {other}"))),
    }
    .expect("figures serialize");
    let _ = std::fs::remove_dir_all(&dir);
    if json {
        println!("{value}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("plain data serializes")
        );
    }
    Ok(0)
}
