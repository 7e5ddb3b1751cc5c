//! Commands that execute runs: run, recover, fork, resume, release; and
//! the offline control commands cancel and pause.

use std::collections::BTreeMap;
use std::path::Path;

use chronicle_engine::decide::Command;
use chronicle_engine::ids::RunId;
use chronicle_engine::model::load_file;
use chronicle_engine::runtime::{Engine, EngineBuilder};
use chronicle_engine::state::{RunState, RunStatus};
use serde_json::Value;

use crate::cli::InputArgs;
use crate::error::CliError;
use crate::progress::Progress;

/// Open the engine on `db` (created if absent).
pub fn open_engine(db: &Path) -> Result<Engine, CliError> {
    Ok(engine_builder(db).build()?)
}

/// The builder of [`open_engine`], for commands that set more. Every
/// engine of the CLI has the built-in functions `chronicle.echo` (its
/// output is its resolved input, `with`) and `chronicle.noop` (output
/// `null`): steps that do nothing but record, for trying a workflow's shape
/// and for measuring the engine itself (`chronicle bench workers`).
pub fn engine_builder(db: &Path) -> EngineBuilder {
    EngineBuilder::new()
        .db(db)
        .parent_death_signal(parent_death_signal())
        .watchdog(watchdog())
        .function("chronicle.echo", |c| async move { Ok(c.input) })
        .function("chronicle.noop", |_c| async { Ok(Value::Null) })
}

/// `CHRONICLE_WATCHDOG=0`: no process watchdog (see
/// `EngineBuilder::watchdog`); only `recover` kills what a crash left.
fn watchdog() -> bool {
    std::env::var_os("CHRONICLE_WATCHDOG").is_none_or(|v| v != "0")
}

/// `CHRONICLE_PARENT_DEATH_SIGNAL=1`: each attempt's leader is killed by
/// the kernel when the engine dies (see `EngineBuilder::parent_death_signal`).
fn parent_death_signal() -> bool {
    std::env::var_os("CHRONICLE_PARENT_DEATH_SIGNAL").is_some_and(|v| v == "1")
}

pub(crate) fn parse_json_object(what: &str, text: &str) -> Result<Value, CliError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| CliError::input(format!("{what} is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(CliError::input(format!(
            "{what} must be a JSON object, like {{\"file\": \"a.log\"}}"
        )));
    }
    Ok(v)
}

pub(crate) fn read_input(input: &InputArgs) -> Result<Value, CliError> {
    if let Some(text) = &input.input {
        return parse_json_object("--input", text);
    }
    if let Some(path) = &input.input_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::input(format!("cannot read --input-file {}: {e}", path.display()))
        })?;
        return parse_json_object(&format!("--input-file {}", path.display()), &text);
    }
    Ok(Value::Object(Default::default()))
}

/// Print the end of a run and return its exit code.
pub(crate) fn summarize(state: &RunState, quiet: bool) -> u8 {
    if !quiet {
        eprint!("\n{}", chronicle_replay::render::render_state(state));
        print_outputs(state);
    }
    let run = state.run_id.map(|r| r.to_string()).unwrap_or_default();
    println!("run {run} {}", state.status.as_str());
    if state.parked() {
        // Nothing more happens without the outside world: say what it
        // waits for and how to go on (not a failure).
        for (id, st) in &state.steps {
            if let Some(text) = chronicle_replay::render::describe_wait(st) {
                eprintln!("run {run} waits: {id} for {text}");
            }
        }
        eprintln!(
            "send it with `chronicle signal RUN NAME` / `chronicle approve RUN STEP`, then `chronicle recover` continues the run (or run `chronicle serve`, which executes it)"
        );
        return 0;
    }
    if state.status == RunStatus::Succeeded {
        0
    } else {
        1
    }
}

/// The workflow's named outputs, resolved against the run's final state.
fn print_outputs(state: &RunState) {
    let Some(wf) = &state.workflow else { return };
    if wf.outputs.is_empty() {
        return;
    }
    let run = state.run_id.map(|r| r.to_string()).unwrap_or_default();
    let outputs = state.outputs();
    let scope = chronicle_engine::model::template::Scope {
        run_id: &run,
        input: &state.input,
        outputs: &outputs,
    };
    eprintln!("outputs");
    let pad = wf
        .outputs
        .keys()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0);
    for (name, value) in wf.resolve_outputs(&scope) {
        let text = match value {
            Ok(Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => format!("(not produced: {e})"),
        };
        eprintln!("  {name:<pad$}  {text}");
    }
}

