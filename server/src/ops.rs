//! The operations behind both the CLI and the API: each command's data is
//! computed here once, so `chronicle status --json` on the file and
//! `GET /v1/runs/{id}` on a server give the same object, and the CLI
//! renders text from the same data either way.

use chronicle_engine::ids::{RunId, RunStream, StepId};
use chronicle_engine::runtime::{Engine, RunSummary};
use chronicle_engine::state::{RunState, RunStatus};
use chronicle_replay::rebuild::{Target, fold_envelopes, state_at};
use chronicle_replay::timeline::{TimelineEntry, timeline};
use chronicle_store::{RawEnvelope, Seq, Store};

use serde_json::{Value, json};

use crate::problem::Problem;

/// The run statuses, as `list --status` and `GET /v1/runs?status=` take them.
pub const STATUSES: [&str; 7] = [
    "pending",
    "running",
    "paused",
    "succeeded",
    "failed",
    "canceled",
    "quarantined",
];

/// Check a status filter. Errors: 400 naming the statuses.
pub fn check_status(status: Option<&str>) -> Result<(), Problem> {
    match status {
        Some(s) if !STATUSES.contains(&s) => Err(Problem::bad_request(format!(
            "unknown status {s:?}: use one of {}",
            STATUSES.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Every run, newest first (by creation time, then run id), filtered by
/// status and workflow name.
pub fn list_runs(
    engine: &Engine,
    status: Option<&str>,
    workflow: Option<&str>,
) -> Result<Vec<RunSummary>, Problem> {
    check_status(status)?;
    let mut rows: Vec<RunSummary> = engine
        .list()?
        .into_iter()
        .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
        .filter(|r| workflow.is_none_or(|w| r.workflow == w))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.run_id.0)));
    Ok(rows)
}

/// The cursor that follows `row` in a newest-first listing: opaque to
/// clients (`MICROS_RUNID`).
pub fn cursor_of(row: &RunSummary) -> String {
    let micros = row.created_at.map(|t| t.timestamp_micros()).unwrap_or(0);
    format!("{micros}_{}", row.run_id)
}

/// The rows after `cursor` in `rows` (sorted by [`list_runs`]).
///
/// Errors: 400 for a cursor that is not one [`cursor_of`] made.
pub fn after_cursor(rows: Vec<RunSummary>, cursor: &str) -> Result<Vec<RunSummary>, Problem> {
    let bad = || Problem::bad_request(format!("cursor {cursor:?} is not one this server gave"));
    let (micros, run) = cursor.split_once('_').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let run: RunId = run.parse().map_err(|_| bad())?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            let m = r.created_at.map(|t| t.timestamp_micros()).unwrap_or(0);
            (m, r.run_id.0) < (micros, run.0)
        })
        .collect())
}

/// The `status --json` object of a run (documented in the README).
pub fn status_json(state: &RunState, forks: &[(RunId, u64)]) -> Value {
    let order: Vec<StepId> = state.wf().steps.iter().map(|s| s.id.clone()).collect();
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

/// A run's state at its head and the `status --json` object.
///
/// Errors: 404 unknown run; 503 for a history that does not fold.
pub fn status(store: &Store, run: RunId) -> Result<(RunState, Value), Problem> {
    let state = state_at(store, run, Target::Head)?;
    let v = status_of(store, &state)?;
    Ok((state, v))
}

/// The `status --json` object of `state` (its forks read from the store).
pub fn status_of(store: &Store, state: &RunState) -> Result<Value, Problem> {
    let forks = match state.run_id {
        Some(run) => chronicle_replay::fork::forks_of(store, run)?,
        None => Vec::new(),
    };
    Ok(status_json(state, &forks))
}

/// Whether a run needs nothing more from the engine to settle: ended, or
/// quarantined (it waits for a person to release it).
pub fn settled(status: RunStatus) -> bool {
    status.is_terminal() || status == RunStatus::Quarantined
}

/// One event as `history --json` prints it: the envelope on one line
/// (its payload byte for byte), or for an event that does not decode
/// `{stream, seq, position, error}`; the second value is that decode
/// error.
pub fn event_line(env: &RawEnvelope) -> (String, Option<String>) {
    match serde_json::from_slice::<serde::de::IgnoredAny>(&env.payload) {
        Ok(_) => (
            serde_json::to_string(env).expect("a payload that parses serializes"),
            None,
        ),
        Err(e) => (
            json!({
                "stream": env.stream.to_string(),
                "seq": env.seq.0,
                "position": env.position.0,
                "error": format!("the event does not decode: {e}"),
            })
            .to_string(),
            Some(e.to_string()),
        ),
    }
}

/// A page of events as `GET /v1/runs/{id}/events` answers it: each line
/// of [`event_line`] embedded as is.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EventsPage {
    /// The events, oldest first.
    pub events: Vec<Box<serde_json::value::RawValue>>,
    /// The run's last seq when the page was read.
    pub last_seq: u64,
}

