//! Errors as `application/problem+json` (RFC 9457): a stable `code`, the
//! HTTP status, and the exit code the CLI gives the same error, so a
//! command prints and exits alike with or without a server.
//!
//! | status | code | CLI exit |
//! | --- | --- | --- |
//! | 400 | `bad_request`, `ambiguous_run`, `bad_history` | 2 |
//! | 401 | `unauthorized` | 2 |
//! | 404 | `unknown_run`, `unknown_workflow`, `not_found` | 2 |
//! | 409 | `not_applicable` | 2 |
//! | 413 | `body_too_large` | 2 |
//! | 422 | `invalid_workflow`, `invalid_input`, `missing_secrets`, `idempotency_key_reused` | 2 |
//! | 503 | `storage`, `not_ready`, `too_many_streams`, `stopped` | 3 |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chronicle_engine::model::DefinitionError;
use chronicle_engine::runtime::EngineError;
use chronicle_replay::ReplayError;
use chronicle_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of a problem.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One error answer (RFC 9457 problem details, with extension members).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema, thiserror::Error)]
#[error("{detail}")]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:chronicle:problem:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind (the same for every problem of a code).
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong in this case: the message the CLI prints.
    pub detail: String,
    /// Stable machine-readable code (table in the module docs).
    pub code: String,
    /// The CLI's exit code for the same error: 2 bad input, 3 storage.
    pub exit_code: u8,
    /// For `invalid_workflow`: where in the definition (members `step`,
    /// `line`, `column`, each when known).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub location: Option<Box<Location>>,
}

/// Where a definition problem is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Location {
    /// The step the problem belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// 1-based line in the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Problem {
    /// A problem of `code` with HTTP `status` and `detail`.
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        let exit_code = if status.is_server_error() { 3 } else { 2 };
        Self {
            kind: format!("urn:chronicle:problem:{code}"),
            title: title(code).to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            exit_code,
            location: None,
        }
    }
    /// 400 `bad_request`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    /// 422 `invalid_input`.
    pub fn invalid_input(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", detail)
    }
    /// 503 `storage`.
    pub fn storage(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage", detail)
    }
    /// 404 `unknown_run`.
    pub fn unknown_run(run: &str) -> Self {
        Self::from(EngineError::UnknownRun(run.to_string()))
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "bad_request" => "The request is malformed",
        "ambiguous_run" => "The run prefix matches several runs",
        "bad_history" => "The history is not a valid export",
        "unauthorized" => "A valid bearer token is required",
        "unknown_run" => "No such run",
        "unknown_workflow" => "No such registered workflow",
        "not_found" => "No such route",
        "not_applicable" => "The command does not apply to the run in its state",
        "body_too_large" => "The request body is over the limit",
        "invalid_workflow" => "The workflow definition is invalid",
        "invalid_input" => "The request is well-formed but its content is invalid",
        "missing_secrets" => "Secrets the workflow declares are not set on the server",
        "idempotency_key_reused" => "The idempotency key was used with a different request",
        "storage" => "The database cannot serve the request",
        "not_ready" => "The server is starting: recovery is not done",
        "too_many_streams" => "Too many event streams are open",
        "stopped" => "The run's executor stopped",
        "timeout" => "The request took too long",
        _ => "Error",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(&self)).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        if e.is_storage_problem() {
            Self::storage(e.to_string())
        } else {
            Self::bad_request(e.to_string())
        }
    }
}

impl From<DefinitionError> for Problem {
    fn from(e: DefinitionError) -> Self {
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            e.to_string(),
        );
        p.location = Some(Box::new(Location {
            step: e.step,
            line: e.line,
            column: e.column,
        }));
        p
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        let detail = e.to_string();
        match e {
            EngineError::Store(s) => s.into(),
            EngineError::UnknownRun(_) => Self::new(StatusCode::NOT_FOUND, "unknown_run", detail),
            EngineError::AmbiguousRun(..) => {
                Self::new(StatusCode::BAD_REQUEST, "ambiguous_run", detail)
            }
            EngineError::Rejected(chronicle_engine::decide::Rejected::NotApprover { .. }) => {
                Self::new(StatusCode::CONFLICT, "not_approver", detail)
            }
            EngineError::Schedule(_) => Self::new(StatusCode::BAD_REQUEST, "bad_schedule", detail),
            EngineError::UnknownSchedule(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_schedule", detail)
            }
            EngineError::UnknownCallback => {
                Self::new(StatusCode::NOT_FOUND, "unknown_callback", detail)
            }
            EngineError::BadSignature(_) => {
                Self::new(StatusCode::UNAUTHORIZED, "bad_signature", detail)
            }
            EngineError::Rejected(chronicle_engine::decide::Rejected::CallbackDone { .. }) => {
                Self::new(StatusCode::CONFLICT, "callback_done", detail)
            }
            EngineError::Rejected(chronicle_engine::decide::Rejected::NotWaiting { .. }) => {
                Self::new(StatusCode::CONFLICT, "not_waiting", detail)
            }
            EngineError::Rejected(_) => Self::new(StatusCode::CONFLICT, "not_applicable", detail),
            // Histories the engine folds are read from its database: one
            // that does not fold is a damaged log.
            EngineError::Transition(_) => Self::storage(detail),
            EngineError::MissingSecrets(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "missing_secrets", detail)
            }
            EngineError::IdempotencyKeyReused { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                detail,
            ),
            EngineError::Stopped(..) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", detail)
            }
        }
    }
}

impl From<ReplayError> for Problem {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Store(s) => s.into(),
            ReplayError::Engine(e) => e.into(),
            e @ ReplayError::Transition(_) => Self::storage(e.to_string()),
            e @ ReplayError::UnknownRun(_) => {
                Self::new(StatusCode::NOT_FOUND, "unknown_run", e.to_string())
            }
            e @ ReplayError::BadFile { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "bad_history", e.to_string())
            }
            other => Self::bad_request(other.to_string()),
        }
    }
}