/// `stop` is installed by the caller before it starts anything, so a
/// SIGTERM that comes while the runs start is a stop on purpose too.
async fn drive(
    engine: &Engine,
    runs: &[RunId],
    progress: Progress,
    quiet: bool,
    mut stop: crate::signals::StopSignals,
) -> Result<u8, CliError> {
    let work = async {
        let mut states = Vec::new();
        for r in runs {
            states.push(
                engine
                    .wait_until(*r, |s| {
                        s.status.is_terminal() || s.status == RunStatus::Quarantined || s.parked()
                    })
                    .await?,
            );
        }
        engine.wait_all().await?;
        Ok::<_, CliError>(states)
    };
    let (signal_name, exit) = tokio::select! {
        states = work => {
            let states = states?;
            if engine.is_shared() {
                // Quarantined and parked runs keep their actors: end them
                // so that their leases are given back now, not when they
                // expire (another process may release or signal them).
                engine.shutdown().await;
            }
            progress.finish().await;
            let mut code = 0;
            for s in &states {
                code = code.max(summarize(s, quiet));
            }
            return Ok(code);
        }
        s = stop.recv() => s,
    };
    // Stop on purpose: no new attempt starts, running ones are killed with
    // their process groups and recorded as abandoned by the stop.
    engine
        .stop(&format!(
            "the engine was stopped by {signal_name}; the attempt's process group was killed"
        ))
        .await;
    progress.finish().await;
    eprintln!(
        "stopped by {signal_name}: running attempts were killed and recorded; `chronicle recover` continues the run(s)"
    );
    Ok(exit)
}

/// `chronicle run FILE`: through the server holding `db` when there is
/// one, else in this process.
pub async fn run(
    db: &Path,
    file: &Path,
    input: &InputArgs,
    key: Option<String>,
    detach: bool,
    quiet: bool,
) -> Result<u8, CliError> {
    // `workflow_name:` children come from the workflows registered in
    // this database (read-only here; the run pins them).
    let lookup = |name: &str| -> Result<chronicle_engine::model::Workflow, String> {
        let ro = crate::queries::engine_existing(db).map_err(|e| e.message.clone())?;
        chronicle_server::registry::latest(ro.store(), name)
    };
    let input = read_input(input)?;
    if let Some(c) = chronicle_server::client::Client::discover(db)? {
        // The server pins `workflow_name:` children from its registry.
        let wf = load_file(file)?;
        return crate::remote::run(&c, &wf, input, key, detach, quiet).await;
    }
    let wf = chronicle_engine::load::load_file_with(file, Some(&lookup))?;
    if detach {
        if chronicle_server::auth::is_shared(db) {
            // A shared database: the run is offered to the workers.
            let engine = engine_builder(db).executes(false).build()?;
            let run = engine.start(wf, input, key).await?;
            println!("{run}");
            return Ok(0);
        }
        return Err(CliError::input(
            "--detach needs a server holding the database (start `chronicle serve` first) or a shared database (--db postgres://… with `chronicle worker`s)",
        ));
    }
    let stop = crate::signals::StopSignals::new()?;
    let engine = open_engine(db)?;
    let progress = Progress::start(engine.subscribe(), quiet);
    let run = engine.start(wf, input, key).await?;
    if !quiet {
        progress.line(&format!("run {run} started"));
    }
    drive(&engine, &[run], progress, quiet, stop).await
}

/// `chronicle recover [RUN...]`.
pub async fn recover(
    db: &Path,
    names: &[String],
    accept_loss: bool,
    quiet: bool,
) -> Result<u8, CliError> {
    let stop = crate::signals::StopSignals::new()?;
    let engine = if accept_loss {
        let store = chronicle_store::Store::open(
            db,
            chronicle_store::StoreOptions {
                accept_journal_loss: true,
                ..Default::default()
            },
        )?;
        // The same engine as `open_engine` (built-in functions, outputs
        // beside the database), on the store opened with the loss accepted.
        engine_builder(db).store(store).build()?
    } else {
        open_engine(db)?
    };
    let only: Vec<RunId> = names
        .iter()
        .map(|n| engine.resolve_run(n))
        .collect::<Result<_, _>>()?;
    let progress = Progress::start(engine.subscribe(), quiet);
    let only_ref = if only.is_empty() {
        None
    } else {
        Some(&only[..])
    };
    let mut report = engine.recover_runs(only_ref).await?;
    // On a shared database: runs this process did not claim — quarantined
    // ones are reported as on redb; those leased by another process are
    // named with their holder.
    let mut held = Vec::new();
    for n in engine.not_recovered(only_ref)? {
        match n {
            chronicle_engine::runtime::NotRecovered::Quarantined(run, why) => {
                if !report.quarantined.iter().any(|(r, _)| *r == run) {
                    report.quarantined.push((run, why));
                }
            }
            chronicle_engine::runtime::NotRecovered::Held {
                run,
                owner,
                expires_in_ms,
            } => held.push((run, owner, expires_in_ms)),
        }
    }
    if !quiet {
        eprintln!(
            "recovery: {} run(s) continued, {} attempt(s) abandoned, {} run(s) quarantined (not continued; `chronicle release RUN` frees one)",
            report.resumed.len(),
            report.attempts_abandoned,
            report.quarantined.len()
        );
        for (r, why) in &report.quarantined {
            eprintln!("  quarantined {r}: {why}");
        }
        for (run, owner, ms) in &held {
            eprintln!(
                "  held by {owner}: {run} (its lease expires in {ms} ms unless renewed; then a worker or `chronicle recover` continues it)"
            );
        }
        for (attempt, pgid) in &report.processes_killed {
            eprintln!(
                "  killed process group {pgid} of attempt {attempt}, left running by the engine that stopped"
            );
        }
    }
    let mut runs = report.resumed.clone();
    runs.extend(report.quarantined.iter().map(|(r, _)| *r));
    if runs.is_empty() && !only.is_empty() {
        // Named runs that were already terminal: report them.
        for r in &only {
            runs.push(*r);
        }
    }
    if runs.is_empty() {
        progress.finish().await;
        println!("nothing to recover");
        return Ok(0);
    }
    drive(&engine, &runs, progress, quiet, stop).await
}

