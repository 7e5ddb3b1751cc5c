//! Runs: create, list, read (status, events, state, timeline, export),
//! import, control and fork.

use super::*;

/// `POST /v1/runs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// A workflow definition: a JSON object, or YAML/JSON text.
    #[schema(value_type = Object)]
    pub workflow: Option<Value>,
    /// Or the name of a registered workflow.
    pub workflow_name: Option<String>,
    /// With `workflow_name`: the version (default: the latest).
    pub version: Option<u32>,
    /// The run's input, a JSON object (default `{}`).
    #[schema(value_type = Object)]
    pub input: Option<Value>,
}

/// `POST /v1/runs/{id}/fork` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRun {
    /// The seq of the source run to fork at.
    pub at: u64,
    /// A new input (default: the source's).
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// Step outputs to override: `{"step": value}`.
    #[schema(value_type = Object)]
    #[serde(default)]
    pub set_output: BTreeMap<String, Value>,
}

/// `POST /v1/runs/{id}/cancel` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRun {
    /// Why (recorded in the history).
    pub reason: Option<String>,
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only runs with this status.
    pub status: Option<String>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs whose id starts with this, or whose idempotency key
    /// contains it.
    pub q: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/runs/{id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Long-poll: answer when the run has ended or is quarantined, or
    /// after this long (`30s`, `500ms`; at most 60 s).
    pub wait: Option<String>,
}

/// `GET /v1/runs/{id}/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this seq (default 0: from the first).
    pub after: Option<u64>,
    /// Page size (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// `state` and `timeline` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AtQuery {
    /// After this event.
    pub at: Option<u64>,
    /// At this time (RFC 3339).
    pub at_time: Option<String>,
}

fn target(q: &AtQuery) -> Result<Target, Problem> {
    match (q.at, q.at_time.as_deref()) {
        (Some(_), Some(_)) => Err(Problem::bad_request("give at or at_time, not both")),
        (Some(n), None) => Ok(Target::Seq(n)),
        (None, Some(t)) => Ok(Target::Time(ops::parse_time("at_time", t)?)),
        (None, None) => Ok(Target::Head),
    }
}

/// Parse `?wait=`: a humantime duration (`30s`) or plain seconds.
fn parse_wait(text: &str) -> Result<Duration, Problem> {
    let d = match text.trim().parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|e| {
            Problem::bad_request(format!("wait {text:?} is not a duration like 30s: {e}"))
        })?,
    };
    Ok(d.min(Duration::from_secs(MAX_WAIT_S)))
}

/// Create a run and execute it in the background.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    request_body = CreateRun,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key with the same body returns the existing run (200); with another body, 422"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: the run joins this trace (recorded in RunCreated)")
    ),
    responses(
        (status = 202, description = "Created; executing. `Location` names the run", body = Object),
        (status = 200, description = "The run this idempotency key created", body = Object),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 413, body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem),
    )
)]
pub async fn create_run(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let req: CreateRun = json_body(&body)?;
    let (wf, version) = match (&req.workflow, &req.workflow_name) {
        (Some(def), None) => (parse_workflow(def, app.engine().store())?, None),
        (None, Some(name)) => {
            let (wf, v) = app.registered(name, req.version)?;
            (wf, Some(v))
        }
        _ => {
            return Err(Problem::bad_request(
                "give exactly one of workflow (a definition) or workflow_name (a registered workflow)",
            ));
        }
    };
    let input = check_input(req.input)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    Problem::bad_request("Idempotency-Key must be 1-255 visible ASCII characters")
                })?;
            Some(k.to_string())
        }
    };
    let engine = &app.0.engine;
    let sha = wf.sha256();
    let name = wf.name.clone();
    let body = |run: RunId, status: &str| {
        json!({
            "run_id": run,
            "status": status,
            "workflow": name,
            "workflow_sha256": sha,
            "workflow_version": version,
        })
    };
    // A caller's W3C trace: the run joins it.
    let trace = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(chronicle_engine::runtime::trace::trace_id_of_traceparent);
    let (run, created) = engine.submit_traced(wf, input, key, trace).await?;
    Ok(if created {
        created_response(run, StatusCode::ACCEPTED, body(run, "running"))
    } else {
        let status = ops::status(engine.store(), run)?.0.status;
        created_response(run, StatusCode::OK, body(run, status.as_str()))
    })
}

