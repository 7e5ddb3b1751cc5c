//! Registered workflows: `PUT`/`GET /v1/workflows`.

use super::*;
use crate::registry::WorkflowVersion;

/// `GET /v1/workflows/{name}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A version (default: the latest).
    pub version: Option<u32>,
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
