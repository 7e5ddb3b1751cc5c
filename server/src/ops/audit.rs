//! Audit views: `verify` and the upgrade check.

use super::*;

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
        "backend": if store.is_postgres() { "postgres" } else { "redb" },
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
        _ if v["backend"] == "postgres" => {
            let _ = writeln!(
                out,
                "ok    log      on PostgreSQL: no commit journal (every acknowledged commit is durable in the database)"
            );
        }
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
