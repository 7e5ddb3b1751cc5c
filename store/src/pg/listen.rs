//! The live feed across processes: a connection that `LISTEN`s on
//! `chronicle_events`. Each commit notifies
//! `FIRST:THROUGH:WRITER:FLAGS:STREAMS` (its positions, the writing
//! process, `o` when it offers runs, the streams appended to). A commit of
//! another process is announced at once to
//! [`crate::Store::subscribe_changes`] (from the notification alone), and,
//! while anyone holds a [`crate::Store::subscribe`] receiver, its events
//! are read and sent there (this process's own commits are sent by its
//! writer, at once). Should the
//! connection drop, it reconnects and catches up from where it was; a
//! poll every second covers a notification lost meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::read::{EVENT_COLUMNS, envelope_of};
use super::{PgStore, pg_error};
use crate::envelope::{Hash, RawEnvelope};
use crate::error::StoreError;

/// The events this process's writer sent itself, by hash (with their
/// position), so that the listener does not send them twice; and the
/// writer's id, which its notifications carry.
#[derive(Clone)]
pub(crate) struct Published(Arc<Mutex<HashMap<Hash, u64>>>, Arc<str>);

impl Default for Published {
    fn default() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self(Default::default(), id[..12].into())
    }
}

impl Published {
    /// The writer's id in its notifications.
    pub fn writer(&self) -> &str {
        &self.1
    }

    /// Mark events `(hash, position)` as sent by the writer (before their
    /// commit: the notification may come before the writer is answered).
    pub fn mark(&self, events: impl Iterator<Item = (Hash, u64)>) {
        let mut m = self.0.lock().expect("published lock");
        m.extend(events);
    }

    /// Forget marked events (their commit failed).
    pub fn unmark(&self, hashes: impl Iterator<Item = Hash>) {
        let mut m = self.0.lock().expect("published lock");
        for h in hashes {
            m.remove(&h);
        }
    }

    /// True (and forgotten) when the writer sent `env`.
    fn take(&self, env: &RawEnvelope) -> bool {
        self.0
            .lock()
            .expect("published lock")
            .remove(&env.hash)
            .is_some()
    }

    /// Forget marks at or below `through` (commits that failed).
    fn prune(&self, through: u64) {
        self.0
            .lock()
            .expect("published lock")
            .retain(|_, p| *p > through);
    }
}

/// The listener task: runs until the store's runtime shuts down.
pub(crate) async fn run(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool: deadpool_postgres::Pool,
    target: String,
    events: broadcast::Sender<Arc<[RawEnvelope]>>,
    foreign: broadcast::Sender<Arc<Change>>,
    published: Published,
) {
    let mut seen = match head(&pool, &target).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%target, error = %e, "the live feed cannot start");
            0
        }
    };
    loop {
        let feeds = (&events, &foreign);
        if let Err(e) = listen(&config, &tls, &pool, &target, feeds, &published, &mut seen).await {
            tracing::debug!(%target, error = %e, "the live feed reconnects");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn head(pool: &deadpool_postgres::Pool, target: &str) -> Result<u64, StoreError> {
    let conn = PgStore::conn(pool, target).await?;
    let row = conn
        .query_one("SELECT position FROM chronicle_log_head WHERE id = 1", &[])
        .await
        .map_err(|e| pg_error(target, e))?;
    Ok(row.get::<_, i64>(0) as u64)
}

async fn listen(
    config: &tokio_postgres::Config,
    tls: &Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool: &deadpool_postgres::Pool,
    target: &str,
    feeds: Feeds<'_>,
    published: &Published,
    seen: &mut u64,
) -> Result<(), StoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = match tls {
        Some(tls) => connect(config, tls.clone(), tx.clone()).await,
        None => connect(config, tokio_postgres::NoTls, tx.clone()).await,
    }
    .map_err(|e| pg_error(target, e))?;
    drop(tx);
    client
        .batch_execute("LISTEN chronicle_events")
        .await
        .map_err(|e| pg_error(target, e))?;
    let mut query = true;
    loop {
        if query {
            catch_up(pool, target, feeds, published, seen).await?;
        }
        if client.is_closed() {
            return Err(pg_error(target, "the listening connection closed"));
        }
        // Notifications, or a poll every second. A notification of this
        // process's own commit that follows what was seen needs no query:
        // its writer sent those events already.
        query = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(None) => return Err(pg_error(target, "the listening connection closed")),
            Err(_) => true,
            Ok(Some(first)) => {
                let mut query = false;
                let mut next = Some(first);
                let reading = feeds.0.receiver_count() > 0;
                while let Some(payload) = next {
                    let Some(n) = Notice::parse(&payload) else {
                        query = true;
                        next = rx.try_recv().ok();
                        continue;
                    };
                    let own = n.writer == published.writer();
                    if !own {
                        let _ = feeds.1.send(Arc::new(Change {
                            streams: n.streams,
                            offers: n.offers,
                        }));
                    }
                    if !query && n.first == *seen + 1 && (own || !reading) {
                        // Own events were sent by the writer; foreign ones
                        // only matter while someone reads the feed.
                        *seen = n.through;
                        published.prune(n.through);
                    } else {
                        query = true;
                    }
                    next = rx.try_recv().ok();
                }
                query
            }
        };
    }
}

