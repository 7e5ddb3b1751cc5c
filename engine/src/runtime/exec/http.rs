//! `http` steps: one request with reqwest. The body is the spec's `body`
//! (templates resolved) or else the step's input; the `Idempotency-Key`
//! header carries `RUN_ID:STEP_ID`, the same on every attempt. Connection
//! errors, 429 and 5xx are transient; other 4xx permanent (the step's
//! `retry_on.http_statuses` can refine this). A JSON response body is the
//! step's output; another body becomes `{"status": N, "body": TEXT}`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{AttemptFuture, AttemptRequest, Executor, OutputSink, failure};
use crate::decide::AttemptResult;
use crate::model::ErrorKind;

/// The HTTP client, built on the first `http` step, not before: building
/// one reads every root certificate of the system (147 files on the
/// development machine; a `chronicle run` of three `command` steps took
/// 16–18 ms with an eager client), and on a machine without CA
/// certificates building one fails — which must fail that step, not the
/// engine. Clones share the client and its connection pool.
#[derive(Clone, Debug, Default)]
pub struct LazyClient(Arc<OnceLock<Result<reqwest::Client, String>>>);

impl LazyClient {
    /// The client, built on the first call.
    ///
    /// Errors: why it cannot be built (e.g. no CA certificates), the same
    /// text on every call.
    pub fn get(&self) -> Result<reqwest::Client, String> {
        self.0
            .get_or_init(|| {
                reqwest::Client::builder().build().map_err(|e| {
                    // The builder's own text is "builder error": the cause
                    // is in its sources.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why = format!("{why}: {s}");
                        source = s.source();
                    }
                    format!(
                        "cannot start the HTTP client ({why}); install the system's CA certificates (Debian: ca-certificates) or point SSL_CERT_FILE at a bundle"
                    )
                })
            })
            .clone()
    }
}

/// Sends HTTP requests.
#[derive(Clone, Debug)]
pub struct HttpExecutor {
    /// Shared client, built when the first request is sent.
    pub client: LazyClient,
    /// Captured output handling.
    pub sink: OutputSink,
}

impl HttpExecutor {
    /// A new executor with its own client (built on first use).
    pub fn new(sink: OutputSink) -> Self {
        Self {
            client: LazyClient::default(),
            sink,
        }
    }
}

impl Executor for HttpExecutor {
    fn run(&self, req: AttemptRequest, kill: oneshot::Receiver<()>) -> AttemptFuture {
        let client = self.client.clone();
        let sink = self.sink.clone();
        Box::pin(async move {
            let started = Instant::now();
            let Some(spec) = req.exec.http.clone() else {
                return failure(ErrorKind::Permanent, "not an http step", 0);
            };
            let method =
                match reqwest::Method::from_bytes(spec.method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        return failure(
                            ErrorKind::Permanent,
                            format!("bad HTTP method {}", spec.method),
                            0,
                        );
                    }
                };
            let body = spec.body.clone().unwrap_or_else(|| req.input.clone());
            let client = match client.get() {
                Ok(c) => c,
                Err(e) => return failure(ErrorKind::Permanent, e, 0),
            };
            let mut rb = client
                .request(method, &spec.url)
                .header("Idempotency-Key", &req.idempotency_key)
                .header("X-Chronicle-Run-Id", req.run_id.to_string())
                .header("X-Chronicle-Attempt", req.attempt.to_string())
                .header(
                    "traceparent",
                    req.traceparent.as_deref().unwrap_or_default(),
                )
                .json(&body);
            for (k, v) in &spec.headers {
                rb = rb.header(k, v);
            }
            let send = async {
                let resp = rb.send().await?;
                let status = resp.status();
                let text = resp.text().await?;
                Ok::<_, reqwest::Error>((status, text))
            };
            let result = tokio::select! {
                r = send => r,
                _ = kill => return AttemptResult::Failed {
                    kind: ErrorKind::Canceled,
                    message: "killed: the request was aborted".into(),
                    exit_code: None,
                    http_status: None,
                    duration_ms: started.elapsed().as_millis() as u64,
                    stderr: None,
                },
            };
            let duration_ms = started.elapsed().as_millis() as u64;
            match result {
                Err(e) => failure(
                    ErrorKind::Transient,
                    sink.secrets
                        .redact(&format!("request to {} failed: {e}", spec.url)),
                    duration_ms,
                ),
                Ok((status, text)) => {
                    let captured = sink.capture(text.as_bytes(), text.len() as u64);
                    let code = status.as_u16();
                    if status.is_success() {
                        let output = serde_json::from_str::<Value>(&captured.text)
                            .ok()
                            .filter(|_| !captured.truncated)
                            .unwrap_or_else(|| json!({ "status": code, "body": captured.text }));
                        AttemptResult::Succeeded {
                            output,
                            duration_ms,
                            stdout: Some(captured),
                            stderr: None,
                        }
                    } else {
                        let kind = if code == 429 || status.is_server_error() {
                            ErrorKind::Transient
                        } else {
                            ErrorKind::Permanent
                        };
                        let snippet: String = captured.text.chars().take(300).collect();
                        AttemptResult::Failed {
                            kind,
                            message: format!(
                                "HTTP {code} from {}: {snippet}",
                                sink.secrets.redact(&spec.url)
                            ),
                            exit_code: None,
                            http_status: Some(code),
                            duration_ms,
                            stderr: Some(captured),
                        }
                    }
                }
            }
        })
    }
}

