//! The API token: from `CHRONICLE_TOKEN`, or generated once (32 random
//! bytes, hex) into `DB-token` with mode 0600; every `/v1` request must
//! carry it as `Authorization: Bearer TOKEN`, compared in constant time.

use std::io::Write;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// The token the server checks: `CHRONICLE_TOKEN` when set (not empty),
/// else the content of `DB-token`, created at first start.
///
/// Errors: the token file cannot be read or created (its path and the
/// OS error in the message).
pub fn load_or_create_token(db: &Path) -> Result<String, String> {
    if let Some(t) = std::env::var("CHRONICLE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(t);
    }
    let path = chronicle_store::token_path(db);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ));
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("cannot draw a random token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| format!("cannot write the token file {}: {e}", path.display()))?;
    Ok(token)
}

/// The token a client uses for the database at `db`: `CHRONICLE_TOKEN`,
/// else `DB-token` (None when neither is there).
pub fn client_token(db: &Path) -> Option<String> {
    if let Some(t) = std::env::var("CHRONICLE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Some(t);
    }
    std::fs::read_to_string(chronicle_store::token_path(db))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether `header` (the `Authorization` value) carries `token`.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    given.ct_eq(token.as_bytes()).into()
}

/// Middleware: 401 with `WWW-Authenticate: Bearer` unless the request
/// carries the token. Nothing about the request is revealed.
pub async fn require_token(
    State(token): State<std::sync::Arc<String>>,
    req: Request,
    next: Next,
) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if authorized(h, &token) {
        next.run(req).await
    } else {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send Authorization: Bearer TOKEN (CHRONICLE_TOKEN, or the file DB-token beside the database)",
        )
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        assert!(authorized(Some(b"Bearer abc"), "abc"));
        assert!(!authorized(Some(b"Bearer abd"), "abc"));
        assert!(!authorized(Some(b"Bearer ab"), "abc"));
        assert!(!authorized(Some(b"bearer abc"), "abc"));
        assert!(!authorized(Some(b"abc"), "abc"));
        assert!(!authorized(None, "abc"));
    }

    #[test]
    fn a_generated_token_is_64_hex_characters_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.redb");
        // SAFETY of the test: CHRONICLE_TOKEN is not set in the test environment.
        if std::env::var_os("CHRONICLE_TOKEN").is_some() {
            return;
        }
        let t = load_or_create_token(&db).unwrap();
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        let meta = std::fs::metadata(chronicle_store::token_path(&db)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            load_or_create_token(&db).unwrap(),
            t,
            "the same token at the next start"
        );
    }
}
