//! Registered workflows: `PUT /v1/workflows/{name}` keeps every version of
//! a definition in the store's index `workflows` (key `NAME/VERSION`, the
//! version zero-padded to 8 digits so keys sort by version). A run started
//! from a registered workflow carries the whole definition in its
//! `RunCreated` event, so it keeps the version it started with whatever is
//! registered later.

use chronicle_engine::model::{Workflow, parse_definition};
use chronicle_store::{IndexOp, Store, WriteRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::problem::Problem;

/// The index holding registered definitions.
pub const WORKFLOWS_INDEX: &str = "workflows";

/// One registered version.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkflowVersion {
    /// The workflow's name.
    pub name: String,
    /// Version, from 1.
    pub version: u32,
    /// SHA-256 of the definition's canonical JSON.
    pub sha256: String,
    /// When it was registered (RFC 3339, the store's clock).
    pub registered_at: String,
    /// The definition (as `chronicle schema` describes it).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

/// Check a workflow name for use in a URL and as an index key.
/// Errors: 400 naming the allowed characters.
pub fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "workflow name {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."
        )))
    }
}

fn key(name: &str, version: u32) -> String {
    format!("{name}/{version:08}")
}

/// Every version of `name`, oldest first.
pub fn versions(store: &Store, name: &str) -> Result<Vec<WorkflowVersion>, Problem> {
    store
        .index_scan(WORKFLOWS_INDEX, &format!("{name}/"))?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|e| {
                Problem::storage(format!("registered workflow {k} is unreadable: {e}"))
            })
        })
        .collect()
}

/// Every registered version of every workflow, by name then version.
pub fn all(store: &Store) -> Result<Vec<WorkflowVersion>, Problem> {
    store
        .index_scan(WORKFLOWS_INDEX, "")?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|e| {
                Problem::storage(format!("registered workflow {k} is unreadable: {e}"))
            })
        })
        .collect()
}

/// The definition of `name` at `version` (the latest when None), parsed
/// and validated again.
///
/// Errors: 404 `unknown_workflow`; 503 when the stored definition no
/// longer validates.
pub fn get(
    store: &Store,
    name: &str,
    version: Option<u32>,
) -> Result<(Workflow, WorkflowVersion), Problem> {
    check_name(name)?;
    let all = versions(store, name)?;
    let found = match version {
        Some(v) => all.into_iter().find(|w| w.version == v),
        None => all.into_iter().last(),
    };
    let Some(w) = found else {
        let which = version.map(|v| format!(" version {v}")).unwrap_or_default();
        return Err(Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "unknown_workflow",
            format!(
                "no registered workflow {name}{which} (PUT /v1/workflows/{name} registers one)"
            ),
        ));
    };
    let text = serde_json::to_string(&w.definition).expect("plain data serializes");
    let wf = parse_definition(&format!("{name}.json"), &text)
        .map_err(|e| Problem::storage(format!("registered workflow {name} v{}: {e}", w.version)))?;
    Ok((wf, w))
}

/// Register `wf` under `name`: a new version unless the latest has the
/// same definition. Returns the version and whether it is new. The caller
/// serializes registrations (one at a time per server).
///
/// Errors: 422 when the definition's `name` is not `name`; storage errors.
pub async fn register(
    store: &Store,
    name: &str,
    wf: &Workflow,
) -> Result<(WorkflowVersion, bool), Problem> {
    check_name(name)?;
    if wf.name != name {
        return Err(Problem::invalid_input(format!(
            "the definition is named {:?} but is registered as {name:?}: the names must agree",
            wf.name
        )));
    }
    let sha = wf.sha256();
    let existing = versions(store, name)?;
    if let Some(last) = existing.last()
        && last.sha256 == sha
    {
        return Ok((last.clone(), false));
    }
    let version = existing.last().map(|w| w.version + 1).unwrap_or(1);
    let entry = WorkflowVersion {
        name: name.to_string(),
        version,
        sha256: sha,
        registered_at: store.clock().peek().to_rfc3339(),
        definition: serde_json::to_value(wf).expect("a workflow serializes"),
    };
    let req = WriteRequest {
        index: vec![IndexOp::Insert {
            index: WORKFLOWS_INDEX.into(),
            key: key(name, version),
            value: serde_json::to_vec(&entry).expect("plain data serializes"),
        }],
        ..Default::default()
    };
    store.write(req).await?;
    Ok((entry, true))
}

/// The latest registered definition of `name`, for pinning
/// `workflow_name:` children (`chronicle_engine::load::Registered`).
///
/// Errors: the problem's text (unknown workflow, storage).
pub fn latest(store: &Store, name: &str) -> Result<Workflow, String> {
    get(store, name, None).map(|(w, _)| w).map_err(|p| p.detail)
}
