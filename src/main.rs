//! The `chronicle` command-line interface: a thin layer over the engine
//! and the replayer. `main` parses, runs, and maps every error to an exit
//! code (see `error.rs`); no panic or backtrace reaches a user.

mod bench;
mod cli;
mod error;
mod progress;
mod queries;
mod remote;
mod runs;
mod schedules;
mod serve;
mod signals;
mod waits;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Cmd};
use error::CliError;

fn main() -> ExitCode {
    // No panic or backtrace reaches a user: damaged files become errors,
    // anything else one line.
    chronicle_store::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let traces = init_tracing(&cli);
    if let Cmd::Bench { which, json, dir } = &cli.command {
        // Benchmarks build their own runtimes.
        return finish(bench::bench(&cli.db, which, *json, dir.as_deref()));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = runtime.block_on(run(cli));
    if let Some(p) = traces {
        // Flush the spans still batched.
        let _ = p.shutdown();
    }
    finish(result)
}

fn finish(result: Result<u8, CliError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {}", escape_controls(&e.message));
            ExitCode::from(e.code)
        }
    }
}

/// `text` with control and text-direction characters (which could make a
/// terminal show something else: a right-to-left override, an escape
/// sequence) written as `\u{XXXX}`; line breaks and tabs kept.
pub fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c != '\n' && c != '\t' && chronicle_engine::model::is_invisible_control(c) {
                format!("\\u{{{:04x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Logs on stderr (text or JSON, filtered by `-v`/`-q`/`RUST_LOG`) and,
/// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (with the other standard
/// `OTEL_*` variables), traces exported over OTLP/HTTP: the runs' and
/// attempts' spans (see `chronicle_engine::runtime::trace`) and the
/// server's request spans. Returns the tracer provider to flush at exit.
fn init_tracing(cli: &Cli) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, Layer, filter::LevelFilter};
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match cli.log_format {
        // One JSON object per line, with the fields of the spans it is in
        // (`run_id`, `step_id`, `attempt`; a request's `method`, `route`).
        cli::LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .boxed(),
        cli::LogFormat::Text => fmt.boxed(),
    };
    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")
        .filter(|v| !v.is_empty())
        .and_then(|_| {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
                .map_err(|e| eprintln!("warning: traces are not exported: {e}"))
                .ok()?;
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name("chronicle")
                            .build(),
                    )
                    .build(),
            )
        });
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("chronicle"))
            .with_filter(LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    provider
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    let db = cli.db.clone();
    let quiet = cli.quiet;
    // With a server holding the database, the commands that read or change
    // runs go through its API (see remote.rs); `run` and `fork` check
    // their arguments here first.
    let server = match &cli.command {
        Cmd::List { .. }
        | Cmd::Status { .. }
        | Cmd::History { .. }
        | Cmd::Replay { file: None, .. }
        | Cmd::Verify { .. }
        | Cmd::Diff { .. }
        | Cmd::UpgradeCheck { .. }
        | Cmd::Agents { .. }
        | Cmd::Export { .. }
        | Cmd::Import { .. }
        | Cmd::Cancel { .. }
        | Cmd::Pause { .. }
        | Cmd::Resume { .. }
        | Cmd::Release { .. }
        | Cmd::Signal { .. }
        | Cmd::Approve { .. }
        | Cmd::Reject { .. }
        | Cmd::Schedule { .. } => chronicle_server::client::Client::discover(&db)?,
        _ => None,
    };
    if let (Cmd::Recover { .. }, Some(d)) = (&cli.command, chronicle_server::Discovery::live(&db)) {
        return Err(CliError::input(format!(
            "a server ({}, pid {}) holds {}: it recovered every run it found in flight when it started and executes them; stop it (SIGTERM) to recover here",
            d.url,
            d.pid,
            db.display()
        )));
    }
    if let Some(c) = server {
        return match cli.command {
            Cmd::List { status, json } => remote::list(&c, status.as_deref(), json).await,
            Cmd::Status { run, json } => remote::status(&c, &run, json).await,
            Cmd::History { run, json, follow } => remote::history(&c, &run, json, follow).await,
            Cmd::Replay {
                run,
                at,
                at_time,
                timeline,
                json,
                ..
            } => {
                let run =
                    run.ok_or_else(|| CliError::input("give a RUN or --file HISTORY.jsonl"))?;
                remote::replay(&c, &run, at, at_time.as_deref(), timeline, json).await
            }
            Cmd::Verify {
                run,
                json,
                expect_head,
            } => remote::verify(&c, run.as_deref(), expect_head.as_deref(), json).await,
            Cmd::Export { run } => remote::export(&c, &run).await,
            Cmd::Diff { a, b, json } => remote::diff(&c, &a, &b, json).await,
            Cmd::Agents { json } => remote::agents(&c, json).await,
            Cmd::UpgradeCheck {
                file,
                runs,
                workflow,
                json,
            } => remote::upgrade_check(&c, &file, &runs, workflow.as_deref(), json).await,
            Cmd::Import { file } => remote::import(&c, &file).await,
            Cmd::Cancel { run } => remote::control(&c, &run, "cancel").await,
            Cmd::Pause { run } => remote::control(&c, &run, "pause").await,
            Cmd::Resume { run } => remote::continue_run(&c, &run, "resume", quiet).await,
            Cmd::Release { run } => remote::continue_run(&c, &run, "release", quiet).await,
            Cmd::Signal {
                run,
                name,
                data,
                id,
            } => waits::signal_remote(&c, &run, &waits::signal_args(&name, data, id)?).await,
            Cmd::Approve {
                run,
                step,
                by,
                comment,
            } => {
                waits::decide_remote(
                    &c,
                    &run,
                    &waits::decision_args(&step, "approve", by, comment)?,
                )
                .await
            }
            Cmd::Reject {
                run,
                step,
                by,
                comment,
            } => {
                waits::decide_remote(
                    &c,
                    &run,
                    &waits::decision_args(&step, "reject", by, comment)?,
                )
                .await
            }
            Cmd::Schedule { cmd } => schedules::remote(&c, cmd).await,
            _ => Err(CliError::input("this command does not go through a server")),
        };
    }
    match cli.command {
        Cmd::Run {
            file,
            input,
            idempotency_key,
            detach,
        } => runs::run(&db, &file, &input, idempotency_key, detach, quiet).await,
        Cmd::Serve {
            listen,
            grace,
            body_limit,
            max_streams,
            tls_cert,
            tls_key,
            metrics_token,
            no_worker,
            lease,
        } => {
            let options = chronicle_server::ServeOptions {
                listen,
                grace,
                body_limit,
                max_streams,
                tls: tls_cert.zip(tls_key),
                metrics_token,
                ..Default::default()
            };
            serve::serve(&db, options, !no_worker, lease).await
        }
        Cmd::Worker {
            concurrency,
            max_runs,
            lease,
            grace,
        } => serve::worker(&db, concurrency, max_runs, lease, grace).await,
        Cmd::Validate { file } => queries::validate(&file),
        Cmd::Recover { runs, accept_loss } => runs::recover(&db, &runs, accept_loss, quiet).await,
        Cmd::List { status, json } => queries::list(&db, status.as_deref(), json),
        Cmd::Status { run, json } => queries::status(&db, &run, json),
        Cmd::History { run, json, follow } => {
            queries::history(&db, &run, json, follow, quiet).await
        }
        Cmd::Replay {
            run,
            file,
            at,
            at_time,
            timeline,
            json,
        } => queries::replay(
            &db,
            run.as_deref(),
            file.as_deref(),
            at,
            at_time.as_deref(),
            timeline,
            json,
        ),
        Cmd::Verify {
            run,
            json,
            expect_head,
        } => queries::verify(&db, run.as_deref(), expect_head.as_deref(), json),
        Cmd::Fork {
            run,
            at,
            input,
            set_output,
        } => runs::fork(&db, &run, at, input.as_deref(), &set_output, quiet).await,
        Cmd::Export { run } => queries::export(&db, &run),
        Cmd::Diff { a, b, json } => queries::diff(&db, &a, &b, json),
        Cmd::Agents { json } => queries::agents(&db, json),
        Cmd::UpgradeCheck {
            file,
            runs,
            workflow,
            json,
        } => queries::upgrade_check(&db, &file, &runs, workflow.as_deref(), json),
        Cmd::Import { file } => queries::import(&db, &file).await,
        Cmd::Cancel { run } => runs::control(&db, &run, runs::Control::Cancel).await,
        Cmd::Pause { run } => runs::control(&db, &run, runs::Control::Pause).await,
        Cmd::Resume { run } => runs::continue_run(&db, &run, runs::Control::Resume, quiet).await,
        Cmd::Release { run } => runs::continue_run(&db, &run, runs::Control::Release, quiet).await,
        Cmd::Signal {
            run,
            name,
            data,
            id,
        } => waits::signal_offline(&db, &run, waits::signal_args(&name, data, id)?).await,
        Cmd::Approve {
            run,
            step,
            by,
            comment,
        } => {
            waits::decide_offline(
                &db,
                &run,
                waits::decision_args(&step, "approve", by, comment)?,
            )
            .await
        }
        Cmd::Reject {
            run,
            step,
            by,
            comment,
        } => {
            waits::decide_offline(
                &db,
                &run,
                waits::decision_args(&step, "reject", by, comment)?,
            )
            .await
        }
        Cmd::Schedule { cmd } => schedules::offline(&db, cmd).await,
        Cmd::Schema => {
            println!("{}", chronicle_engine::model::json_schema());
            Ok(0)
        }
        Cmd::Bench { .. } => Err(CliError::input("bench runs outside the async runtime")),
    }
}
