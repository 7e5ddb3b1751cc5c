//! `GET /v1/runs/{id}/events/stream`: a run's events as Server-Sent
//! Events, one per envelope with `id:` = seq, resuming after
//! `Last-Event-ID` (or `?after=`) with no gap and no duplicate, and ending
//! with an `end` event once the run has ended.
//!
//! The stream reads what is already stored from the database, then
//! follows the store's commit feed. The feed never waits for a client: a
//! stream whose feed lagged reads the missed events back from the
//! database; a client that does not read what it is sent (its buffer
//! fills) is dropped, and resumes with `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use chronicle_engine::ids::{RunId, RunStream};
use chronicle_store::{RawEnvelope, Seq};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use crate::api::{AppState, Q};
use crate::ops;
use crate::problem::Problem;

/// Events read from the database per catch-up page.
const PAGE: u64 = 1000;
/// How long a catch-up send waits for a client that does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Query of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this seq (`Last-Event-ID` takes precedence).
    pub after: Option<u64>,
}

/// Follow a run's events live (Server-Sent Events).
#[utoipa::path(
    get, path = "/v1/runs/{id}/events/stream", tag = "events",
    params(
        ("id" = String, Path, description = "Run id or unique prefix"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq"),
        StreamQuery
    ),
    responses(
        (status = 200, description = "text/event-stream: `id: SEQ`, `data: ENVELOPE`; a last `event: end` with `{status}` when the run has ended", content_type = "text/event-stream", body = String),
        (status = 404, body = Problem), (status = 503, body = Problem)
    )
)]
pub async fn run_events_stream(
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Result<Response, Problem> {
    let engine = app.engine().clone();
    let run = engine.resolve_run(&id)?;
    if engine.store().head(&run.stream())?.is_none() {
        return Err(Problem::unknown_run(&id));
    }
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Problem::bad_request("Last-Event-ID must be a seq (a number)"))?,
        None => q.after.unwrap_or(0),
    };
    let permit = app.0.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open on this server; retry later",
        )
    })?;
    // Subscribe before the first read, so nothing committed in between
    // is missed.
    let feed = engine.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(app.0.sse_buffer);
    let shutdown = app.0.shutdown.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let r = pump(&engine, run, after, feed, &tx, shutdown).await;
        if let Err(why) = r {
            tracing::debug!(%run, why, "event stream ended");
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn event_of(env: &RawEnvelope) -> Event {
    Event::default()
        .id(env.seq.0.to_string())
        .data(ops::event_line(env).0)
}

/// Send the events of `run` after `after`, then follow; ends after the
/// run's terminal event (with an `end` event), at shutdown, or when the
/// client is gone or too slow.
async fn pump(
    engine: &chronicle_engine::runtime::Engine,
    run: RunId,
    after: u64,
    mut feed: broadcast::Receiver<std::sync::Arc<[RawEnvelope]>>,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), &'static str> {
    let store = engine.store();
    let mut last = after;
    loop {
        // Catch up from the database, a page at a time.
        loop {
            let envs =
                ops::events_page(store, run, last, PAGE as usize).map_err(|_| "read failed")?;
            let n = envs.len();
            for env in &envs {
                tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(event_of(env))))
                    .await
                    .map_err(|_| "client too slow")?
                    .map_err(|_| "client gone")?;
                last = env.seq.0;
                if ops::is_terminal_event(env) {
                    return finish(engine, run, tx).await;
                }
            }
            if (n as u64) < PAGE {
                break;
            }
        }
        // Follow the commit feed until it lags or skips (then catch up
        // from the database again).
        loop {
            tokio::select! {
                batch = feed.recv() => match batch {
                    Ok(b) => {
                        let mut gap = false;
                        let stream = run.stream();
                        for env in b.iter().filter(|e| e.stream == stream) {
                            if env.seq.0 <= last {
                                continue;
                            }
                            if env.seq != Seq(last + 1) {
                                gap = true;
                                break;
                            }
                            tx.try_send(Ok(event_of(env))).map_err(|e| match e {
                                mpsc::error::TrySendError::Full(_) => "client too slow",
                                mpsc::error::TrySendError::Closed(_) => "client gone",
                            })?;
                            last = env.seq.0;
                            if ops::is_terminal_event(env) {
                                return finish(engine, run, tx).await;
                            }
                        }
                        if gap {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Err("store closed"),
                },
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return Err("server shutting down"),
                _ = tx.closed() => return Err("client gone"),
            }
        }
    }
}

async fn finish(
    engine: &chronicle_engine::runtime::Engine,
    run: RunId,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> Result<(), &'static str> {
    let status = engine
        .state(run)
        .map(|s| s.status.as_str().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let end = Event::default()
        .event("end")
        .data(serde_json::json!({ "status": status }).to_string());
    let _ = tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(end))).await;
    Ok(())
}

/// Follow every run's changes live (Server-Sent Events): one event per
/// committed run event, `data: {"run_id", "seq", "type"}`, in commit
/// order. Nothing is replayed: a client reads the current list first,
/// then follows. An `event: lagged` says changes were missed (the client
/// was slow); re-read the list. Ends at shutdown.
#[utoipa::path(
    get, path = "/v1/changes", tag = "events",
    responses(
        (status = 200, description = "text/event-stream: `data: {run_id, seq, type}` per committed run event; `event: lagged` when some were missed", content_type = "text/event-stream", body = String),
        (status = 503, body = Problem)
    )
)]
pub async fn changes_stream(State(app): State<AppState>) -> Result<Response, Problem> {
    let permit = app.0.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            "too many event streams are open on this server; retry later",
        )
    })?;
    let mut feed = app.engine().subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(app.0.sse_buffer);
    let mut shutdown = app.0.shutdown.clone();
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            let batch = tokio::select! {
                b = feed.recv() => b,
                _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
                _ = tx.closed() => return,
            };
            let sent = match batch {
                Ok(b) => b
                    .iter()
                    .filter_map(change_of)
                    .try_for_each(|e| tx.try_send(Ok(e))),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    tx.try_send(Ok(Event::default().event("lagged").data("{}")))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            // A client whose buffer is full is told nothing more: it
            // reconnects and re-reads the list.
            if sent.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The change event of a run's envelope (None for other streams).
fn change_of(env: &RawEnvelope) -> Option<Event> {
    let chronicle_store::StreamId::Run(run) = &env.stream else {
        return None;
    };
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    let kind = serde_json::from_slice::<Kind>(&env.payload)
        .map(|k| k.kind)
        .unwrap_or_default();
    Some(
        Event::default()
            .data(serde_json::json!({"run_id": run, "seq": env.seq.0, "type": kind}).to_string()),
    )
}
