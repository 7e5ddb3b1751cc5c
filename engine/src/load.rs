//! Reading workflow files: the runtime reads the file, the core parses the
//! text ([`chronicle_core::model::parse_definition`]).

use std::path::Path;

use chronicle_core::model::{DefinitionError, Workflow, parse_definition};

/// Largest workflow file read, bytes (16 MiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Read and validate the definition in `path` (`.yaml`/`.yml` or `.json`).
///
/// Errors: [`DefinitionError`] for an unreadable file, a file over
/// [`MAX_FILE_BYTES`], a syntax error, an unknown field or any validation
/// rule (see [`chronicle_core::model::validate`]).
pub fn load_file(path: &Path) -> Result<Workflow, DefinitionError> {
    load_file_with(path, None)
}

/// Look up a registered workflow by name: its latest version.
pub type Registered<'a> = &'a dyn Fn(&str) -> Result<Workflow, String>;

/// [`load_file`] with `registered` to pin `workflow_name:` children.
///
/// Errors: as [`load_file`]; a `workflow_name` the lookup does not find
/// (or no lookup given).
pub fn load_file_with(
    path: &Path,
    registered: Option<Registered<'_>>,
) -> Result<Workflow, DefinitionError> {
    let mut wf = load_plain(path)?;
    embed_children_with(&mut wf, &path.display().to_string(), 0, registered)?;
    Ok(wf)
}

/// Deepest nesting of child workflows (a workflow that includes itself
/// stops here with an error).
pub const MAX_CHILD_DEPTH: usize = 8;

/// Read each `workflow: FILE` step's definition (relative to the working
/// directory) into its `child`, recursively, so the parent's definition —
/// recorded whole in `RunCreated` — pins its children too. `file` names
/// the parent in errors.
///
/// Errors: [`DefinitionError`] naming the step and the child's file when
/// it cannot be read or is not valid, or nesting past
/// [`MAX_CHILD_DEPTH`].
pub fn embed_children(wf: &mut Workflow, file: &str, depth: usize) -> Result<(), DefinitionError> {
    embed_children_with(wf, file, depth, None)
}

/// [`embed_children`], pinning `workflow_name:` children with `registered`.
///
/// Without `registered`, `workflow_name:` steps are left as they are (the
/// server that receives the definition pins them).
///
/// Errors: as [`embed_children`]; a name `registered` does not find.
pub fn embed_children_with(
    wf: &mut Workflow,
    file: &str,
    depth: usize,
    registered: Option<Registered<'_>>,
) -> Result<(), DefinitionError> {
    for step in &mut wf.steps {
        // Pinned already (a client read the file beside itself): kept.
        if step.child.is_some() {
            continue;
        }
        if let Some(name) = step.workflow_name.clone() {
            let at = |message: String| DefinitionError {
                file: file.to_string(),
                step: Some(step.id.to_string()),
                line: None,
                column: None,
                message,
            };
            if depth >= MAX_CHILD_DEPTH {
                return Err(at(format!(
                    "child workflows nest deeper than {MAX_CHILD_DEPTH} (does {name} include itself?)"
                )));
            }
            // Without a lookup (a client that sends the definition to a
            // server, `validate`) the child is left for whoever submits it.
            let Some(lookup) = registered else {
                continue;
            };
            let mut child = lookup(&name).map_err(|e| at(format!("workflow_name {name}: {e}")))?;
            embed_children_with(&mut child, &name, depth + 1, Some(lookup))?;
            step.child = Some(std::sync::Arc::new(child));
            continue;
        }
        let Some(path) = step.workflow.clone() else {
            continue;
        };
        let at = |message: String| DefinitionError {
            file: file.to_string(),
            step: Some(step.id.to_string()),
            line: None,
            column: None,
            message,
        };
        if depth >= MAX_CHILD_DEPTH {
            return Err(at(format!(
                "child workflows nest deeper than {MAX_CHILD_DEPTH} (does {path} include itself?)"
            )));
        }
        let mut child =
            load_plain(Path::new(&path)).map_err(|e| at(format!("child workflow: {e}")))?;
        embed_children_with(&mut child, &path, depth + 1, registered)?;
        step.child = Some(std::sync::Arc::new(child));
    }
    Ok(())
}

fn load_plain(path: &Path) -> Result<Workflow, DefinitionError> {
    let file = path.display().to_string();
    let unreadable = |e: std::io::Error| {
        DefinitionError::file(&file, format!("cannot read the workflow file: {e}"))
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.len() > MAX_FILE_BYTES {
        let msg = format!("the file is {} bytes; the limit is 16 MiB", meta.len());
        return Err(DefinitionError::file(&file, msg));
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    parse_definition(&file, &text)
}
