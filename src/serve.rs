//! `chronicle serve`: open the database, serve the API until SIGINT or
//! SIGTERM, then shut down gracefully (see `chronicle_server::serve`).

use std::io::Write;
use std::path::Path;

use chronicle_server::ServeOptions;

use crate::error::CliError;

/// Serve `db` with `options`; exit 0 after a graceful shutdown.
pub async fn serve(db: &Path, options: ServeOptions) -> Result<u8, CliError> {
    let mut signals = crate::signals::StopSignals::new()?;
    let engine = crate::runs::open_engine(db)?;
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
        "stopped: {} attempt(s) were still running after the {}s grace period and were recorded as abandoned; `chronicle serve` again continues every run",
        report.attempts_cut,
        grace.as_secs_f64()
    );
    Ok(0)
}
