//! Commands that query the log: validate, list, status, history, replay,
//! verify, export, import.

use chronicle_engine::ids::RunStream;
use std::io::Write;
use std::path::Path;

use chronicle_engine::model::load_file;
use chronicle_engine::runtime::RunSummary;
use chronicle_engine::state::RunState;
use chronicle_replay::rebuild::Target;
use chronicle_replay::timeline::render_timeline;
use chronicle_server::ops;
use chronicle_store::{Seq, Store, StoreError, StoreOptions};
use serde_json::Value;

use crate::error::CliError;
use crate::runs::open_engine;

/// Open an existing database read-only: inspection never creates or
/// modifies the file. A file left needing crash repair is opened
/// read-write once (redb repairs it) and then read.
pub fn open_existing(db: &Path) -> Result<Store, CliError> {
    if db.to_str().is_some_and(chronicle_store::is_postgres_url) {
        // A shared database: read-only handle, no fallback that writes.
        return Ok(Store::open_read_only(db)?);
    }
    if !db.exists() {
        return Err(CliError::storage(format!(
            "no database at {}: run a workflow first (chronicle run FILE) or pass --db PATH",
            db.display()
        )));
    }
    match Store::open_read_only(db) {
        Ok(s) => Ok(s),
        Err(
            e @ (StoreError::Locked { .. }
            | StoreError::Corruption { .. }
            | StoreError::UnsupportedFormat { .. }),
        ) => Err(e.into()),
        Err(_) => {
            drop(Store::open(db, StoreOptions::default())?);
            Ok(Store::open_read_only(db)?)
        }
    }
}

/// An engine over a read-only store (for commands that only read or check).
pub fn engine_existing(db: &Path) -> Result<chronicle_engine::runtime::Engine, CliError> {
    let store = open_existing(db)?;
    Ok(chronicle_engine::runtime::EngineBuilder::new()
        .store(store)
        .build()?)
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("plain data serializes")
    );
}

/// `chronicle validate FILE`.
pub fn validate(file: &Path) -> Result<u8, CliError> {
    let wf = load_file(file)?;
    println!(
        "{}: ok ({} steps, {} agents; sha256 {})",
        file.display(),
        wf.steps.len(),
        wf.agents.len(),
        wf.sha256()
    );
    Ok(0)
}

/// `chronicle list`: every run, newest first.
pub fn list(db: &Path, status: Option<&str>, json: bool) -> Result<u8, CliError> {
    ops::check_status(status)?;
    let engine = engine_existing(db)?;
    let rows = ops::list_runs(&engine, status, None)?;
    print_list(&rows, json);
    Ok(0)
}

/// Print `list`'s rows (a table, or JSON).
pub fn print_list(rows: &[RunSummary], json: bool) {
    if json {
        print_json(&rows);
        return;
    }
    println!(
        "{:<36}  {:<12}  {:<20}  {:>5}  UPDATED",
        "RUN", "STATUS", "WORKFLOW", "SEQ"
    );
    for r in rows {
        println!(
            "{:<36}  {:<12}  {:<20}  {:>5}  {}",
            r.run_id.to_string(),
            r.status.as_str(),
            r.workflow,
            r.seq,
            r.updated_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        );
    }
}

/// `chronicle status RUN`.
pub fn status(db: &Path, run: &str, json: bool) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let run = engine.resolve_run(run)?;
    let (state, v) = ops::status(engine.store(), run)?;
    print_status(&state, &v, json);
    Ok(0)
}

/// Print `status`: the JSON object, or the rendered state and its forks.
pub fn print_status(state: &RunState, v: &Value, json: bool) {
    if json {
        print_json(v);
        return;
    }
    print!("{}", chronicle_replay::render::render_state(state));
    for f in v["forks"].as_array().into_iter().flatten() {
        println!(
            "fork: {} at seq {}",
            f["run_id"].as_str().unwrap_or("?"),
            f["at_seq"]
        );
    }
}