/// Whether `signature` (`sha256=HEX`, as in `Chronicle-Signature`) is the
/// HMAC-SHA256 of `body` keyed by `key`; compared in constant time.
pub fn signature_ok(key: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    use hmac::{KeyInit, Mac};
    let Some(hex) = signature.and_then(|s| s.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(given) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(body);
    m.verify_slice(&given).is_ok()
}

/// Answers of a polled URL that end the wait: success, then failure.
const POLL_DONE: [&str; 5] = ["succeeded", "success", "completed", "complete", "done"];
const POLL_FAILED: [&str; 6] = [
    "failed",
    "failure",
    "error",
    "errored",
    "canceled",
    "cancelled",
];

/// `GET url` every `every_ms` until its JSON answer's `status` (or
/// `state`) is terminal: a success state succeeds with the answer, a
/// failure state fails (permanent) with its `error` or `message`.
/// Anything else — another state, a non-JSON or non-2xx answer, a
/// connection error — is polled again. Ends `canceled` when `kill` fires
/// or its sender is dropped.
pub async fn poll_until_terminal(
    url: &str,
    every_ms: u64,
    mut kill: tokio::sync::oneshot::Receiver<()>,
) -> AttemptResult {
    let started = std::time::Instant::now();
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => return failure(ErrorKind::Permanent, format!("no HTTP client: {e}"), 0),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(every_ms)) => {}
            _ = &mut kill => return AttemptResult::Failed {
                kind: ErrorKind::Canceled,
                message: "killed while polling".into(),
                exit_code: None,
                http_status: None,
                duration_ms: started.elapsed().as_millis() as u64,
                stderr: None,
            },
        }
        let answer = async {
            let r = client.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json::<Value>().await.ok()
        };
        let Some(v) = answer.await else {
            tracing::debug!(url, "poll: no terminal answer yet");
            continue;
        };
        let state = v
            .get("status")
            .or_else(|| v.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        let duration_ms = started.elapsed().as_millis() as u64;
        if POLL_DONE.contains(&state.as_str()) {
            return AttemptResult::Succeeded {
                output: v,
                duration_ms,
                stdout: None,
                stderr: None,
            };
        }
        if POLL_FAILED.contains(&state.as_str()) {
            let why = v
                .get("error")
                .or_else(|| v.get("message"))
                .map(|m| {
                    m.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| m.to_string())
                })
                .unwrap_or_else(|| state.clone());
            return failure(
                ErrorKind::Permanent,
                format!("{url} answered {state}: {why}"),
                duration_ms,
            );
        }
    }
}