/// Up to `limit` events of `run` after seq `after`.
///
/// Errors: 404 when the run has no events; storage errors.
pub fn events_page(
    store: &Store,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<RawEnvelope>, Problem> {
    if store.head(&run.stream())?.is_none() {
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run {run} in this database"),
        ));
    }
    let mut out = Vec::new();
    let to = Seq(after.saturating_add(limit as u64));
    store.for_each_in_stream(&run.stream(), Seq(after + 1), Some(to), |env| {
        out.push(env);
        Ok(())
    })?;
    Ok(out)
}

/// Whether `env` ends its run (succeeded, failed or canceled).
pub fn is_terminal_event(env: &RawEnvelope) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Kind>(&env.payload).is_ok_and(|k| {
        matches!(
            k.kind.as_str(),
            "RunSucceeded" | "RunFailed" | "RunCanceled"
        )
    })
}

/// Parse an `at_time` (RFC 3339). Errors: 400 naming the expected form.
pub fn parse_time(what: &str, t: &str) -> Result<chrono::DateTime<chrono::Utc>, Problem> {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            Problem::bad_request(format!(
                "{what} {t:?} is not RFC 3339 (2026-11-21T10:00:00Z): {e}"
            ))
        })
}

/// Check `target` against a history whose last seq is `head`.
/// Errors: 400 when a seq is outside `1..=head`.
pub fn check_target(target: Target, head: u64) -> Result<(), Problem> {
    if let Target::Seq(n) = target
        && (n == 0 || n > head)
    {
        return Err(Problem::bad_request(format!(
            "--at {n} is outside the history (events 1..={head})"
        )));
    }
    Ok(())
}

/// The state folded from `envs` at `target` (`replay --json`).
///
/// Errors: 400 for a target outside the history or before the first
/// event; the fold's errors.
pub fn replay_state(envs: &[RawEnvelope], target: Target) -> Result<RunState, Problem> {
    check_target(target, envs.last().map(|e| e.seq.0).unwrap_or(0))?;
    let state = fold_envelopes(RunState::default(), envs, target)?;
    if state.run_id.is_none() {
        return Err(Problem::bad_request("no event at or before that time"));
    }
    Ok(state)
}

/// The timeline of `envs` up to `target` (`replay --timeline --json`).
pub fn replay_timeline(
    envs: &[RawEnvelope],
    target: Target,
) -> Result<Vec<TimelineEntry>, Problem> {
    check_target(target, envs.last().map(|e| e.seq.0).unwrap_or(0))?;
    let mut t = timeline(envs)?;
    match target {
        Target::Seq(n) => t.retain(|e| e.seq <= n),
        Target::Time(ts) => t.retain(|e| e.at <= ts),
        Target::Head => {}
    }
    Ok(t)
}