/// `chronicle history RUN`.
pub async fn history(
    db: &Path,
    run: &str,
    json: bool,
    follow: bool,
    quiet: bool,
) -> Result<u8, CliError> {
    let ro = engine_existing(db)?;
    let run = ro.resolve_run(run)?;
    let engine = if follow && !ro.state(run)?.status.is_terminal() {
        drop(ro);
        open_engine(db)?
    } else {
        ro
    };
    let mut feed = engine.subscribe();
    let envs = engine.store().read_stream(&run.stream(), Seq(1))?;
    if envs.is_empty() {
        return Err(CliError::input(format!("no run {run} in this database")));
    }
    // A damaged event is shown for what it is and the rest still printed;
    // the command then exits 3 naming the first one.
    let damaged: std::cell::RefCell<Option<(u64, String)>> = Default::default();
    let print = |env: &chronicle_store::RawEnvelope| {
        let (line, bad) = ops::event_line(env);
        if let Some(e) = bad {
            damaged.borrow_mut().get_or_insert_with(|| (env.seq.0, e));
        }
        print_event_line(&line, json);
    };
    envs.iter().for_each(print);
    if let Some((seq, e)) = damaged.take() {
        return Err(StoreError::Decode {
            stream: run.stream().to_string(),
            seq,
            message: e,
        }
        .into());
    }
    if !follow {
        return Ok(0);
    }
    let mut last = envs.last().map(|e| e.seq).unwrap_or(Seq(0));
    // Ended already — perhaps since the read above, on a shared database
    // where another process executes it: only its last events are left.
    if !engine.state(run)?.status.is_terminal() {
        if !quiet {
            eprintln!("following: continuing run {run} in this process");
        }
        engine.recover_runs(Some(&[run])).await?;
        let waiter = {
            let e = engine.clone();
            tokio::spawn(async move { e.wait(run).await })
        };
        loop {
            tokio::select! {
                batch = feed.recv() => match batch {
                    Ok(b) => {
                        for env in b.iter() {
                            if env.stream == run.stream() && env.seq > last {
                                print(env);
                                last = env.seq;
                            }
                        }
                    }
                    Err(_) => break,
                },
                _ = tokio::time::sleep(std::time::Duration::from_millis(50)), if waiter.is_finished() => break,
            }
        }
    }
    for env in engine.store().read_stream(&run.stream(), last.next())? {
        print(&env);
    }
    match damaged.take() {
        Some((seq, e)) => Err(StoreError::Decode {
            stream: run.stream().to_string(),
            seq,
            message: e,
        }
        .into()),
        None => Ok(0),
    }
}

/// Print one event of `history`: its JSON line as is (`--json`), or
/// described in one line (a damaged event says so).
pub fn print_event_line(line: &str, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{line}");
        return;
    }
    let text = match serde_json::from_str::<chronicle_store::RawEnvelope>(line) {
        Ok(env) => crate::progress::describe(&env),
        Err(_) => {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            let why = v["error"].as_str().unwrap_or("the event does not decode");
            format!(
                "{} {:>4} (damaged event: {})",
                v["stream"].as_str().unwrap_or("?"),
                v["seq"],
                why.replacen("the event does not decode", "it does not decode", 1)
            )
        }
    };
    let _ = writeln!(out, "{text}");
}

/// `chronicle replay`.
pub fn replay(
    db: &Path,
    run: Option<&str>,
    file: Option<&Path>,
    at: Option<u64>,
    at_time: Option<&str>,
    show_timeline: bool,
    json: bool,
) -> Result<u8, CliError> {
    let target = match (at, at_time) {
        (Some(n), _) => Target::Seq(n),
        (None, Some(t)) => Target::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    CliError::input(format!(
                        "--at-time {t:?} is not RFC 3339 (2026-11-21T10:00:00Z): {e}"
                    ))
                })?
                .with_timezone(&chrono::Utc),
        ),
        (None, None) => Target::Head,
    };
    let envs = match (run, file) {
        (_, Some(f)) => {
            let reader = std::fs::File::open(f)
                .map_err(|e| CliError::input(format!("cannot open {}: {e}", f.display())))?;
            chronicle_replay::export::read_history(
                &f.display().to_string(),
                std::io::BufReader::new(reader),
            )?
        }
        (Some(r), None) => {
            let engine = engine_existing(db)?;
            let run = engine.resolve_run(r)?;
            let envs = engine.store().read_stream(&run.stream(), Seq(1))?;
            if envs.is_empty() {
                return Err(CliError::input(format!("no run {run} in this database")));
            }
            envs
        }
        (None, None) => return Err(CliError::input("give a RUN or --file HISTORY.jsonl")),
    };
    // A history file that does not fold is bad input (exit 2); one read
    // from the database is a damaged log (exit 3).
    let from_file = file.is_some();
    let fail = |p: chronicle_server::Problem| -> CliError {
        if from_file {
            CliError::input(p.detail)
        } else {
            p.into()
        }
    };
    if show_timeline {
        let t = ops::replay_timeline(&envs, target, None).map_err(fail)?;
        print_timeline(&t, json);
        return Ok(0);
    }
    let state = ops::replay_state(&envs, target).map_err(fail)?;
    print_state(&state, json);
    Ok(0)
}

