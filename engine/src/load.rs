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
    let mut wf = load_plain(path)?;
    embed_children(&mut wf, &path.display().to_string(), 0)?;
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
    for step in &mut wf.steps {
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
        embed_children(&mut child, &path, depth + 1)?;
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
