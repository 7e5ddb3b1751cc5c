//! The `/v1` routes, their handlers and the OpenAPI document (generated
//! from the handlers' annotations by utoipa, so the document and the
//! router cannot disagree).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chronicle_engine::ids::{RunId, RunStream};
use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_engine::runtime::Engine;
use chronicle_replay::rebuild::Target;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ops;
use crate::problem::Problem;
use crate::registry;

/// Longest `?wait=` honoured (a longer one is cut to this), seconds.
pub const MAX_WAIT_S: u64 = 60;

/// Parsed registered definitions by `(name, version asked)`, with the
/// version found.
type Definitions = std::collections::HashMap<(String, Option<u32>), (Workflow, u32)>;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub engine: Engine,
    /// Recovery at start is done.
    pub ready: AtomicBool,
    /// Permits for concurrent SSE streams.
    pub streams: Arc<Semaphore>,
    /// Serializes workflow registration (version numbers).
    pub registering: tokio::sync::Mutex<()>,
    /// Registered definitions already parsed, by `(name, version asked)`;
    /// emptied at each registration (this server is the only writer).
    pub definitions: std::sync::Mutex<Definitions>,
    /// Becomes true when the server shuts down: streams and long polls end.
    pub shutdown: watch::Receiver<bool>,
    /// Events buffered per SSE client before it is dropped as too slow.
    pub sse_buffer: usize,
    /// Who may read `/metrics`.
    pub metrics_access: crate::metrics::MetricsAccess,
}

impl AppState {
    /// The state of a server over `engine`: at most `max_streams` event
    /// streams, `sse_buffer` events buffered per stream client, ending
    /// streams and long polls when `shutdown` turns true, `/metrics` read
    /// as `metrics_access` allows.
    pub fn new(
        engine: Engine,
        max_streams: usize,
        sse_buffer: usize,
        shutdown: watch::Receiver<bool>,
        metrics_access: crate::metrics::MetricsAccess,
    ) -> Self {
        Self(Arc::new(Shared {
            engine,
            ready: AtomicBool::new(false),
            streams: Arc::new(Semaphore::new(max_streams)),
            registering: Default::default(),
            definitions: Default::default(),
            shutdown,
            sse_buffer: sse_buffer.max(1),
            metrics_access,
        }))
    }

    /// Mark recovery done: `/v1` routes and `/readyz` answer.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// A registered definition and its version, parsed once.
    fn registered(&self, name: &str, version: Option<u32>) -> Result<(Workflow, u32), Problem> {
        let key = (name.to_string(), version);
        let cache = || self.0.definitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache().get(&key) {
            return Ok(hit.clone());
        }
        let (wf, v) = registry::get(self.0.engine.store(), name, version)?;
        cache().insert(key, (wf.clone(), v.version));
        Ok((wf, v.version))
    }

    fn resolve(&self, id: &str) -> Result<RunId, Problem> {
        Ok(self.0.engine.resolve_run(id)?)
    }
}

/// The OpenAPI document's top.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle",
        description = "Chronicle's HTTP API: submit, watch, control, audit and time-travel runs of durable workflows. Every /v1 route needs `Authorization: Bearer TOKEN`. Errors are application/problem+json (RFC 9457).",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/v1` routes (without middleware) and their OpenAPI document.
pub fn v1_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_run, list_runs))
        .routes(routes!(get_run))
        .routes(routes!(run_events))
        .routes(routes!(crate::sse::run_events_stream))
        .routes(routes!(run_state))
        .routes(routes!(run_timeline))
        .routes(routes!(run_export))
        .routes(routes!(import_run))
        .routes(routes!(verify_all))
        .routes(routes!(verify_run))
        .routes(routes!(cancel_run))
        .routes(routes!(pause_run))
        .routes(routes!(resume_run))
        .routes(routes!(release_run))
        .routes(routes!(fork_run))
        .routes(routes!(put_workflow, get_workflow))
        .routes(routes!(list_workflows))
        .routes(routes!(upgrade_check))
        .routes(routes!(list_agents))
        .split_for_parts()
}

// ---------------------------------------------------------------- extractors

/// A request body read whole (within the body limit); its rejection is a
/// problem (413 over the limit).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is over the server's limit (--body-limit)",
                    )
                } else {
                    Problem::bad_request(format!("cannot read the request body: {}", e.body_text()))
                }
            })
    }
}

/// Query parameters whose rejection is a 400 problem.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Q<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// Parse a JSON body into `T` (an empty body is `{}`).
fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(format!("the body is not the JSON this route takes: {e}"))
    })
}

// ------------------------------------------------------------------- types

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

/// `GET /v1/workflows/{name}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version (default: the latest).
    pub version: Option<u32>,
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

