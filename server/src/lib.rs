//! Chronicle's HTTP API: `chronicle serve` owns a database, executes runs
//! and serves `/v1` (JSON; errors as RFC 9457 problems), `/healthz`,
//! `/readyz` and `/openapi.json`; [`client::Client`] is how the CLI and
//! the API benchmark talk to it.
//!
//! The operations behind each route ([`ops`]) are the ones the CLI runs
//! on a file, so a command prints and exits alike with or without a
//! server.

pub mod api;
pub mod auth;
pub mod client;
pub mod diff;
pub mod discovery;
pub mod metrics;
pub mod ops;
pub mod problem;
pub mod registry;
pub mod sse;
pub mod ui;

pub use reqwest::Method;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chronicle_engine::runtime::Engine;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

pub use api::AppState;
pub use discovery::Discovery;
pub use problem::Problem;

/// How `chronicle serve` runs. Sizes in bytes, durations as given.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:7700` by default; port 0 picks one).
    pub listen: SocketAddr,
    /// Graceful shutdown: how long running attempts may go on after
    /// SIGINT/SIGTERM before they are killed and recorded (default 30 s).
    pub grace: Duration,
    /// Largest request body (default 8 MiB).
    pub body_limit: usize,
    /// Longest time a request (other than an event stream) may take
    /// (default 90 s; `?wait=` is cut to 60 s).
    pub request_timeout: Duration,
    /// Event streams open at once (default 256); more get 503.
    pub max_streams: usize,
    /// Events buffered per stream client before it is dropped as too slow
    /// (default 1024).
    pub sse_buffer: usize,
    /// TLS certificate and key files (PEM), or plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The bearer token `/metrics` needs when the server listens beyond
    /// loopback (default: the API token). On loopback `/metrics` is open.
    pub metrics_token: Option<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            grace: Duration::from_secs(30),
            body_limit: 8 << 20,
            request_timeout: Duration::from_secs(90),
            max_streams: 256,
            sse_buffer: 1024,
            tls: None,
            metrics_token: None,
        }
    }
}

/// What a server did when it stopped.
#[derive(Debug, Default)]
pub struct ServeReport {
    /// Attempts still running when the grace period ended (killed and
    /// recorded as abandoned by the stop).
    pub attempts_cut: usize,
}

/// Errors of [`serve`]: the message names what failed (exit 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(pub String);

/// The whole HTTP application over `state`, checking `token` (or the web
/// UI's session cookie) on `/v1`, with the UI's pages beside it.
pub fn app(state: AppState, token: String, options: &ServeOptions) -> axum::Router {
    let auth = auth::Auth {
        token: Arc::new(token),
        clock: state.engine().clock().clone(),
    };
    let (v1, openapi) = api::v1_routes();
    let openapi = Arc::new(openapi);
    let v1 = v1
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_ready,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require_token,
        ));
    // The timeout covers a request until its response starts (reading
    // the body included), not a streamed body: an event stream lasts as
    // long as its run.
    let timeout = tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        options.request_timeout,
    );
    let timed = axum::Router::new()
        .merge(v1)
        .merge(ui::routes(auth))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(readyz))
        .route(
            "/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { Json((*doc).clone()) }
            }),
        );
    timed
        .layer(timeout)
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route (see /openapi.json)",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(options.body_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    // The route's pattern, not the raw path: run ids stay
                    // out of span names and cardinality stays bounded.
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_else(|| "unmatched".into());
                    tracing::info_span!("request", method = %req.method(), route, status = tracing::field::Empty, latency_ms = tracing::field::Empty)
                })
                .on_response(
                    |resp: &axum::http::Response<_>, latency: Duration, span: &tracing::Span| {
                        span.record("status", resp.status().as_u16());
                        span.record("latency_ms", latency.as_secs_f64() * 1000.0);
                        tracing::info!(status = resp.status().as_u16(), latency_ms = latency.as_secs_f64() * 1000.0, "answered");
                    },
                ),
        )
        .with_state(state)
}

async fn require_ready(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if app.0.ready.load(std::sync::atomic::Ordering::SeqCst) {
        next.run(req).await
    } else {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is recovering the runs it found at start; retry shortly",
        )
        .into_response()
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> Response {
    if app.0.ready.load(std::sync::atomic::Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "recovering"})),
        )
            .into_response()
    }
}

