//! `GET /metrics`: the engine's and the store's metrics in the Prometheus
//! text format (metrics-exporter-prometheus renders what the `metrics`
//! facade recorded). The names and labels are listed in
//! `chronicle_engine::runtime::metrics` and `chronicle_store::metrics`.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::api::AppState;
use crate::problem::Problem;

/// Bucket bounds of the `*_seconds` histograms: 50 µs to 60 s.
const SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
    15.0, 60.0,
];
/// Bucket bounds of `chronicle_store_group_size` (requests per commit).
const GROUP: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process's Prometheus recorder (once) and turn recording on.
/// None when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    let handle = HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("chronicle_store_group_size".into()),
                    &GROUP,
                )
            })
            .ok()?;
        match builder.install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the metrics recorder: /metrics stays empty");
                None
            }
        }
    });
    if handle.is_some() {
        chronicle_store::metrics::set_enabled(true);
    }
    handle.as_ref()
}

/// Who may read `/metrics`.
#[derive(Clone, Debug)]
pub enum MetricsAccess {
    /// Anyone (the server listens on loopback only).
    Open,
    /// `Authorization: Bearer TOKEN` with this token.
    Token(std::sync::Arc<String>),
}

/// The metrics, as Prometheus text.
pub async fn metrics(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let MetricsAccess::Token(t) = &app.0.metrics_access {
        let h = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if !crate::auth::authorized(h, t) {
            return Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs Authorization: Bearer TOKEN (--metrics-token, or the API token) when the server listens beyond loopback",
            )
            .into_response();
        }
    }
    app.engine().record_gauges();
    let body = install().map(|h| h.render()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
