//! Waiting steps from outside: signals and approvals.

use super::*;

use chronicle_engine::event::ApprovalDecision;

/// `POST /v1/runs/{id}/signals/{name}` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSignal {
    /// The signal's data: the output of the `signal` step that consumes
    /// it (default null).
    #[schema(value_type = Object)]
    pub data: Option<Value>,
    /// An id for the signal: a repeat with the same id is not recorded
    /// again (default: one drawn by the server).
    pub id: Option<String>,
}

/// `POST /v1/runs/{id}/steps/{step}/approval` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideApproval {
    /// Who decides (must be listed in the step's `approvers` when it lists
    /// any).
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// A comment (recorded).
    pub comment: Option<String>,
}

/// Send a signal to a run: recorded (`SignalReceived`) and consumed by a
/// `signal` step of that name — now, or when one waits (signals are
/// buffered in order). A repeated `id` is recorded once.
#[utoipa::path(
    post, path = "/v1/runs/{id}/signals/{name}", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix"), ("name" = String, Path, description = "The signal's name")),
    request_body(content = SendSignal, description = "Optional"),
    responses(
        (status = 202, description = "`{run_id, name, id, recorded: true}`", body = Object),
        (status = 200, description = "`{run_id, name, id, recorded: false}`: that id was already recorded", body = Object),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem)
    )
)]
pub async fn send_signal(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Response, Problem> {
    let req: SendSignal = json_body(&body)?;
    ops::check_name("the signal's name", &name)?;
    let signal_id = match req.id {
        Some(i) => {
            ops::check_name("the signal's id", &i)?;
            i
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    let run = app.resolve(&id)?;
    let recorded = app
        .engine()
        .signal(run, &name, &signal_id, req.data.unwrap_or(Value::Null))
        .await?;
    let status = if recorded {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"run_id": run, "name": name, "id": signal_id, "recorded": recorded})),
    )
        .into_response())
}

/// Approve or reject an `approval` step. Only a listed approver's
/// decision is recorded (`ApprovalDecided`: who, what, when, comment);
/// enough approvals succeed the step, a rejection fails it.
#[utoipa::path(
    post, path = "/v1/runs/{id}/steps/{step}/approval", tag = "control",
    params(("id" = String, Path, description = "Run id or unique prefix"), ("step" = String, Path, description = "The approval step")),
    request_body = DecideApproval,
    responses(
        (status = 200, description = "The run's status object", body = Object),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "`not_approver` (not listed: nothing recorded), `not_waiting` (the step does not wait for an approval), `not_applicable` (the run has ended)", body = Problem),
        (status = 503, body = Problem)
    )
)]
pub async fn decide_approval(
    State(app): State<AppState>,
    Path((id, step)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, Problem> {
    let req: DecideApproval = json_body(&body)?;
    ops::check_name("by", &req.by)?;
    let decision = match req.decision.as_str() {
        "approve" => ApprovalDecision::Approve,
        "reject" => ApprovalDecision::Reject,
        other => {
            return Err(Problem::bad_request(format!(
                "decision {other:?} must be approve or reject"
            )));
        }
    };
    let run = app.resolve(&id)?;
    app.engine()
        .approval(run, &step, &req.by, decision, req.comment)
        .await?;
    Ok(Json(ops::status(app.engine().store(), run)?.1))
}

/// Complete a `completion: callback` step: the token in the URL (drawn
/// for one attempt, only its SHA-256 is stored) names the step; the JSON
/// body becomes its output. No bearer token: the one-time token is the
/// credential. With a `callback_secret`, `Chronicle-Signature: sha256=HEX`
/// (HMAC-SHA256 of the body) must verify.
#[utoipa::path(
    post, path = "/v1/callbacks/{token}", tag = "control",
    security(()),
    params(("token" = String, Path, description = "The one-time token from Chronicle-Callback-Url")),
    request_body(content = Object, description = "The result: the step's output (JSON)"),
    responses(
        (status = 200, description = "`{run_id, step}`: the step succeeded with the body", body = Object),
        (status = 400, body = Problem),
        (status = 401, description = "`bad_signature`", body = Problem),
        (status = 404, description = "`unknown_callback`: never issued", body = Problem),
        (status = 409, description = "`callback_done`: used already, timed out, or the run moved on", body = Problem),
        (status = 503, body = Problem)
    )
)]
pub async fn receive_callback(
    State(app): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, Problem> {
    if token.is_empty() || token.len() > 128 || !token.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(chronicle_engine::runtime::EngineError::UnknownCallback.into());
    }
    let output: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Problem::bad_request(format!("the callback's body must be JSON: {e}")))?
    };
    let signature = headers
        .get("chronicle-signature")
        .and_then(|v| v.to_str().ok());
    let (run, step) = app
        .engine()
        .callback(&token, output, &body, signature)
        .await?;
    Ok(Json(json!({"run_id": run, "step": step})))
}