/// Run a server over `engine` (opened on `db`) until `stop` resolves with
/// the reason (`"SIGTERM"`), then shut down gracefully: stop accepting,
/// end event streams and long polls, let running attempts finish for up
/// to `grace`, kill and record the rest ([`Engine::drain`]), and remove
/// the discovery file. `on_listening` gets the base URL once the socket
/// is bound (before recovery: `/readyz` says when that is done).
///
/// Errors: the token file, the socket, the TLS files or the discovery
/// file (each message names it).
pub async fn serve(
    engine: Engine,
    db: &Path,
    options: ServeOptions,
    on_listening: impl FnOnce(&str),
    stop: impl std::future::Future<Output = String>,
) -> Result<ServeReport, ServeError> {
    let token = auth::load_or_create_token(db).map_err(ServeError)?;
    let listener = std::net::TcpListener::bind(options.listen)
        .map_err(|e| ServeError(format!("cannot listen on {}: {e}", options.listen)))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServeError(format!("cannot listen on {}: {e}", options.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError(format!("cannot read the bound address: {e}")))?;
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}");
    // Where `completion: callback` steps tell services to call back: this
    // server (on a wildcard address, through loopback).
    let reachable = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    engine.set_callback_base(&format!("{scheme}://{reachable}"));
    if !addr.ip().is_loopback() && options.tls.is_none() {
        tracing::warn!(
            %addr,
            "listening beyond this machine over plain HTTP: the bearer token and every request travel unencrypted; give --tls-cert and --tls-key"
        );
    }
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_config(cert, key)?),
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    metrics::install();
    let metrics_access = if addr.ip().is_loopback() {
        metrics::MetricsAccess::Open
    } else {
        metrics::MetricsAccess::Token(Arc::new(
            options
                .metrics_token
                .clone()
                .unwrap_or_else(|| token.clone()),
        ))
    };
    let state = AppState::new(
        engine.clone(),
        options.max_streams,
        options.sse_buffer,
        shutdown_rx,
        metrics_access,
    );
    let router = app(state.clone(), token, &options);
    let handle = axum_server::Handle::new();
    let server = {
        let handle = handle.clone();
        let make = router.into_make_service();
        match tls {
            Some(cfg) => tokio::spawn(async move {
                axum_server::from_tcp_rustls(listener, cfg)?
                    .handle(handle)
                    .serve(make)
                    .await
            }),
            None => tokio::spawn(async move {
                axum_server::from_tcp(listener)?
                    .handle(handle)
                    .serve(make)
                    .await
            }),
        }
    };
    Discovery {
        url: url.clone(),
        pid: std::process::id(),
        started_at: engine.clock().peek().to_rfc3339(),
        tls_cert: options
            .tls
            .as_ref()
            .map(|(c, _)| std::path::absolute(c).unwrap_or(c.clone())),
    }
    .write(db)
    .map_err(ServeError)?;
    on_listening(&url);
    // Recover what a previous process left, then answer /v1.
    let recovery = {
        let (engine, state) = (engine.clone(), state.clone());
        tokio::spawn(async move {
            match engine.recover_runs(None).await {
                Ok(r) => {
                    tracing::info!(
                        continued = r.resumed.len(),
                        abandoned = r.attempts_abandoned,
                        quarantined = r.quarantined.len(),
                        "recovery done"
                    );
                    state.set_ready(true);
                    // On a shared database: claim and execute runs as a
                    // worker (nothing when started with --no-worker).
                    let worker = WorkerGuard(engine.spawn_worker());
                    // Fire due schedules, every second, until shutdown.
                    let mut shutdown = state.0.shutdown.clone();
                    loop {
                        if let Err(e) = engine.fire_due_schedules(engine.clock().peek()).await {
                            tracing::error!(error = %e, "cannot fire schedules");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.wait_for(|s| *s) => break,
                        }
                    }
                    // No longer claiming: no offer names this process.
                    drop(worker);
                    engine.unregister_worker().await;
                }
                Err(e) => tracing::error!(error = %e, "recovery failed: /v1 stays unavailable"),
            }
        })
    };
    let reason = tokio::select! {
        r = stop => r,
        r = wait_server_end(&server) => {
            Discovery::remove(db);
            return Err(ServeError(format!("the server stopped: {r}")));
        }
    };
    tracing::info!(
        reason,
        grace_s = options.grace.as_secs_f64(),
        "shutting down"
    );
    let _ = shutdown_tx.send(true);
    handle.graceful_shutdown(Some(options.grace));
    recovery.abort();
    let cut = engine
        .drain(
            options.grace,
            &format!("the server was stopped by {reason}; the attempt's process group was killed after the grace period"),
        )
        .await;
    let _ = server.await;
    Discovery::remove(db);
    Ok(ServeReport { attempts_cut: cut })
}

async fn wait_server_end(server: &tokio::task::JoinHandle<std::io::Result<()>>) -> String {
    while !server.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    "the listener failed".into()
}

fn tls_config(
    cert: &Path,
    key: &Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ServeError(format!(
                "cannot read the certificate {}: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ServeError(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ServeError(format!(
            "cannot read the private key {}: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError(format!("TLS certificate and key do not fit: {e}")))?;
    Ok(axum_server::tls_rustls::RustlsConfig::from_config(
        Arc::new(config),
    ))
}

/// Aborts the worker loop when the server's background task ends.
struct WorkerGuard(tokio::task::JoinHandle<()>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
