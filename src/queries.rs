//! Commands that query the log: validate, list, status, history, replay,
//! verify, export, import.

use chronicle_engine::ids::RunStream;
use std::io::Write;
use std::path::Path;

use chronicle_engine::model::load_file;
use chronicle_engine::state::RunState;
use chronicle_replay::rebuild::{Target, fold_envelopes, state_at};
use chronicle_replay::timeline::{render_timeline, timeline};
use chronicle_store::{Seq, Store, StoreError, StoreOptions};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::runs::open_engine;

/// Open an existing database read-only: inspection never creates or
/// modifies the file. A file left needing crash repair is opened
/// read-write once (redb repairs it) and then read.
pub fn open_existing(db: &Path) -> Result<Store, CliError> {
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

/// `chronicle list`.
pub fn list(db: &Path, status: Option<&str>, json: bool) -> Result<u8, CliError> {
    const STATUSES: [&str; 7] = [
        "pending",
        "running",
        "paused",
        "succeeded",
        "failed",
        "canceled",
        "quarantined",
    ];
    if let Some(s) = status
        && !STATUSES.contains(&s)
    {
        return Err(CliError::input(format!(
            "unknown status {s:?}: use one of {}",
            STATUSES.join(", ")
        )));
    }
    let engine = engine_existing(db)?;
    let rows: Vec<_> = engine
        .list()?
        .into_iter()
        .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
        .collect();
    if json {
        print_json(&rows);
    } else {
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
    Ok(0)
}

/// The `status --json` object (documented in the README).
pub fn status_json(state: &RunState, forks: &[(chronicle_engine::ids::RunId, u64)]) -> Value {
    let order: Vec<chronicle_engine::ids::StepId> =
        state.wf().steps.iter().map(|s| s.id.clone()).collect();
    let steps: Vec<Value> = order
        .iter()
        .filter_map(|id| {
            let st = state.steps.get(id)?;
            Some(json!({
                "id": id,
                "status": st.status.as_str(),
                "attempts": st.attempts.len(),
                "agent": st.attempts.last().and_then(|a| a.agent.clone()),
                "last_error": st.last_error(),
                "reason": st.reason,
                "output": st.output,
            }))
        })
        .collect();
    json!({
        "run_id": state.run_id,
        "workflow": state.wf().name,
        "workflow_sha256": state.workflow_sha256,
        "status": state.status.as_str(),
        "seq": state.seq,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "input": state.input,
        "steps": steps,
        "quarantine": state.quarantine,
        "failure": state.failure,
        "forked_from": state.lineage.as_ref().map(|l| json!({"run_id": l.forked_from, "at_seq": l.at_seq})),
        "forks": forks.iter().map(|(r, at)| json!({"run_id": r, "at_seq": at})).collect::<Vec<_>>(),
    })
}

/// `chronicle status RUN`.
pub fn status(db: &Path, run: &str, json: bool) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let run = engine.resolve_run(run)?;
    let state = state_at(engine.store(), run, Target::Head)?;
    let forks = chronicle_replay::fork::forks_of(engine.store(), run)?;
    if json {
        print_json(&status_json(&state, &forks));
    } else {
        print!("{}", chronicle_replay::render::render_state(&state));
        for (child, at) in forks {
            println!("fork: {child} at seq {at}");
        }
    }
    Ok(0)
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
        let mut out = std::io::stdout().lock();
        let bad = serde_json::from_slice::<serde::de::IgnoredAny>(&env.payload).err();
        let line = match (&bad, json) {
            (None, true) => serde_json::to_string(env).expect("a payload that parses serializes"),
            (None, false) => crate::progress::describe(env),
            (Some(e), true) => json!({
                "stream": env.stream.to_string(),
                "seq": env.seq.0,
                "position": env.position.0,
                "error": format!("the event does not decode: {e}"),
            })
            .to_string(),
            (Some(e), false) => format!(
                "{} {:>4} (damaged event: it does not decode: {e})",
                env.stream, env.seq.0
            ),
        };
        if let Some(e) = bad {
            damaged
                .borrow_mut()
                .get_or_insert_with(|| (env.seq.0, e.to_string()));
        }
        let _ = writeln!(out, "{line}");
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
    let state = engine.state(run)?;
    if state.status.is_terminal() {
        return Ok(0);
    }
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
    let fail = |e: chronicle_replay::ReplayError| -> CliError {
        if from_file {
            CliError::input(e.to_string())
        } else {
            e.into()
        }
    };
    let head = envs.last().map(|e| e.seq.0).unwrap_or(0);
    if let Target::Seq(n) = target
        && (n == 0 || n > head)
    {
        return Err(CliError::input(format!(
            "--at {n} is outside the history (events 1..={head})"
        )));
    }
    if show_timeline {
        let mut t = timeline(&envs).map_err(fail)?;
        if let Target::Seq(n) = target {
            t.retain(|e| e.seq <= n);
        }
        if let Target::Time(ts) = target {
            t.retain(|e| e.at <= ts);
        }
        if json {
            print_json(&t);
        } else {
            print!("{}", render_timeline(&t));
        }
        return Ok(0);
    }
    let state = fold_envelopes(RunState::default(), &envs, target).map_err(fail)?;
    if state.run_id.is_none() {
        return Err(CliError::input("no event at or before that time"));
    }
    if json {
        print_json(&state);
    } else {
        print!("{}", chronicle_replay::render::render_state(&state));
    }
    Ok(0)
}

/// `chronicle verify`.
pub fn verify(db: &Path, run: Option<&str>, json: bool) -> Result<u8, CliError> {
    let engine = engine_existing(db)?;
    let run = run.map(|r| engine.resolve_run(r)).transpose()?;
    // Opening the store checked the commit journal: a crashed database
    // whose journal cannot be read whole was refused (exit 3). Losses a
    // person accepted (`recover --accept-loss`) are listed.
    let losses: Vec<Value> = engine
        .store()
        .index_scan(chronicle_store::JOURNAL_LOSS_INDEX, "")?
        .into_iter()
        .map(|(at, v)| {
            let mut v: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("accepted_at".into(), Value::String(at));
            }
            v
        })
        .collect();
    let journal = engine.store().journal_status()?;
    let reports = chronicle_replay::verify::verify(engine.store(), run)?;
    let bad = reports.iter().filter(|r| !r.ok()).count() + usize::from(journal.problem.is_some());
    if json {
        print_json(&json!({
            "ok": bad == 0,
            "streams": reports,
            "journal": journal,
            "journal_losses": losses,
        }));
    } else {
        match (&journal.problem, journal.open) {
            (Some(p), _) => println!("FAIL  journal  {p}"),
            (None, false) => println!(
                "ok    journal  closed cleanly; frames through {} are in the database",
                journal.checkpointed_through
            ),
            (None, true) => println!(
                "ok    journal  open (not closed cleanly); {} frame(s) past frame {} readable",
                journal.frames_past_checkpoint, journal.checkpointed_through
            ),
        }
        for l in &losses {
            println!(
                "note  journal loss accepted at {}: the journal {}; {} frame(s) applied",
                l["accepted_at"].as_str().unwrap_or("?"),
                l["problem"].as_str().unwrap_or("?"),
                l["frames_applied"]
            );
        }
        for r in &reports {
            if r.ok() {
                println!(
                    "ok    {}  {} events, {} snapshots",
                    r.stream, r.events, r.snapshots_checked
                );
            } else {
                println!("FAIL  {}  {}", r.stream, r.problems.join("; "));
            }
        }
        println!("{} stream(s) verified, {bad} with problems", reports.len());
    }
    Ok(if bad == 0 { 0 } else { 1 })
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
