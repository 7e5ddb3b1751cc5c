//! The commands through a running server: when `chronicle serve` holds
//! the database (its discovery file names a live process), each command
//! that reads or changes runs asks the server over the API and prints and
//! exits exactly as it does on the file — the data comes from the same
//! operations (`chronicle_server::ops`) and is printed by the same code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chronicle_engine::state::RunState;
use chronicle_server::Method;
use chronicle_server::client::{Client, StreamItem};
use chronicle_store::{RawEnvelope, StoreError};
use serde_json::{Value, json};

use crate::error::CliError;
use crate::progress::Progress;
use crate::queries;

/// `text` percent-encoded for a path segment or a query value.
fn seg(text: &str) -> String {
    chronicle_server::client::percent_encode(text)
}

/// Whether a status object's run has settled (`ops::settled`).
fn settled(status: &Value) -> bool {
    serde_json::from_value::<chronicle_engine::state::RunStatus>(status["status"].clone())
        .is_ok_and(chronicle_server::ops::settled)
}

/// `list` through the server: every page.
pub async fn list(c: &Client, status: Option<&str>, json: bool) -> Result<u8, CliError> {
    chronicle_server::ops::check_status(status)?;
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/v1/runs?limit=1000".to_string();
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = c.get_json(&path).await?;
        let more: Vec<chronicle_engine::runtime::RunSummary> =
            serde_json::from_value(page["runs"].clone()).map_err(|e| {
                CliError::storage(format!("the server's run list is unreadable: {e}"))
            })?;
        rows.extend(more);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    queries::print_list(&rows, json);
    Ok(0)
}

async fn state_of(c: &Client, run: &str, query: &str) -> Result<RunState, CliError> {
    let v = c
        .get_json(&format!("/v1/runs/{}/state{query}", seg(run)))
        .await?;
    serde_json::from_value(v)
        .map_err(|e| CliError::storage(format!("the server's run state is unreadable: {e}")))
}

/// `status` through the server.
pub async fn status(c: &Client, run: &str, json: bool) -> Result<u8, CliError> {
    let v = c.get_json(&format!("/v1/runs/{}", seg(run))).await?;
    let state = if json {
        RunState::default()
    } else {
        state_of(c, run, "").await?
    };
    queries::print_status(&state, &v, json);
    Ok(0)
}

