//! `chronicle serve`: open the database, serve the API until SIGINT or
//! SIGTERM, then shut down gracefully (see `chronicle_server::serve`).

use std::io::Write;
use std::path::Path;

use chronicle_server::ServeOptions;

use crate::error::CliError;

/// Serve `db` with `options`; exit 0 after a graceful shutdown. On a
/// shared database the server also executes runs as a worker unless
/// `executes` is false (`--no-worker`), with leases of `lease`.
pub async fn serve(
    db: &Path,
    options: ServeOptions,
    executes: bool,
    lease: std::time::Duration,
) -> Result<u8, CliError> {
    let mut signals = crate::signals::StopSignals::new()?;
    let engine = crate::runs::engine_builder(db)
        .executes(executes)
        .lease_ms(lease.as_millis() as u64)
        .build()?;
    let grace = options.grace;
    let stop = async move { signals.recv().await.0.to_string() };
    let report = chronicle_server::serve(
        engine,
        db,
        options,
        |url| {
            // Scripts read this first line for the real port.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {url}");
            // The web UI's sign-in link (as Jupyter prints one).
            if let Some(token) = chronicle_server::auth::client_token(db) {
                let _ = writeln!(
                    out,
                    "web UI: {url}/login?token={}",
                    chronicle_server::client::percent_encode(&token)
                );
            }
            let _ = out.flush();
        },
        stop,
    )
    .await
    .map_err(|e| CliError::storage(e.0))?;
    eprintln!(
        "{}; `chronicle serve` again continues every run",
        stopped(report.attempts_cut, grace)
    );
    Ok(0)
}

/// `chronicle worker`: execute runs of the shared database `db` until
/// SIGINT or SIGTERM, then let running attempts finish for `grace`, record
/// the rest abandoned and release the leases (other workers continue the
/// runs at once). Exit 0.
///
/// Errors: `db` is not a shared database (exit 2); it cannot be opened.
pub async fn worker(
    db: &Path,
    concurrency: usize,
    max_runs: usize,
    lease: std::time::Duration,
    grace: std::time::Duration,
) -> Result<u8, CliError> {
    if !chronicle_server::auth::is_shared(db) {
        return Err(CliError::input(format!(
            "chronicle worker executes runs of a shared database, and {} is a file: give --db postgres://USER@HOST/DB (a database file is executed by `chronicle serve` or `chronicle run`)",
            db.display()
        )));
    }
    let mut signals = crate::signals::StopSignals::new()?;
    let engine = crate::runs::engine_builder(db)
        .max_parallel(concurrency.max(1))
        .max_runs(max_runs.max(1))
        .lease_ms(lease.as_millis() as u64)
        .build()?;
    let work = engine.spawn_worker();
    eprintln!(
        "worker {} executing runs of {}",
        engine.worker_id().unwrap_or("?"),
        engine.store().path().display()
    );
    let (reason, _) = signals.recv().await;
    work.abort();
    engine.unregister_worker().await;
    let cut = engine
        .drain(
            grace,
            &format!("the worker was stopped by {reason}; the attempt's process group was killed after the grace period"),
        )
        .await;
    eprintln!("{}; other workers continue the runs", stopped(cut, grace));
    Ok(0)
}

/// What a stop did to the attempts: `cut` of them were still running after
/// the `grace` period and were recorded as abandoned.
fn stopped(cut: usize, grace: std::time::Duration) -> String {
    match cut {
        0 => "stopped: no attempt was cut (each had ended, or ended within the grace period)"
            .to_string(),
        n => format!(
            "stopped: {n} attempt(s) were still running after the {}s grace period and were recorded as abandoned",
            grace.as_secs_f64()
        ),
    }
}
