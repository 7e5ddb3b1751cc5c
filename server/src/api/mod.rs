//! The `/v1` routes and the OpenAPI document (generated from the
//! handlers' annotations by utoipa, so the document and the router cannot
//! disagree): the state every handler shares, the extractors, and the
//! handlers by subject — runs (`runs.rs`), registered workflows
//! (`workflows.rs`), audit and agents (`audit.rs`).

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

mod audit;
mod runs;
mod schedules;
mod waits;
mod workflows;

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
    pub(crate) fn registered(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(Workflow, u32), Problem> {
        let key = (name.to_string(), version);
        let cache = || self.0.definitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache().get(&key) {
            return Ok(hit.clone());
        }
        let (mut wf, v) = registry::get(self.0.engine.store(), name, version)?;
        // Its children (`workflow:` files, `workflow_name:` registered),
        // pinned now.
        let store = self.0.engine.store();
        let lookup = |n: &str| registry::latest(store, n);
        chronicle_engine::load::embed_children_with(&mut wf, name, 0, Some(&lookup))?;
        cache().insert(key, (wf.clone(), v.version));
        Ok((wf, v.version))
    }

    pub(crate) fn resolve(&self, id: &str) -> Result<RunId, Problem> {
        Ok(self.0.engine.resolve_run(id)?)
    }
}

/// The OpenAPI document's top.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chronicle",
        description = "Chronicle's HTTP API: submit, watch, control, audit and time-travel runs of durable workflows. Every /v1 route needs `Authorization: Bearer TOKEN` (or the web UI's session cookie, with `X-CSRF-Token` for a change). Errors are application/problem+json (RFC 9457).",
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
        .routes(routes!(runs::create_run, runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::run_events))
        .routes(routes!(crate::sse::run_events_stream))
        .routes(routes!(runs::run_state))
        .routes(routes!(runs::run_timeline))
        .routes(routes!(runs::run_attempts))
        .routes(routes!(crate::sse::changes_stream))
        .routes(routes!(runs::run_export))
        .routes(routes!(runs::import_run))
        .routes(routes!(audit::verify_all))
        .routes(routes!(audit::verify_run))
        .routes(routes!(runs::cancel_run))
        .routes(routes!(runs::pause_run))
        .routes(routes!(runs::resume_run))
        .routes(routes!(runs::release_run))
        .routes(routes!(runs::fork_run))
        .routes(routes!(waits::send_signal))
        .routes(routes!(waits::decide_approval))
        .routes(routes!(waits::receive_callback))
        .routes(routes!(
            schedules::create_schedule,
            schedules::list_schedules
        ))
        .routes(routes!(schedules::get_schedule, schedules::delete_schedule))
        .routes(routes!(schedules::pause_schedule))
        .routes(routes!(schedules::resume_schedule))
        .routes(routes!(schedules::trigger_schedule))
        .routes(routes!(workflows::put_workflow, workflows::get_workflow))
        .routes(routes!(workflows::list_workflows))
        .routes(routes!(audit::upgrade_check))
        .routes(routes!(audit::list_agents))
        .split_for_parts()
}

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
pub(crate) fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(format!("the body is not the JSON this route takes: {e}"))
    })
}

pub(crate) fn parse_workflow(
    def: &Value,
    store: &chronicle_store::Store,
) -> Result<Workflow, Problem> {
    let mut wf = parse_workflow_text(def)?;
    // `workflow: FILE` steps read their child's definition beside the
    // server (its working directory), as the CLI does beside itself;
    // `workflow_name: NAME` ones the latest registered version.
    let lookup = |name: &str| registry::latest(store, name);
    chronicle_engine::load::embed_children_with(&mut wf, "workflow", 0, Some(&lookup))?;
    Ok(wf)
}

fn parse_workflow_text(def: &Value) -> Result<Workflow, Problem> {
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

pub(crate) fn check_input(input: Option<Value>) -> Result<Value, Problem> {
    match input {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(Problem::invalid_input(
            "input must be a JSON object, like {\"file\": \"a.log\"}",
        )),
    }
}

pub(crate) fn created_response(run: RunId, status: StatusCode, mut body: Value) -> Response {
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