fn parse_workflow(def: &Value) -> Result<Workflow, Problem> {
    Ok(match def {
        Value::String(text) => {
            let name = if text.trim_start().starts_with('{') {
                "workflow.json"
            } else {
                "workflow.yaml"
            };
            parse_definition(name, text)?
        }
        Value::Object(_) => {
            let text = serde_json::to_string_pretty(def).expect("a JSON value serializes");
            parse_definition("workflow.json", &text)?
        }
        _ => {
            return Err(Problem::invalid_input(
                "workflow must be a definition: a JSON object, or YAML/JSON text",
            ));
        }
    })
}

fn check_input(input: Option<Value>) -> Result<Value, Problem> {
    match input {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(Problem::invalid_input(
            "input must be a JSON object, like {\"file\": \"a.log\"}",
        )),
    }
}

fn created_response(run: RunId, status: StatusCode, mut body: Value) -> Response {
    let location = format!("/v1/runs/{run}");
    if let Some(o) = body.as_object_mut() {
        o.insert("location".into(), Value::String(location.clone()));
    }
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

// ---------------------------------------------------------------- handlers

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
        (Some(def), None) => (parse_workflow(def)?, None),
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
    responses((status = 200, description = "`{runs: [RunSummary], next_cursor}`", body = Object), (status = 400, body = Problem), (status = 503, body = Problem))
)]
pub async fn list_runs(
    State(app): State<AppState>,
    Q(q): Q<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut rows = ops::list_runs(&app.0.engine, q.status.as_deref(), q.workflow.as_deref())?;
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
    Ok(Json(json!({"runs": rows, "next_cursor": next})))
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

/// Each event with what it changed (`chronicle replay --timeline --json`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/timeline", tag = "time travel",
    params(("id" = String, Path, description = "Run id or unique prefix"), AtQuery),
    responses((status = 200, description = "[TimelineEntry]", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn run_timeline(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<AtQuery>,
) -> Result<Json<Vec<chronicle_replay::timeline::TimelineEntry>>, Problem> {
    let run = app.resolve(&id)?;
    let t = target(&q)?;
    let envs = ops::whole_history(app.0.engine.store(), run)?;
    Ok(Json(ops::replay_timeline(&envs, t)?))
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

/// Verify every stream's hash chain and fold, and the commit journal.
#[utoipa::path(
    get, path = "/v1/verify", tag = "audit",
    responses((status = 200, description = "`{ok, streams, journal, journal_losses}` (as `chronicle verify --json`)", body = Object), (status = 503, body = Problem))
)]
pub async fn verify_all(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let engine = app.0.engine.clone();
    let v = tokio::task::spawn_blocking(move || ops::verify(engine.store(), None, None))
        .await
        .map_err(|e| Problem::storage(format!("verify stopped: {e}")))??;
    Ok(Json(v))
}

/// `GET /v1/runs/{id}/verify` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// A head hash recorded earlier (`head_hash`): the run's chain must
    /// still contain it.
    pub expect_head: Option<String>,
}

/// Verify one run's hash chain and fold (and a recorded head).
#[utoipa::path(
    get, path = "/v1/runs/{id}/verify", tag = "audit",
    params(("id" = String, Path, description = "Run id or unique prefix"), VerifyQuery),
    responses((status = 200, body = Object), (status = 404, body = Problem), (status = 503, body = Problem))
)]
pub async fn verify_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Q(q): Q<VerifyQuery>,
) -> Result<Json<Value>, Problem> {
    let run = app.resolve(&id)?;
    Ok(Json(ops::verify(
        app.0.engine.store(),
        Some(run),
        q.expect_head.as_deref(),
    )?))
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

/// Register a workflow definition under `name` (JSON object, or YAML or
/// JSON text with another content type). The same definition again keeps
/// its version (200); a changed one gets the next version (201).
#[utoipa::path(
    put, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "The workflow's name (its definition's `name`)")),
    request_body(content = String, description = "The definition: application/json, or YAML"),
    responses((status = 201, body = WorkflowVersion), (status = 200, body = WorkflowVersion), (status = 400, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem))
)]
pub async fn put_workflow(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    registry::check_name(&name)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("the definition is not UTF-8 text"))?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let file = if json {
        format!("{name}.json")
    } else {
        format!("{name}.yaml")
    };
    let wf = parse_definition(&file, text)?;
    let _one_at_a_time = app.0.registering.lock().await;
    let (entry, new) = registry::register(app.0.engine.store(), &name, &wf).await?;
    app.0
        .definitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)).into_response())
}

