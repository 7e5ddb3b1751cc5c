//! A client of a running `chronicle serve`: how the CLI works beside a
//! server (found through the discovery file) and how `chronicle bench
//! api` drives one. Every error comes back as a [`Problem`]; a server
//! that cannot be reached is a 503 `storage` problem (exit 3).

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::discovery::Discovery;
use crate::problem::Problem;

/// How long a client waits for a starting server's recovery (`not_ready`).
const READY_WAIT: Duration = Duration::from_secs(60);

/// A connection to one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    /// The server's pid, when found through its discovery file.
    pid: Option<u32>,
}

/// One Server-Sent Event of a run's stream.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    /// An event (`id` = seq; `line` = the envelope as `history --json`
    /// prints it).
    Event {
        /// The seq.
        seq: u64,
        /// The envelope's JSON line.
        line: String,
    },
    /// The run has ended with this status; the stream is over.
    End(String),
}

impl Client {
    /// A client of the server at `base` (`http://HOST:PORT`) using `token`;
    /// `ca_cert` is the PEM certificate to trust for `https`.
    ///
    /// Errors: an unreadable certificate, or a client that cannot be built.
    pub fn new(base: &str, token: &str, ca_cert: Option<&Path>) -> Result<Self, Problem> {
        let mut certs = Vec::new();
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                Problem::storage(format!(
                    "cannot read the server's certificate {}: {e}",
                    path.display()
                ))
            })?;
            certs.push(reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Problem::storage(format!(
                    "the server's certificate {} is not PEM: {e}",
                    path.display()
                ))
            })?);
        }
        // Only the server's own certificate is trusted: the system's
        // store is never read (a CLI call stays fast, and works without
        // one).
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Problem::storage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            pid: None,
        })
    }

    /// The client of the live server holding `db`, if one does (its
    /// discovery file names a running process).
    ///
    /// Errors: a server is there but no token can be found for it.
    pub fn discover(db: &Path) -> Result<Option<Self>, Problem> {
        let Some(d) = Discovery::live(db) else {
            return Ok(None);
        };
        let token = crate::auth::client_token(db).ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "a server holds {} ({}) but no token was found: set CHRONICLE_TOKEN",
                    db.display(),
                    d.url
                ),
            )
        })?;
        let mut c = Self::new(&d.url, &token, d.tls_cert.as_deref())?;
        c.pid = Some(d.pid);
        Ok(Some(c))
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: reqwest::Error) -> Problem {
        match self.pid {
            Some(pid) if e.is_connect() => Problem::storage(format!(
                "cannot reach the server at {} (pid {pid} holds the database; it may be shutting down: retry once it has exited): {e}",
                self.base
            )),
            _ => Problem::storage(format!("cannot reach the server at {}: {e}", self.base)),
        }
    }

    /// Send a request; a non-2xx answer becomes its problem. A server
    /// still recovering (`not_ready`) is retried for up to a minute.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, reqwest::Response), Problem> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if let Some((ct, bytes)) = &body {
                req = req.header("content-type", *ct).body(bytes.clone());
            }
            let resp = req.send().await.map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            if status.is_success() {
                return Ok((status, resp));
            }
            let text = resp.bytes().await.map_err(|e| self.unreachable(e))?;
            let problem = serde_json::from_slice::<Problem>(&text).unwrap_or_else(|_| {
                let mut p = Problem::new(
                    status,
                    "http",
                    format!(
                        "the server answered {status}: {}",
                        String::from_utf8_lossy(&text).trim()
                    ),
                );
                p.exit_code = if status.is_server_error() { 3 } else { 2 };
                p
            });
            if problem.code == "not_ready" && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            return Err(problem);
        }
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, Problem> {
        let (_, resp) = self.send(Method::GET, path, None, &[]).await?;
        resp.json().await.map_err(|e| self.unreachable(e))
    }

    /// `GET path` as bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Problem> {
        let (_, resp) = self.send(Method::GET, path, None, &[]).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_vec())
    }

    /// `method path` with a JSON body; the answer's status and JSON.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), Problem> {
        let bytes = serde_json::to_vec(body).expect("a JSON value serializes");
        let (status, resp) = self
            .send(method, path, Some(("application/json", bytes)), headers)
            .await?;
        let v = resp.json().await.map_err(|e| self.unreachable(e))?;
        Ok((status, v))
    }

    /// Follow `GET /v1/runs/{run}/events/stream` after `after`, calling
    /// `each` per item, until the run has ended ([`StreamItem::End`]) or
    /// `each` returns false. A dropped connection is resumed with
    /// `Last-Event-ID`, so no event is missed or repeated. Returns the
    /// last seq seen.
    pub async fn follow(
        &self,
        run: &str,
        after: u64,
        mut each: impl FnMut(StreamItem) -> bool,
    ) -> Result<u64, Problem> {
        let mut last = after;
        let mut failures = 0;
        loop {
            let id = last.to_string();
            let path = format!("/v1/runs/{run}/events/stream");
            let resp = match self
                .send(Method::GET, &path, None, &[("last-event-id", &id)])
                .await
            {
                Ok((_, r)) => r,
                Err(p) if p.code == "storage" && failures < 50 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(p) => return Err(p),
            };
            let mut events = eventsource_stream::Eventsource::eventsource(resp.bytes_stream());
            while let Some(ev) = events.next().await {
                let Ok(ev) = ev else { break };
                if ev.event == "end" {
                    let status = serde_json::from_str::<Value>(&ev.data)
                        .ok()
                        .and_then(|v| v["status"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    each(StreamItem::End(status));
                    return Ok(last);
                }
                let Ok(seq) = ev.id.parse::<u64>() else {
                    continue;
                };
                if seq <= last {
                    continue;
                }
                last = seq;
                failures = 0;
                if !each(StreamItem::Event { seq, line: ev.data }) {
                    return Ok(last);
                }
            }
            // The connection ended without `end`: resume after `last`.
            failures += 1;
            if failures > 50 {
                return Err(Problem::storage(format!(
                    "the event stream of run {run} from {} keeps dropping",
                    self.base
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `text` percent-encoded for a path segment or a query value: ASCII
/// letters, digits and `-` stay (run ids, prefixes and hashes are hex and
/// dashes); every other byte becomes `%XX`.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