/// List runs, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs", params(ListQuery),
    responses((status = 200, description = "`{runs: [RunSummary], next_cursor, counts: {STATUS: n}}`; `counts` are per status over the runs the other filters (workflow, q) select", body = Object), (status = 400, body = Problem), (status = 503, body = Problem))
)]
pub async fn list_runs(
    State(app): State<AppState>,
    Q(q): Q<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    ops::check_status(q.status.as_deref())?;
    let all = ops::list_runs(&app.0.engine, None, q.workflow.as_deref())?;
    let all = ops::search_runs(all, q.q.as_deref());
    let counts = ops::count_by_status(&all);
    let mut rows: Vec<_> = all
        .into_iter()
        .filter(|r| q.status.as_deref().is_none_or(|s| r.status.as_str() == s))
        .collect();
    if let Some(c) = &q.cursor {
        rows = ops::after_cursor(rows, c)?;
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(ops::cursor_of)
    } else {
        None
    };
    Ok(Json(
        json!({"runs": rows, "next_cursor": next, "counts": counts}),
    ))
}

/// A run's status (the `chronicle status --json` object); `?wait=30s`
/// long-polls until it has ended or is quarantined.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id or unique prefix"), WaitQuery),
    responses((status = 200, body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn get_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<WaitQuery>,
) -> Result<Json<Value>, Problem> {
    let run = app.resolve(&id)?;
    let wait = q.wait.as_deref().map(parse_wait).transpose()?;
    let engine = &app.0.engine;
    if let Some(wait) = wait {
        let settled = engine
            .live_state(run)
            .is_some_and(|s| ops::settled(s.status));
        if !settled {
            let mut shutdown = app.0.shutdown.clone();
            let state = tokio::select! {
                r = tokio::time::timeout(wait, engine.wait(run)) => match r {
                    Ok(r) => Some(r?),
                    Err(_) => None,
                },
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => None,
            };
            // The state the wait ended on is the fold at the run's head
            // (the actor publishes it once durable).
            if let Some(state) = state {
                return Ok(Json(ops::status_of(engine.store(), &state)?));
            }
        }
    }
    let (_, v) = ops::status(engine.store(), run)?;
    Ok(Json(v))
}

/// A page of a run's events (envelopes, as `chronicle history --json`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Run id or unique prefix"), EventsQuery),
    responses((status = 200, description = "`{events: [envelope], last_seq}`", body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_events(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<EventsQuery>,
) -> Result<Json<ops::EventsPage>, Problem> {
    let run = app.resolve(&id)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let store = app.0.engine.store();
    let envs = ops::events_page(store, run, q.after.unwrap_or(0), limit)?;
    let head = store
        .head(&run.stream())?
        .map(|h| h.last_seq.0)
        .unwrap_or(0);
    let events = envs
        .iter()
        .map(|e| serde_json::value::RawValue::from_string(ops::event_line(e).0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::storage(format!("an event does not serialize: {e}")))?;
    Ok(Json(ops::EventsPage {
        events,
        last_seq: head,
    }))
}

/// A run's state folded at a seq or time (`chronicle replay --json`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/state", tag = "time travel",
    params(("id" = String, Path, description = "Run id or unique prefix"), AtQuery),
    responses((status = 200, description = "The folded RunState", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_state(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<AtQuery>,
) -> Result<Json<chronicle_engine::state::RunState>, Problem> {
    let run = app.resolve(&id)?;
    let t = target(&q)?;
    let envs = ops::whole_history(app.0.engine.store(), run)?;
    Ok(Json(ops::replay_state(&envs, t)?))
}

/// `timeline` query beyond [`AtQuery`].
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SinceQuery {
    /// Only the entries after this seq (the fold still starts at seq 1).
    pub since: Option<u64>,
}

/// Each event with what it changed (`chronicle replay --timeline --json`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/timeline", tag = "time travel",
    params(("id" = String, Path, description = "Run id or unique prefix"), AtQuery, SinceQuery),
    responses((status = 200, description = "[TimelineEntry]", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_timeline(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<AtQuery>,
    Q(since): Q<SinceQuery>,
) -> Result<Json<Vec<chronicle_replay::timeline::TimelineEntry>>, Problem> {
    let run = app.resolve(&id)?;
    let t = target(&q)?;
    let envs = ops::whole_history(app.0.engine.store(), run)?;
    Ok(Json(ops::replay_timeline(&envs, t, since.since)?))
}

/// Every attempt of a run up to a seq or time, with the seqs of the
/// events that started and ended it, its outcome, error, stderr excerpt
/// and backoff, and each step's routing decisions (the run page's Gantt
/// chart and step panel).
#[utoipa::path(
    get, path = "/v1/runs/{id}/attempts", tag = "time travel",
    params(("id" = String, Path, description = "Run id or unique prefix"), AtQuery),
    responses((status = 200, description = "`{attempts: [Attempt], routing: {STEP: [Decision]}, seq}`", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_attempts(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<AtQuery>,
) -> Result<Json<ops::AttemptsView>, Problem> {
    let run = app.resolve(&id)?;
    let t = target(&q)?;
    let envs = ops::whole_history(app.0.engine.store(), run)?;
    Ok(Json(ops::attempts(&envs, t)?))
}

/// A run's history as JSON Lines (`chronicle export`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/export", tag = "audit",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses((status = 200, description = "JSON Lines, one envelope per line", content_type = "application/x-ndjson", body = String), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_export(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let run = app.resolve(&id)?;
    let mut out = Vec::new();
    chronicle_replay::export::export(app.0.engine.store(), run, &mut out)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

/// Import an exported history (JSON Lines); its chain is verified first.
#[utoipa::path(
    post, path = "/v1/runs/import", tag = "audit",
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 201, description = "`{run_id, events}`", body = Object), (status = 400, body = Problem), (status = 413, body = Problem), (status = 503, body = Problem))
)]
pub async fn import_run(
    State(app): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let envs =
        chronicle_replay::export::read_history("<request body>", std::io::Cursor::new(&body[..]))?;
    let run = chronicle_replay::export::import(app.0.engine.store(), &envs).await?;
    Ok(created_response(
        run,
        StatusCode::CREATED,
        json!({"run_id": run, "events": envs.len()}),
    ))
}

/// The status object after a control command.
fn after_control(app: &AppState, run: RunId) -> Result<Json<Value>, Problem> {
    Ok(Json(ops::status(app.0.engine.store(), run)?.1))
}

/// Cancel a run: running attempts are killed; the run ends `canceled`.
/// Answers once it has (at most 30 s).
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    request_body(content = CancelRun, description = "Optional"),
    responses((status = 200, description = "The run's status object", body = Object), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem))
)]
pub async fn cancel_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, Problem> {
    let req: CancelRun = json_body(&body)?;
    let run = app.resolve(&id)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "canceled through the API".into());
    let engine = &app.0.engine;
    engine.cancel(run, &reason).await?;
    // The cancel is durable; running attempts are being killed. Answer
    // once the run has ended (a kill takes milliseconds), or after 30 s
    // with the run still `running` and `cancel_requested`.
    let _ = tokio::time::timeout(Duration::from_secs(30), engine.wait(run)).await;
    after_control(&app, run)
}

/// Pause a run: running attempts finish, no new ones start.
#[utoipa::path(
    post, path = "/v1/runs/{id}/pause", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem))
)]
pub async fn pause_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let run = app.resolve(&id)?;
    app.0.engine.pause(run).await?;
    after_control(&app, run)
}