/// Print `replay --timeline`.
pub fn print_timeline(t: &[chronicle_replay::timeline::TimelineEntry], json: bool) {
    if json {
        print_json(&t);
    } else {
        print!("{}", render_timeline(t));
    }
}

/// Print `replay`'s state.
pub fn print_state(state: &RunState, json: bool) {
    if json {
        print_json(state);
    } else {
        print!("{}", chronicle_replay::render::render_state(state));
    }
}

/// `chronicle verify`.
pub fn verify(
    db: &Path,
    run: Option<&str>,
    expect_head: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let run = run.map(|r| engine.resolve_run(r)).transpose()?;
    // Opening the store checked the commit journal: a crashed database
    // whose journal cannot be read whole was refused (exit 3). Losses a
    // person accepted (`recover --accept-loss`) are listed.
    let v = ops::verify(engine.store(), run, expect_head)?;
    Ok(print_verify(&v, json))
}

/// Print `verify`'s report; its exit code (1 when anything is wrong).
pub fn print_verify(v: &Value, json: bool) -> u8 {
    if json {
        print_json(v);
    } else {
        print!("{}", ops::render_verify(v));
    }
    if v["ok"].as_bool() == Some(true) {
        0
    } else {
        1
    }
}

/// `chronicle diff A B`.
pub fn diff(db: &Path, a: &str, b: &str, json: bool) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let (a, b) = (engine.resolve_run(a)?, engine.resolve_run(b)?);
    let store = engine.store().clone();
    let v = chronicle_server::diff::diff(a, b, &mut |r| ops::whole_history(&store, r))?;
    Ok(print_diff(&v, json))
}

/// Print `diff`'s report; its exit code (0 equivalent, 1 different).
pub fn print_diff(v: &Value, json: bool) -> u8 {
    if json {
        print_json(v);
    } else {
        print!("{}", chronicle_server::diff::render(v));
    }
    if v["equivalent"] == true { 0 } else { 1 }
}

/// `chronicle upgrade-check FILE`.
pub fn upgrade_check(
    db: &Path,
    file: &Path,
    runs: &[String],
    workflow: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    let new = load_file(file)?;
    let engine = engine_existing(db)?;
    let ids: Vec<chronicle_engine::ids::RunId> = runs
        .iter()
        .map(|r| engine.resolve_run(r))
        .collect::<Result<_, _>>()?;
    let v = ops::upgrade_report(&engine, &new, &ids, workflow)?;
    Ok(print_upgrade(&v, json))
}

/// Print `upgrade-check`; its exit code (0 all compatible, 1 not).
pub fn print_upgrade(v: &Value, json: bool) -> u8 {
    if json {
        print_json(v);
    } else {
        print!("{}", ops::render_upgrade(v));
    }
    if v["compatible"] == true { 0 } else { 1 }
}

/// `chronicle agents`.
pub fn agents(db: &Path, json: bool) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    print_agents(&ops::agents(&engine)?, json);
    Ok(0)
}

/// Print `agents`.
pub fn print_agents(v: &Value, json: bool) {
    if json {
        print_json(v);
    } else {
        print!("{}", ops::render_agents(v));
    }
}

/// `chronicle export RUN`.
pub fn export(db: &Path, run: &str) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let run = engine.resolve_run(run)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    chronicle_replay::export::export(engine.store(), run, &mut out)?;
    out.flush()
        .map_err(|e| CliError::storage(format!("cannot write: {e}")))?;
    Ok(0)
}

/// `chronicle import FILE`.
pub async fn import(db: &Path, file: &Path) -> Result<u8, CliError> {
    let reader = std::fs::File::open(file)
        .map_err(|e| CliError::input(format!("cannot open {}: {e}", file.display())))?;
    let envs = chronicle_replay::export::read_history(
        &file.display().to_string(),
        std::io::BufReader::new(reader),
    )?;
    let store = Store::open(db, StoreOptions::default())?;
    let run = chronicle_replay::export::import(&store, &envs).await?;
    println!("imported run {run} ({} events, chain verified)", envs.len());
    Ok(0)
}
