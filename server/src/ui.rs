//! The web UI: plain HTML, CSS and JavaScript embedded in the binary
//! (`server/ui/`, served under `/ui/`), reading only the public `/v1` API
//! with the session cookie `/login` sets.
//!
//! Pages (deep-linkable, all the same shell; the script renders by path):
//! `/` runs, `/runs/{id}[?at=SEQ]` one run and time travel, `/verify`,
//! `/agents`. Without a valid session every page redirects to
//! `/login?next=PATH`.

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};
use serde::Deserialize;

use crate::auth::{self, Auth};

static ASSETS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/ui");

/// The UI's routes: the pages, `/login`, `/logout` and `/ui/*` assets.
pub fn routes<S: Clone + Send + Sync + 'static>(auth: Auth) -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/runs/{id}", get(page))
        .route("/verify", get(page))
        .route("/agents", get(page))
        .route("/login", get(login_get).post(login_post))
        .route("/logout", get(logout))
        .route("/ui/{*path}", get(asset))
        .with_state(auth)
}

/// `/login` query and form.
#[derive(Debug, Default, Deserialize)]
pub struct Login {
    /// The API token.
    token: Option<String>,
    /// Where to go once signed in: a local path (default `/`).
    next: Option<String>,
}

/// `next` if it is a path on this server (`/…`, not `//host` nor
/// `/\host`, no scheme, no control characters), else `/`.
pub fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.chars().any(|c| c.is_control() || c == '\\') =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn page(State(auth): State<Auth>, req: Request) -> Response {
    if auth.session(req.headers()).is_none() {
        let here = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let to = format!("/login?next={}", crate::client::percent_encode(&here));
        return Redirect::to(&to).into_response();
    }
    let Some(shell) = ASSETS.get_file("index.html") else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    no_store(Html(shell.contents()).into_response())
}

/// The page's policy: only this server's scripts, styles and requests;
/// never framed (clickjacking); the sign-in link's token never leaves in a
/// `Referer`.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn guarded(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    guarded(r)
}

async fn login_get(State(auth): State<Auth>, Query(q): Query<Login>) -> Response {
    sign_in(&auth, q)
}

async fn login_post(State(auth): State<Auth>, axum::Form(q): axum::Form<Login>) -> Response {
    sign_in(&auth, q)
}

fn sign_in(auth: &Auth, q: Login) -> Response {
    let next = local_path(q.next.as_deref());
    let Some(given) = q.token.filter(|t| !t.is_empty()) else {
        return form(&next, None, StatusCode::OK);
    };
    if !auth::authorized(Some(format!("Bearer {given}").as_bytes()), &auth.token) {
        return form(
            &next,
            Some(
                "That token is not this server's. Use the link `chronicle serve` printed, or the file DB-token beside the database.",
            ),
            StatusCode::UNAUTHORIZED,
        );
    }
    let expiry = auth.now() + auth::SESSION_TTL_S;
    let session = auth::session_value(&auth.token, expiry);
    let csrf = auth::csrf_value(&auth.token, expiry);
    let mut r = Redirect::to(&next).into_response();
    let h = r.headers_mut();
    for c in [
        format!(
            "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            auth::SESSION_COOKIE,
            auth::SESSION_TTL_S
        ),
        format!(
            "{}={csrf}; Path=/; SameSite=Strict; Max-Age={}",
            auth::CSRF_COOKIE,
            auth::SESSION_TTL_S
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    no_store(r)
}

async fn logout() -> Response {
    let mut r = Redirect::to("/login").into_response();
    for name in [auth::SESSION_COOKIE, auth::CSRF_COOKIE] {
        if let Ok(v) =
            HeaderValue::from_str(&format!("{name}=; Path=/; SameSite=Strict; Max-Age=0"))
        {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// The sign-in form (for a visitor without a session or with a wrong token).
fn form(next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · Chronicle</title><link rel="stylesheet" href="/ui/app.css"></head>
<body class="login"><main>
<h1>Chronicle</h1>
<p>Sign in with the link <code>chronicle serve</code> printed, or paste the API token (<code>CHRONICLE_TOKEN</code>, or the file <code>DB-token</code> beside the database).</p>
{error}
<form method="post" action="/login" id="login-form">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
</form></main></body></html>"#,
        next = escape(next),
    );
    no_store((status, Html(body)).into_response())
}

async fn asset(Path(path): Path<String>) -> Response {
    let Some(file) = ASSETS.get_file(&path) else {
        return crate::Problem::new(StatusCode::NOT_FOUND, "not_found", "no such asset")
            .into_response();
    };
    let kind = match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    guarded(
        (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            file.contents(),
        )
            .into_response(),
    )
}

/// HTML-escape `s` for text and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_kept_only_when_it_is_a_local_path() {
        assert_eq!(local_path(Some("/runs/abc?at=3")), "/runs/abc?at=3");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/a\nb")), "/");
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn the_shell_and_its_assets_are_embedded() {
        for f in ["index.html", "app.js", "app.css"] {
            assert!(ASSETS.get_file(f).is_some(), "{f} is embedded");
        }
    }
}