/// Resume a paused run; the server executes it on.
#[utoipa::path(
    post, path = "/v1/runs/{id}/resume", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem))
)]
pub async fn resume_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let run = app.resolve(&id)?;
    app.0.engine.resume(run).await?;
    after_control(&app, run)
}

/// Release a quarantined run; the server executes it on.
#[utoipa::path(
    post, path = "/v1/runs/{id}/release", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix")),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem))
)]
pub async fn release_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Problem> {
    let run = app.resolve(&id)?;
    app.0.engine.release(run).await?;
    after_control(&app, run)
}

/// Start a new run from a run's state at a seq (with optional input and
/// step-output overrides), and execute it.
#[utoipa::path(
    post, path = "/v1/runs/{id}/fork", tag = "time travel",
    params(("id" = String, Path, description = "Source run id or unique prefix")),
    request_body = ForkRun,
    responses((status = 202, description = "`{run_id, status, forked_from, at}`", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem))
)]
pub async fn fork_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let req: ForkRun = json_body(&body)?;
    let source = app.resolve(&id)?;
    let input = match req.input {
        None => None,
        Some(v) => Some(check_input(Some(v))?),
    };
    let engine = &app.0.engine;
    let child = chronicle_replay::fork::fork(engine, source, req.at, input, req.set_output).await?;
    Ok(created_response(
        child,
        StatusCode::ACCEPTED,
        json!({"run_id": child, "status": "running", "forked_from": source, "at": req.at}),
    ))
}