/// Every event of a run. Errors: 404 when it has none.
pub fn whole_history(store: &Store, run: RunId) -> Result<Vec<RawEnvelope>, Problem> {
    let envs = store.read_stream(&run.stream(), Seq(1))?;
    if envs.is_empty() {
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no run {run} in this database"),
        ));
    }
    Ok(envs)
}

/// The `verify --json` object: `{ok, streams, journal, journal_losses}`,
/// and with `expect_head` (a run's head hash recorded earlier)
/// `expect_head: {hash, found_at_seq}` — not finding it makes `ok` false.
///
/// Errors: 404 for an unknown run; 400 for `expect_head` without a run or
/// not 64 hex digits; storage errors.
pub fn verify(
    store: &Store,
    run: Option<RunId>,
    expect_head: Option<&str>,
) -> Result<Value, Problem> {
    let expected = match (expect_head, run) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Problem::bad_request(
                "--expect-head needs a RUN: the head hash is a run's",
            ));
        }
        (Some(h), Some(r)) => {
            let h = h.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Problem::bad_request(format!(
                    "--expect-head {h:?} is not a hash: 64 hex digits, as verify --json prints head_hash"
                )));
            }
            let found = chronicle_replay::verify::find_head(store, r, &h)?;
            Some((h, found))
        }
    };
    let losses: Vec<Value> = store
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
    let journal = store.journal_status()?;
    let reports = chronicle_replay::verify::verify(store, run)?;
    let bad = reports.iter().filter(|r| !r.ok()).count()
        + usize::from(journal.problem.is_some())
        + usize::from(expected.as_ref().is_some_and(|(_, f)| f.is_none()));
    let mut v = json!({
        "ok": bad == 0,
        "streams": reports,
        "journal": journal,
        "journal_losses": losses,
    });
    if let Some((hash, found)) = expected {
        v["expect_head"] = json!({"hash": hash, "found_at_seq": found});
    }
    Ok(v)
}

/// The text of `chronicle verify` from its JSON object.
pub fn render_verify(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let j = &v["journal"];
    let mut bad = 0;
    match (j["problem"].as_str(), j["open"].as_bool().unwrap_or(false)) {
        (Some(p), _) => {
            bad += 1;
            let _ = writeln!(out, "FAIL  journal  {p}");
        }
        (None, false) => {
            let _ = writeln!(
                out,
                "ok    journal  closed cleanly; frames through {} are in the database",
                j["checkpointed_through"]
            );
        }
        (None, true) => {
            let _ = writeln!(
                out,
                "ok    journal  open (not closed cleanly); {} frame(s) past frame {} readable",
                j["frames_past_checkpoint"], j["checkpointed_through"]
            );
        }
    }
    for l in v["journal_losses"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "note  journal loss accepted at {}: the journal {}; {} frame(s) applied",
            l["accepted_at"].as_str().unwrap_or("?"),
            l["problem"].as_str().unwrap_or("?"),
            l["frames_applied"]
        );
    }
    if let Some(e) = v.get("expect_head") {
        let hash = e["hash"].as_str().unwrap_or("?");
        match e["found_at_seq"].as_u64() {
            Some(seq) => {
                let _ = writeln!(
                    out,
                    "ok    head     {hash} is event {seq}: the history up to it is unchanged"
                );
            }
            None => {
                bad += 1;
                let _ = writeln!(
                    out,
                    "FAIL  head     no event of this run has hash {hash}: the history up to the recorded head has changed (or the hash is another run's)"
                );
            }
        }
    }
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    for r in &streams {
        let problems: Vec<&str> = r["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        let ok = r["chain_ok"].as_bool().unwrap_or(false)
            && r["fold_ok"].as_bool().unwrap_or(false)
            && problems.is_empty();
        let stream = r["stream"].as_str().unwrap_or("?");
        if ok {
            let _ = writeln!(
                out,
                "ok    {stream}  {} events, {} snapshots",
                r["events"], r["snapshots_checked"]
            );
        } else {
            bad += 1;
            let _ = writeln!(out, "FAIL  {stream}  {}", problems.join("; "));
        }
    }
    let _ = writeln!(
        out,
        "{} stream(s) verified, {bad} with problems",
        streams.len()
    );
    out
}