/// A registered workflow's definition (the latest version, or `?version=`).
#[utoipa::path(
    get, path = "/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path, description = "The workflow's name"), VersionQuery),
    responses((status = 200, body = WorkflowVersion), (status = 404, body = Problem))
)]
pub async fn get_workflow(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<VersionQuery>,
) -> Result<Json<registry::WorkflowVersion>, Problem> {
    Ok(Json(
        registry::get(app.0.engine.store(), &name, q.version)?.1,
    ))
}

/// Every registered workflow with its versions.
#[utoipa::path(
    get, path = "/v1/workflows", tag = "workflows",
    responses((status = 200, description = "`{workflows: [{name, latest_version, versions: [{version, sha256, registered_at}]}]}`", body = Object), (status = 503, body = Problem))
)]
pub async fn list_workflows(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for w in registry::all(app.0.engine.store())? {
        by_name.entry(w.name.clone()).or_default().push(
            json!({"version": w.version, "sha256": w.sha256, "registered_at": w.registered_at}),
        );
    }
    let list: Vec<Value> = by_name
        .into_iter()
        .map(|(name, versions)| {
            let latest = versions.last().map(|v| v["version"].clone());
            json!({"name": name, "latest_version": latest, "versions": versions})
        })
        .collect();
    Ok(Json(json!({"workflows": list})))
}

/// `POST /v1/upgrade-check` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeCheck {
    /// The new definition: a JSON object, or YAML/JSON text.
    #[schema(value_type = Object)]
    pub workflow: Value,
    /// Runs to check (ids or prefixes; default: every run of the workflow).
    #[serde(default)]
    pub runs: Vec<String>,
    /// Every run of this workflow (default: the definition's `name`).
    pub workflow_name: Option<String>,
}

/// Would recorded runs have been decided the same under a new definition?
/// (the `upgrade-check --json` object)
#[utoipa::path(
    post, path = "/v1/upgrade-check", tag = "audit",
    request_body = UpgradeCheck,
    responses((status = 200, description = "`{compatible, workflow, workflow_sha256, runs: [verdict]}`", body = Object), (status = 400, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem))
)]
pub async fn upgrade_check(
    State(app): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, Problem> {
    let req: UpgradeCheck = json_body(&body)?;
    let new = parse_workflow(&req.workflow)?;
    let ids = req
        .runs
        .iter()
        .map(|r| app.resolve(r))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = app.0.engine.clone();
    let name = req.workflow_name.clone();
    tokio::task::spawn_blocking(move || ops::upgrade_report(&engine, &new, &ids, name.as_deref()))
        .await
        .map_err(|e| Problem::storage(format!("the check stopped: {e}")))?
        .map(Json)
}

/// Every agent: skills, concurrency, the workflows that declare it, its
/// circuit, attempts running on it, its last transitions (the
/// `agents --json` object).
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "`{agents: [{name, skills, concurrency, workflows, circuit: {state, failures, open_until}, load, recent}]}`", body = Object), (status = 503, body = Problem))
)]
pub async fn list_agents(State(app): State<AppState>) -> Result<Json<Value>, Problem> {
    let engine = app.0.engine.clone();
    tokio::task::spawn_blocking(move || ops::agents(&engine))
        .await
        .map_err(|e| Problem::storage(format!("the listing stopped: {e}")))?
        .map(Json)
}

use registry::WorkflowVersion;