/// A connection to `config` over `tls` whose notifications' payloads go
/// to `tx` (its connection task ends with it).
async fn connect<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = config.connect(tls).await?;
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    Ok(client)
}

/// A commit another process made, as its notification tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The streams it appended to (keys, as [`crate::StreamId::key`]);
    /// `None` when the notification could not list them all.
    pub streams: Option<Vec<String>>,
    /// It offered new runs to the workers.
    pub offers: bool,
}

/// A notification's payload: `FIRST:THROUGH:WRITER:FLAGS:STREAMS`.
struct Notice {
    first: u64,
    through: u64,
    writer: String,
    offers: bool,
    streams: Option<Vec<String>>,
}

impl Notice {
    fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(5, ':');
        let first = parts.next()?.parse().ok()?;
        let through = parts.next()?.parse().ok()?;
        let writer = parts.next()?.to_string();
        let offers = parts.next()? == "o";
        let streams = match parts.next()? {
            "*" => None,
            "" => Some(Vec::new()),
            list => Some(list.split(',').map(str::to_string).collect()),
        };
        Some(Self {
            first,
            through,
            writer,
            offers,
            streams,
        })
    }
}

/// Send what was committed after `seen` by other processes.
/// The feed of every commit's events, and the feed of other processes'
/// commits as [`Change`]s.
type Feeds<'a> = (
    &'a broadcast::Sender<Arc<[RawEnvelope]>>,
    &'a broadcast::Sender<Arc<Change>>,
);

async fn catch_up(
    pool: &deadpool_postgres::Pool,
    target: &str,
    (events, foreign): Feeds<'_>,
    published: &Published,
    seen: &mut u64,
) -> Result<(), StoreError> {
    let conn = PgStore::conn(pool, target).await?;
    loop {
        let rows = conn
            .query(
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM chronicle_events WHERE position > $1 \
                     ORDER BY position LIMIT 1000"
                ),
                &[&(*seen as i64)],
            )
            .await
            .map_err(|e| pg_error(target, e))?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        *seen = last.get::<_, i64>(0) as u64;
        let n = rows.len();
        let mut out = Vec::with_capacity(n);
        for row in &rows {
            let env = envelope_of(row, target)?;
            if !published.take(&env) {
                out.push(env);
            }
        }
        published.prune(*seen);
        if !out.is_empty() {
            // Read after a lost notification (a reconnection, the poll):
            // announced here too.
            let mut streams: Vec<String> = out.iter().map(|e| e.stream.key()).collect();
            streams.sort_unstable();
            streams.dedup();
            let offers = out
                .iter()
                .any(|e| e.seq.0 == 1 && e.stream.as_run().is_some());
            let _ = foreign.send(Arc::new(Change {
                streams: Some(streams),
                offers,
            }));
            let _ = events.send(out.into());
        }
        if n < 1000 {
            return Ok(());
        }
    }
}