/// The `upgrade-check --json` object for runs `ids` of `store` against the
/// definition `new`: `{compatible, workflow, workflow_sha256, runs:
/// [{run_id, compatible, events, first_difference_seq, recorded, decided,
/// reason}]}` (see `chronicle_replay::upgrade`). With no ids, every run of
/// workflow `workflow` (default: `new.name`), oldest first.
///
/// Errors: 422 when there is no run to check; 404 for an unknown run;
/// 503 for a history that does not decode.
pub fn upgrade_report(
    engine: &Engine,
    new: &chronicle_engine::model::Workflow,
    ids: &[RunId],
    workflow: Option<&str>,
) -> Result<Value, Problem> {
    let store = engine.store();
    let ids: Vec<RunId> = if ids.is_empty() {
        let name = workflow.unwrap_or(&new.name);
        list_runs(engine, None, Some(name))?
            .into_iter()
            .rev()
            .map(|r| r.run_id)
            .collect()
    } else {
        ids.to_vec()
    };
    if ids.is_empty() {
        return Err(Problem::invalid_input(format!(
            "no run of workflow {} in this database to check (give runs or a workflow name)",
            workflow.unwrap_or(&new.name)
        )));
    }
    let agents = chronicle_replay::upgrade::AgentTimelines::read(store)?;
    let mut rows = Vec::new();
    for id in ids {
        let envs = whole_history(store, id)?;
        let verdict = chronicle_replay::upgrade::check(&envs, new, &|t| agents.at(t)).map_err(
            |e| match e {
                chronicle_replay::ReplayError::BadFile { message, .. } => {
                    Problem::storage(format!("run {id}: {message}"))
                }
                other => other.into(),
            },
        )?;
        let mut v = serde_json::to_value(&verdict).expect("a verdict serializes");
        v["run_id"] = Value::String(id.to_string());
        rows.push(v);
    }
    Ok(json!({
        "compatible": rows.iter().all(|r| r["compatible"] == true),
        "workflow": new.name,
        "workflow_sha256": new.sha256(),
        "runs": rows,
    }))
}

/// The text of `chronicle upgrade-check` from its JSON object.
pub fn render_upgrade(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    let ok = runs.iter().filter(|r| r["compatible"] == true).count();
    for r in &runs {
        let id = r["run_id"].as_str().unwrap_or("?");
        if r["compatible"] == true {
            let _ = writeln!(out, "ok    {id}  compatible ({} events)", r["events"]);
        } else {
            let _ = writeln!(
                out,
                "FAIL  {id}  differs at seq {}: recorded {}; the new definition decides {} ({})",
                r["first_difference_seq"],
                r["recorded"].as_str().unwrap_or("-"),
                r["decided"].as_str().unwrap_or("-"),
                r["reason"].as_str().unwrap_or("")
            );
        }
    }
    let _ = writeln!(
        out,
        "{} run(s) checked against {} (sha256 {}): {ok} compatible, {} not",
        runs.len(),
        v["workflow"].as_str().unwrap_or("?"),
        v["workflow_sha256"].as_str().unwrap_or("?"),
        runs.len() - ok
    );
    out
}