/// `chronicle fork RUN --at SEQ`.
pub async fn fork(
    db: &Path,
    run: &str,
    at: u64,
    input: Option<&str>,
    set: &[String],
    quiet: bool,
) -> Result<u8, CliError> {
    let input = input.map(|t| parse_json_object("--input", t)).transpose()?;
    let mut outputs = BTreeMap::new();
    for s in set {
        let (step, json) = s
            .split_once('=')
            .ok_or_else(|| CliError::input(format!("--set-output {s:?} must be STEP=JSON")))?;
        let v: Value = serde_json::from_str(json)
            .map_err(|e| CliError::input(format!("--set-output {step}: not valid JSON: {e}")))?;
        outputs.insert(step.to_string(), v);
    }
    if let Some(c) = chronicle_server::client::Client::discover(db)? {
        return crate::remote::fork(&c, run, at, input, outputs, quiet).await;
    }
    // Check everything on a read-only open first: bad input changes nothing.
    let source = {
        let ro = crate::queries::engine_existing(db)?;
        let source = ro.resolve_run(run)?;
        let state = chronicle_replay::rebuild::state_at(
            ro.store(),
            source,
            chronicle_replay::rebuild::Target::Seq(at),
        )?;
        chronicle_engine::decide::decide_fork(
            &state,
            chronicle_engine::ids::Seq(at),
            source,
            input.clone(),
            outputs.clone(),
            0,
        )
        .map_err(chronicle_engine::runtime::EngineError::from)?;
        source
    };
    let stop = crate::signals::StopSignals::new()?;
    let engine = open_engine(db)?;
    let progress = Progress::start(engine.subscribe(), quiet);
    let child = chronicle_replay::fork::fork(&engine, source, at, input, outputs).await?;
    if !quiet {
        eprintln!("run {child} forked from {source} at seq {at}");
    }
    drive(&engine, &[child], progress, quiet, stop).await
}

/// Offline control commands.
pub enum Control {
    /// Cancel.
    Cancel,
    /// Pause.
    Pause,
    /// Resume.
    Resume,
    /// Release.
    Release,
    /// Another command (a signal, an approval), applied as is.
    Other(Command),
}

fn command(what: &Control) -> Command {
    match what {
        Control::Cancel => Command::Cancel {
            reason: "canceled with chronicle cancel".into(),
        },
        Control::Pause => Command::Pause,
        Control::Resume => Command::Resume,
        Control::Release => Command::Release,
        Control::Other(c) => c.clone(),
    }
}

/// Resolve `run` and check that `what` applies, on a read-only open, so
/// that a refused command leaves the database untouched.
fn check(db: &Path, run: &str, what: &Control) -> Result<RunId, CliError> {
    let ro = crate::queries::engine_existing(db)?;
    let run = ro.resolve_run(run)?;
    ro.plan_offline(run, command(what))?;
    Ok(run)
}

/// `chronicle cancel|pause RUN`: append the command's events and exit.
pub async fn control(db: &Path, run: &str, what: Control) -> Result<u8, CliError> {
    let (run, state) = control_state(db, run, what).await?;
    println!("run {run} {}", state.status.as_str());
    Ok(0)
}

/// Check `what` on a read-only open (a refused command leaves the
/// database untouched), append its events, and return the state after.
pub async fn control_state(
    db: &Path,
    run: &str,
    what: Control,
) -> Result<(RunId, RunState), CliError> {
    let run = check(db, run, &what)?;
    // Nothing is executed: no watchdog.
    let engine = EngineBuilder::new().db(db).watchdog(false).build()?;
    let state = engine.control_offline(run, command(&what)).await?;
    Ok((run, state))
}

/// `chronicle resume|release RUN`: apply, then execute the run to the end.
pub async fn continue_run(
    db: &Path,
    run: &str,
    what: Control,
    quiet: bool,
) -> Result<u8, CliError> {
    let run = check(db, run, &what)?;
    let stop = crate::signals::StopSignals::new()?;
    let engine = open_engine(db)?;
    let progress = Progress::start(engine.subscribe(), quiet);
    engine.recover_runs(Some(&[run])).await?;
    let r = match what {
        Control::Release => engine.release(run).await,
        _ => engine.resume(run).await,
    };
    if let Err(e) = r {
        progress.finish().await;
        return Err(e.into());
    }
    drive(&engine, &[run], progress, quiet, stop).await
}
