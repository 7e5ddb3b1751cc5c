//! The API token: from `CHRONICLE_TOKEN`, or generated once (32 random
//! bytes, hex) into `DB-token` with mode 0600; every `/v1` request must
//! carry it as `Authorization: Bearer TOKEN`, compared in constant time,
//! or the web UI's session cookie (set by `/login?token=TOKEN`; an HMAC
//! of its expiry keyed by the token) with, for a state-changing request,
//! the session's CSRF token in `X-CSRF-Token` (double-submit: the page
//! reads it from the `chronicle_csrf` cookie).

use std::io::Write;
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// A token drawn for this process (a server on a shared database with no
/// `CHRONICLE_TOKEN`): kept in memory only.
static DRAWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// True when `db` is a shared database (a `postgres://` URL): no files
/// beside it.
pub fn is_shared(db: &Path) -> bool {
    db.to_str().is_some_and(chronicle_store::is_postgres_url)
}

/// The token the server checks: `CHRONICLE_TOKEN` when set (not empty),
/// else the content of `DB-token`, created at first start. On a shared
/// database (PostgreSQL) there is no file: without `CHRONICLE_TOKEN` a
/// token is drawn for this process (printed in the sign-in link; give
/// every server of one database the same `CHRONICLE_TOKEN` instead).
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
    if is_shared(db) {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("cannot draw a random token: {e}"))?;
        return Ok(DRAWN.get_or_init(|| chronicle_store::hex(&bytes)).clone());
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
    let token = chronicle_store::hex(&bytes);
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
    if is_shared(db) {
        return DRAWN.get().cloned();
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

/// Name of the session cookie `/login` sets (`HttpOnly`, `SameSite=Strict`).
pub const SESSION_COOKIE: &str = "chronicle_session";
/// Name of the cookie that carries the CSRF token to the page's scripts
/// (readable by them; `SameSite=Strict`).
pub const CSRF_COOKIE: &str = "chronicle_csrf";
/// Header a state-changing request signed in by cookie must carry, with
/// the value of the [`CSRF_COOKIE`] cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts, seconds (12 hours).
pub const SESSION_TTL_S: i64 = 12 * 3600;

/// HMAC-SHA256 keyed by the API token over `purpose` and `expiry`, hex.
fn mac(token: &str, purpose: &str, expiry: i64) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC takes a key of any length");
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(expiry.to_string().as_bytes());
    chronicle_store::hex(&m.finalize().into_bytes())
}

/// A session cookie value valid until `expiry` (Unix seconds):
/// `EXPIRY.MAC`, where MAC is an HMAC of the expiry keyed by the API
/// token. Nothing is stored on the server; changing the token ends every
/// session.
pub fn session_value(token: &str, expiry: i64) -> String {
    format!("{expiry}.{}", mac(token, "chronicle-session", expiry))
}

/// The CSRF token of the session that expires at `expiry`.
pub fn csrf_value(token: &str, expiry: i64) -> String {
    mac(token, "chronicle-csrf", expiry)
}

/// The expiry of a valid, unexpired session cookie value (`now` in Unix
/// seconds); None for a forged, damaged or expired one.
pub fn check_session(token: &str, value: &str, now: i64) -> Option<i64> {
    let (expiry, _) = value.split_once('.')?;
    let expiry: i64 = expiry.parse().ok()?;
    let good: bool = value
        .as_bytes()
        .ct_eq(session_value(token, expiry).as_bytes())
        .into();
    (good && expiry > now).then_some(expiry)
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What `/v1` and the pages check: the API token, and the clock that
/// dates sessions.
#[derive(Clone)]
pub struct Auth {
    /// The API token.
    pub token: std::sync::Arc<String>,
    /// The server's clock (sessions expire by it).
    pub clock: std::sync::Arc<dyn chronicle_store::Clock>,
}

impl Auth {
    /// Now, Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.peek().timestamp()
    }

    /// The expiry of the request's valid session cookie, if any.
    pub fn session(&self, headers: &axum::http::HeaderMap) -> Option<i64> {
        check_session(&self.token, cookie(headers, SESSION_COOKIE)?, self.now())
    }
}

/// Middleware: let a request through with the bearer token, or with a
/// valid session cookie (and then, unless it is a GET or HEAD, with the
/// session's CSRF token in `X-CSRF-Token`). `POST /v1/callbacks/{token}`
/// passes as it is (its one-time token is checked by the handler). Else
/// 401 with
/// `WWW-Authenticate: Bearer`, or 403 `csrf` for a missing or wrong CSRF
/// token. Nothing about the request is revealed.
pub async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    // A callback carries its own one-time token in the URL (checked
    // against the stored hash by the handler).
    if req.uri().path().starts_with("/v1/callbacks/") && req.method() == axum::http::Method::POST {
        return next.run(req).await;
    }
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if authorized(h, &auth.token) {
        return next.run(req).await;
    }
    if let Some(expiry) = auth.session(req.headers()) {
        let safe = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        let csrf_ok: bool = req
            .headers()
            .get(CSRF_HEADER)
            .map(|v| {
                v.as_bytes()
                    .ct_eq(csrf_value(&auth.token, expiry).as_bytes())
                    .into()
            })
            .unwrap_or(false);
        if safe || csrf_ok {
            return next.run(req).await;
        }
        return Problem::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "a request signed in by the session cookie must carry the session's CSRF token in X-CSRF-Token (the chronicle_csrf cookie)",
        )
        .into_response();
    }
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token: send Authorization: Bearer TOKEN (CHRONICLE_TOKEN, or the file DB-token beside the database)",
    )
    .into_response()
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
    fn a_session_is_valid_until_it_expires_and_only_for_its_token() {
        let v = session_value("tok", 1_000);
        assert_eq!(check_session("tok", &v, 999), Some(1_000));
        assert_eq!(check_session("tok", &v, 1_000), None, "expired");
        assert_eq!(check_session("other", &v, 999), None, "another token");
        let forged = v.replacen("1000", "9000", 1);
        assert_eq!(check_session("tok", &forged, 999), None, "a moved expiry");
        assert_eq!(check_session("tok", "garbage", 0), None);
        assert_eq!(check_session("tok", "", 0), None);
        assert_ne!(csrf_value("tok", 1_000), session_value("tok", 1_000));
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
