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