/// The `agents --json` object: every agent the database knows — declared
/// by the newest run of each workflow, or with a stream of its own — with
/// its skills and concurrency (from the newest declaration), the
/// workflows that declare it, its circuit (folded from `agent:NAME`),
/// attempts running on it in this engine, its last health verdict
/// (`{healthy, detail, since}`, or null without a check), and its last
/// transitions (at most 10, newest last).
///
/// Errors: storage errors; a history or agent event that does not decode.
pub fn agents(engine: &Engine) -> Result<Value, Problem> {
    use std::collections::BTreeMap;
    let store = engine.store();
    struct Known {
        skills: Vec<String>,
        concurrency: u32,
        workflows: Vec<String>,
    }
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    // The newest run of each workflow (list_runs is newest first).
    let mut seen = std::collections::BTreeSet::new();
    for row in list_runs(engine, None, None)? {
        if !seen.insert(row.workflow.clone()) {
            continue;
        }
        let Some(first) = store
            .read_stream(&row.run_id.stream(), Seq(1))?
            .into_iter()
            .next()
        else {
            continue;
        };
        let state = fold_envelopes(
            RunState::default(),
            std::slice::from_ref(&first),
            Target::Head,
        )?;
        for (name, agent) in &state.wf().agents {
            let k = known.entry(name.clone()).or_insert_with(|| Known {
                skills: agent.skills.clone(),
                concurrency: agent.concurrency,
                workflows: Vec::new(),
            });
            k.workflows.push(row.workflow.clone());
        }
    }
    let mut streams: BTreeMap<String, Vec<RawEnvelope>> = BTreeMap::new();
    for head in store.streams_with_prefix("agent:")? {
        if let chronicle_store::StreamId::Named(n) = &head.stream
            && let Some(agent) = n.strip_prefix("agent:")
        {
            streams.insert(agent.to_string(), store.read_stream(&head.stream, Seq(1))?);
        }
    }
    let load: BTreeMap<String, u32> = engine.agent_loads().into_iter().collect();
    let mut names: Vec<String> = known.keys().cloned().collect();
    names.extend(streams.keys().filter(|n| !known.contains_key(*n)).cloned());
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut breaker = chronicle_engine::circuit::Breaker::default();
        let mut recent = Vec::new();
        let mut health = Value::Null;
        for env in streams.get(&name).into_iter().flatten() {
            let e: chronicle_engine::event::AgentEvent = env.decode()?;
            breaker.apply(&e);
            if let chronicle_engine::event::AgentEvent::HealthChecked { healthy, detail } = &e {
                health = json!({"healthy": healthy, "detail": detail, "since": env.recorded_at});
            }
            recent.push(json!({"seq": env.seq.0, "at": env.recorded_at, "event": e.name()}));
        }
        let keep = recent.len().saturating_sub(10);
        let recent: Vec<Value> = recent.into_iter().skip(keep).collect();
        let until = match breaker.state {
            chronicle_engine::circuit::CircuitState::Open { until } => Some(until),
            _ => None,
        };
        let k = known.get(&name);
        out.push(json!({
            "name": name,
            "skills": k.map(|k| k.skills.clone()).unwrap_or_default(),
            "concurrency": k.map(|k| k.concurrency),
            "workflows": k.map(|k| k.workflows.clone()).unwrap_or_default(),
            "circuit": {"state": breaker.state.as_str(), "failures": breaker.failures, "open_until": until},
            "load": load.get(&name).copied().unwrap_or(0),
            "health": health,
            "recent": recent,
        }));
    }
    Ok(json!({"agents": out}))
}

/// The text of `chronicle agents` from its JSON object.
pub fn render_agents(v: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16}  {:<9}  {:<9}  {:>4}  {:>8}  {:<28}  WORKFLOWS",
        "AGENT", "CIRCUIT", "HEALTH", "LOAD", "FAILURES", "SKILLS"
    );
    for a in v["agents"].as_array().into_iter().flatten() {
        let list = |k: &str| {
            a[k].as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let health = match a["health"]["healthy"].as_bool() {
            Some(true) => "healthy",
            Some(false) => "failing",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<9}  {:<9}  {:>4}  {:>8}  {:<28}  {}",
            a["name"].as_str().unwrap_or("?"),
            a["circuit"]["state"].as_str().unwrap_or("?"),
            health,
            a["load"].as_u64().unwrap_or(0),
            a["circuit"]["failures"].as_u64().unwrap_or(0),
            list("skills"),
            list("workflows")
        );
    }
    out
}