/// A damaged event's line: `(seq, decode error)`.
fn damaged(line: &str) -> Option<(u64, String)> {
    if serde_json::from_str::<RawEnvelope>(line).is_ok() {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let why = v["error"].as_str()?;
    let why = why
        .strip_prefix("the event does not decode: ")
        .unwrap_or(why);
    Some((v["seq"].as_u64().unwrap_or(0), why.to_string()))
}

/// `history [--follow]` through the server: it follows without executing
/// anything itself (the server executes the run).
pub async fn history(c: &Client, run: &str, json: bool, follow: bool) -> Result<u8, CliError> {
    let mut read = Printed::default();
    read.pages(c, run, json).await?;
    if read.after == 0 {
        return Err(CliError::input(format!("no run {run} in this database")));
    }
    if follow {
        let v = c.get_json(&format!("/v1/runs/{}", seg(run))).await?;
        if settled(&v) && v["status"] != "quarantined" {
            // It ended, perhaps after the pages above were read: what it
            // appended since (its last events) is printed too.
            read.pages(c, run, json).await?;
        } else {
            let (first_bad, after) = (&mut read.first_bad, read.after);
            c.follow(run, after, |item| {
                if let StreamItem::Event { line, .. } = item {
                    if let Some(bad) = damaged(&line) {
                        first_bad.get_or_insert(bad);
                    }
                    queries::print_event_line(&line, json);
                }
                true
            })
            .await?;
        }
    }
    match read.first_bad {
        Some((seq, message)) => Err(StoreError::Decode {
            stream: read.stream,
            seq,
            message,
        }
        .into()),
        None => Ok(0),
    }
}

/// What `history` printed so far: the events up to `after` (a seq), the
/// stream's name, and the first event that does not decode.
#[derive(Default)]
struct Printed {
    after: u64,
    stream: String,
    first_bad: Option<(u64, String)>,
}

impl Printed {
    /// Print the run's events after `self.after`, page by page, as the
    /// server has them now.
    async fn pages(&mut self, c: &Client, run: &str, json: bool) -> Result<(), CliError> {
        loop {
            let page = c
                .get_bytes(&format!(
                    "/v1/runs/{}/events?after={}&limit=10000",
                    seg(run),
                    self.after
                ))
                .await?;
            let page = String::from_utf8_lossy(&page);
            // The page embeds each event's line byte for byte: read it as
            // raw text (a parsed value would print its keys in another
            // order).
            let raw: chronicle_server::ops::EventsPage =
                serde_json::from_str(&page).map_err(|e| {
                    CliError::storage(format!("the server's events page is unreadable: {e}"))
                })?;
            let n = raw.events.len();
            for line in raw.events {
                let line = line.get();
                if let Some(bad) = damaged(line) {
                    self.first_bad.get_or_insert(bad);
                }
                if self.stream.is_empty()
                    && let Ok(env) = serde_json::from_str::<RawEnvelope>(line)
                {
                    self.stream = env.stream.to_string();
                }
                queries::print_event_line(line, json);
                self.after += 1;
            }
            if n < 10_000 {
                return Ok(());
            }
        }
    }
}

/// `replay RUN` through the server (`--file` is always read locally).
pub async fn replay(
    c: &Client,
    run: &str,
    at: Option<u64>,
    at_time: Option<&str>,
    timeline: bool,
    json: bool,
) -> Result<u8, CliError> {
    let mut query = String::new();
    if let Some(n) = at {
        query = format!("?at={n}");
    } else if let Some(t) = at_time {
        chronicle_server::ops::parse_time("--at-time", t)?;
        let t = seg(t);
        query = format!("?at_time={t}");
    }
    if timeline {
        let v = c
            .get_json(&format!("/v1/runs/{}/timeline{query}", seg(run)))
            .await?;
        let t: Vec<chronicle_replay::timeline::TimelineEntry> = serde_json::from_value(v)
            .map_err(|e| CliError::storage(format!("the server's timeline is unreadable: {e}")))?;
        queries::print_timeline(&t, json);
        return Ok(0);
    }
    let state = state_of(c, run, &query).await?;
    queries::print_state(&state, json);
    Ok(0)
}

/// `verify [RUN]` through the server.
pub async fn verify(
    c: &Client,
    run: Option<&str>,
    expect_head: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    let path = match (run, expect_head) {
        (Some(r), Some(h)) => format!("/v1/runs/{}/verify?expect_head={}", seg(r), seg(h)),
        (Some(r), None) => format!("/v1/runs/{}/verify", seg(r)),
        (None, _) => "/v1/verify".to_string(),
    };
    let v = c.get_json(&path).await?;
    Ok(queries::print_verify(&v, json))
}

/// `diff A B` through the server: the histories (and those of the runs
/// they were forked from) are fetched, then compared here as on the file.
pub async fn diff(c: &Client, a: &str, b: &str, json: bool) -> Result<u8, CliError> {
    use std::collections::HashMap;
    let mut histories: HashMap<chronicle_engine::ids::RunId, Vec<RawEnvelope>> = HashMap::new();
    let mut ids = Vec::new();
    for name in [a, b] {
        let v = c.get_json(&format!("/v1/runs/{}", seg(name))).await?;
        let id: chronicle_engine::ids::RunId = v["run_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CliError::storage("the server's run has no id"))?;
        ids.push(id);
    }
    let mut todo = ids.clone();
    while let Some(id) = todo.pop() {
        if histories.contains_key(&id) {
            continue;
        }
        let bytes = c.get_bytes(&format!("/v1/runs/{id}/export")).await?;
        let envs = chronicle_replay::export::read_history(
            &format!("run {id}"),
            std::io::Cursor::new(&bytes[..]),
        )?;
        if let Some(first) = envs.first()
            && let Ok(chronicle_engine::event::RunEvent::RunForked { lineage, .. }) =
                chronicle_engine::event::RunEvent::from_json(&first.payload)
        {
            todo.push(lineage.forked_from);
        }
        histories.insert(id, envs);
    }
    let v = chronicle_server::diff::diff(ids[0], ids[1], &mut |r| {
        histories
            .get(&r)
            .cloned()
            .ok_or_else(|| chronicle_server::Problem::unknown_run(&r.to_string()))
    })?;
    Ok(queries::print_diff(&v, json))
}

/// `upgrade-check FILE` through the server (`POST /v1/upgrade-check`):
/// the definition is checked here first, so its errors read as they do
/// without a server.
pub async fn upgrade_check(
    c: &Client,
    file: &std::path::Path,
    runs: &[String],
    workflow: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    let new = chronicle_engine::model::load_file(file)?;
    let body = json!({
        "workflow": serde_json::to_value(&new).expect("a workflow serializes"),
        "runs": runs,
        "workflow_name": workflow,
    });
    let (_, v) = c
        .send_json(Method::POST, "/v1/upgrade-check", &body, &[])
        .await?;
    Ok(queries::print_upgrade(&v, json))
}

/// `agents` through the server (with the load of its running attempts).
pub async fn agents(c: &Client, json: bool) -> Result<u8, CliError> {
    let v = c.get_json("/v1/agents").await?;
    queries::print_agents(&v, json);
    Ok(0)
}

/// `export RUN` through the server.
pub async fn export(c: &Client, run: &str) -> Result<u8, CliError> {
    use std::io::Write;
    let bytes = c
        .get_bytes(&format!("/v1/runs/{}/export", seg(run)))
        .await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(|e| CliError::storage(format!("cannot write: {e}")))?;
    Ok(0)
}

/// `import FILE` through the server (the file is checked here first, so
/// its errors read as they do without a server).
pub async fn import(c: &Client, file: &std::path::Path) -> Result<u8, CliError> {
    let bytes = std::fs::read(file)
        .map_err(|e| CliError::input(format!("cannot open {}: {e}", file.display())))?;
    let envs = chronicle_replay::export::read_history(
        &file.display().to_string(),
        std::io::Cursor::new(&bytes[..]),
    )?;
    let (_, resp) = c
        .send(
            Method::POST,
            "/v1/runs/import",
            Some(("application/x-ndjson", bytes)),
            &[],
        )
        .await?;
    let v: Value = resp
        .json()
        .await
        .map_err(|e| CliError::storage(format!("the server's answer is unreadable: {e}")))?;
    println!(
        "imported run {} ({} events, chain verified)",
        v["run_id"].as_str().unwrap_or("?"),
        envs.len()
    );
    Ok(0)
}

/// `cancel|pause RUN` through the server.
pub async fn control(c: &Client, run: &str, action: &str) -> Result<u8, CliError> {
    let body = if action == "cancel" {
        json!({"reason": "canceled with chronicle cancel"})
    } else {
        json!({})
    };
    let (_, v) = c
        .send_json(
            Method::POST,
            &format!("/v1/runs/{}/{action}", seg(run)),
            &body,
            &[],
        )
        .await?;
    println!(
        "run {} {}",
        v["run_id"].as_str().unwrap_or(run),
        v["status"].as_str().unwrap_or("?")
    );
    Ok(0)
}

/// `resume|release RUN` through the server: apply, then follow the run
/// to its end as `run` does.
pub async fn continue_run(
    c: &Client,
    run: &str,
    action: &str,
    quiet: bool,
) -> Result<u8, CliError> {
    let (_, v) = c
        .send_json(
            Method::POST,
            &format!("/v1/runs/{}/{action}", seg(run)),
            &json!({}),
            &[],
        )
        .await?;
    let id = v["run_id"].as_str().unwrap_or(run).to_string();
    follow_to_end(c, &id, quiet, None).await
}

/// `fork RUN --at SEQ` through the server.
pub async fn fork(
    c: &Client,
    run: &str,
    at: u64,
    input: Option<Value>,
    outputs: std::collections::BTreeMap<String, Value>,
    quiet: bool,
) -> Result<u8, CliError> {
    let mut body = json!({"at": at, "set_output": outputs});
    if let Some(i) = input {
        body["input"] = i;
    }
    let (_, v) = c
        .send_json(
            Method::POST,
            &format!("/v1/runs/{}/fork", seg(run)),
            &body,
            &[],
        )
        .await?;
    let child = v["run_id"].as_str().unwrap_or("?").to_string();
    if !quiet {
        eprintln!(
            "run {child} forked from {} at seq {at}",
            v["forked_from"].as_str().unwrap_or(run)
        );
    }
    follow_to_end(c, &child, quiet, None).await
}

/// `run FILE` through the server: submit, then follow (or, detached,
/// print the run id and return).
pub async fn run(
    c: &Client,
    wf: &chronicle_engine::model::Workflow,
    input: Value,
    key: Option<String>,
    detach: bool,
    quiet: bool,
) -> Result<u8, CliError> {
    let body = json!({
        "workflow": serde_json::to_value(wf).expect("a workflow serializes"),
        "input": input,
    });
    let headers: Vec<(&str, &str)> = key
        .as_deref()
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    let (_, v) = c
        .send_json(Method::POST, "/v1/runs", &body, &headers)
        .await?;
    let id = v["run_id"]
        .as_str()
        .ok_or_else(|| CliError::storage("the server's answer has no run_id"))?
        .to_string();
    if detach {
        println!("{id}");
        return Ok(0);
    }
    follow_to_end(c, &id, quiet, Some(format!("run {id} started"))).await
}

/// Print a run's events as they commit (as a run in this process would),
/// until it has ended or is quarantined; then its summary and exit code.
/// SIGINT/SIGTERM stop following only: the server goes on with the run.
async fn follow_to_end(
    c: &Client,
    run: &str,
    quiet: bool,
    first_line: Option<String>,
) -> Result<u8, CliError> {
    let mut stop = crate::signals::StopSignals::new()?;
    let (tx, rx) = tokio::sync::broadcast::channel(4096);
    let progress = Progress::start(rx, quiet);
    if let (Some(line), false) = (&first_line, quiet) {
        progress.line(line);
    }
    let seen = Arc::new(AtomicU64::new(0));
    let follower = {
        let (c, run, seen) = (c.clone(), run.to_string(), seen.clone());
        tokio::spawn(async move {
            c.follow(&run, 0, |item| {
                if let StreamItem::Event { seq, line } = item {
                    if let Ok(env) = serde_json::from_str::<RawEnvelope>(&line) {
                        let _ = tx.send(Arc::from(vec![env]));
                    }
                    seen.store(seq, Ordering::SeqCst);
                }
                true
            })
            .await
        })
    };
    let wait = async {
        loop {
            let v = c
                .get_json(&format!("/v1/runs/{}?wait=60s", seg(run)))
                .await?;
            if settled(&v) {
                return Ok::<_, CliError>(v);
            }
        }
    };
    let (signal_name, exit) = tokio::select! {
        v = wait => {
            let v = v?;
            // Let the stream deliver what the status already counts.
            let last = v["seq"].as_u64().unwrap_or(0);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while seen.load(Ordering::SeqCst) < last && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            follower.abort();
            progress.finish().await;
            let state = state_of(c, run, "").await?;
            return Ok(crate::runs::summarize(&state, quiet));
        }
        s = stop.recv() => s,
    };
    follower.abort();
    progress.finish().await;
    eprintln!(
        "stopped following on {signal_name}: the server goes on executing run {run} (chronicle status {run})"
    );
    Ok(exit)
}
