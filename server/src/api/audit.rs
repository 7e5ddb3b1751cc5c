//! Audit and agents: verify, the upgrade check, the agents' view.

use super::*;

/// Verify every stream's hash chain and fold, and the commit journal.
#[utoipa::path(
    get, path = "/v1/verify", tag = "audit",
    responses((status = 200, description = "`{ok, streams, journal, journal_losses, backend}` (as `chronicle verify --json`)", body = Object), (status = 503, body = Problem))
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
    let new = parse_workflow(&req.workflow, app.engine().store())?;
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
