//! The live feed across processes: a connection that `LISTEN`s on
//! `chronicle_events` (commits every worker must hear of: offers of runs,
//! commands appended to runs) and, while the feed has readers, on
//! `chronicle_feed` (workers' commits to the runs they hold; see
//! `writes::notify_channel`). Each commit notifies
//! `FIRST:THROUGH:WRITER:FLAGS:STREAMS` (its positions, the writing
//! process, `o` when it offers runs — `o>OWNER` when it names the worker
//! to claim them —, the streams appended to). A commit of
//! another process is announced at once to
//! [`crate::Store::subscribe_changes`] (from the notification alone), and,
//! while anyone holds a [`crate::Store::subscribe`] receiver, its events
//! are read and sent there (this process's own commits are sent by its
//! writer, at once). Events are read below the horizon, in position order
//! (see [`run`]). Should the connection drop, it reconnects and catches up
//! from where it was (announcing what it reads as changes too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::read::{EVENT_COLUMNS, envelope_of_at};
use super::writes::{CHANNEL_CONTROL, CHANNEL_FEED};
use super::{PgStore, pg_error};
use crate::envelope::{Hash, RawEnvelope};
use crate::error::StoreError;

/// The events this process's writer sent itself, by hash (with their
/// position), so that the listener does not send them twice; and the
/// writer's id, which its notifications carry.
#[derive(Clone)]
pub(crate) struct Published(
    Arc<Mutex<HashMap<Hash, u64>>>,
    Arc<str>,
    /// Where a new reader of the feed starts (see [`Published::starts_at`]).
    Arc<std::sync::atomic::AtomicU64>,
    /// Wakes the listener when the feed gets a first reader (it then
    /// listens on the feed's channel too).
    Arc<tokio::sync::Notify>,
);

impl Default for Published {
    fn default() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self(
            Default::default(),
            id[..12].into(),
            Default::default(),
            Default::default(),
        )
    }
}

impl Published {
    /// The feed has a first reader again, which wants what commits from
    /// now on: every event at or below `position` is final (below the
    /// horizon), so the listener goes on from there rather than from where
    /// it stopped reading.
    pub fn starts_at(&self, position: u64) {
        self.2
            .fetch_max(position, std::sync::atomic::Ordering::AcqRel);
        self.3.notify_one();
    }

    /// The store was opened at horizon `position`: the feed starts there
    /// (below it, every event is final and was committed before the open).
    pub fn opened_at(&self, position: u64) {
        self.2.fetch_max(
            position.saturating_sub(1),
            std::sync::atomic::Ordering::AcqRel,
        );
    }

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
///
/// Positions are not given out in commit order (see
/// `migrations/V3__positions.sql`): the listener reads the events below the
/// horizon — `pg_snapshot_xmin(pg_current_snapshot()) << 24`, under which
/// no transaction can still commit — in position order, from `seen` (the
/// horizon of its last read, less one; at first the horizon read when the
/// store was opened). Events a notification announced but the
/// horizon still holds back are read again shortly after.
pub(crate) async fn run(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool: deadpool_postgres::Pool,
    target: String,
    events: broadcast::Sender<Arc<[RawEnvelope]>>,
    foreign: broadcast::Sender<Arc<Change>>,
    published: Published,
) {
    // From the horizon of the store's open ([`Published::opened_at`]).
    let mut seen = 0;
    loop {
        let feeds = (&events, &foreign);
        if let Err(e) = listen(&config, &tls, &pool, &target, feeds, &published, &mut seen).await {
            tracing::debug!(%target, error = %e, "the live feed reconnects");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first position no transaction that could still commit can hold.
pub(crate) const HORIZON: &str =
    "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 24)";

pub(crate) async fn horizon(
    pool: &deadpool_postgres::Pool,
    target: &str,
) -> Result<u64, StoreError> {
    let conn = PgStore::conn(pool, target).await?;
    let row = conn
        .query_one(HORIZON, &[])
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
    let timeout = super::connect_timeout(config);
    let connecting = async {
        match tls {
            Some(tls) => connect(config, tls.clone(), tx.clone()).await,
            None => connect(config, tokio_postgres::NoTls, tx.clone()).await,
        }
    };
    let client = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| super::pg_timeout_error(target, timeout))?
        .map_err(|e| super::pg_connect_error(target, e))?;
    drop(tx);
    client
        .batch_execute(&format!("LISTEN {CHANNEL_CONTROL}"))
        .await
        .map_err(|e| pg_error(target, e))?;
    // The feed's channel (the commits of workers to the runs they hold)
    // only while the feed has readers: a worker has none, and is not
    // woken by every commit of every other worker.
    let mut hearing_feed = false;
    // Read now (a reconnection catches up what it missed); then, while the
    // feed has readers, on other processes' notifications, soon again
    // while events they announced are held back by the horizon, and once
    // a second. This process's own commits were sent by its writer: they
    // only move the horizon (a notification is sent in the same round trip
    // as its COMMIT).
    let mut query = true;
    let mut announced = 0u64;
    let mut retry = Duration::from_millis(1);
    let mut last_read = tokio::time::Instant::now();
    loop {
        let reading = feeds.0.receiver_count() > 0;
        if reading != hearing_feed {
            let sql = match reading {
                true => format!("LISTEN {CHANNEL_FEED}"),
                false => format!("UNLISTEN {CHANNEL_FEED}"),
            };
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| pg_error(target, e))?;
            hearing_feed = reading;
            // Heard from now on: what committed before is read now.
            query |= reading;
        }
        let start = published.2.swap(0, std::sync::atomic::Ordering::AcqRel);
        *seen = (*seen).max(start);
        // Once a second at least, the feed's readers get what committed
        // without a notification reaching this process (a writer whose
        // connection ended right after its COMMIT: the commit took effect,
        // its notification was never sent); without readers, the horizon
        // alone moves on.
        if query || (reading && last_read.elapsed() >= Duration::from_secs(1)) {
            catch_up(pool, target, feeds, published, seen, reading).await?;
            last_read = tokio::time::Instant::now();
        } else if last_read.elapsed() >= Duration::from_secs(1) {
            let h = horizon(pool, target).await?;
            *seen = (*seen).max(h.saturating_sub(1));
            published.prune(*seen);
            last_read = tokio::time::Instant::now();
        }
        if client.is_closed() {
            return Err(pg_error(target, "the listening connection closed"));
        }
        let held_back = reading && announced > *seen;
        let wait = if held_back {
            retry = (retry * 2).min(Duration::from_millis(250));
            retry
        } else {
            retry = Duration::from_millis(1);
            Duration::from_secs(1)
        };
        let heard = tokio::select! {
            heard = tokio::time::timeout(wait, rx.recv()) => heard,
            // A first reader: listen on the feed's channel and read.
            _ = published.3.notified() => {
                query = true;
                continue;
            }
        };
        query = match heard {
            Ok(None) => return Err(pg_error(target, "the listening connection closed")),
            Err(_) => held_back,
            Ok(Some(first)) => {
                let mut query = false;
                let mut next = Some(first);
                while let Some(payload) = next {
                    match Notice::parse(&payload) {
                        None => query = true,
                        Some(n) if n.writer != published.writer() => {
                            let _ = feeds.1.send(Arc::new(Change {
                                streams: n.streams,
                                offers: n.offers,
                                offered_to: n.offered_to,
                            }));
                            announced = announced.max(n.through);
                            query |= reading;
                        }
                        // This process's commit may move the horizon past
                        // events announced before.
                        Some(_) => query |= reading && announced > *seen,
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
    /// The worker it names to claim them (`None`: every worker; see
    /// `chronicle_workers`): the others need not claim.
    pub offered_to: Option<String>,
}

/// A notification's payload: `FIRST:THROUGH:WRITER:FLAGS:STREAMS`.
struct Notice {
    through: u64,
    writer: String,
    offers: bool,
    offered_to: Option<String>,
    streams: Option<Vec<String>>,
}

impl Notice {
    fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(5, ':');
        let _first: u64 = parts.next()?.parse().ok()?;
        let through = parts.next()?.parse().ok()?;
        let writer = parts.next()?.to_string();
        let flags = parts.next()?;
        let offered_to = flags.strip_prefix("o>").map(str::to_string);
        let offers = flags == "o" || offered_to.is_some();
        let streams = match parts.next()? {
            "*" => None,
            "" => Some(Vec::new()),
            list => Some(list.split(',').map(str::to_string).collect()),
        };
        Some(Self {
            through,
            writer,
            offers,
            offered_to,
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

/// Read what other processes committed after `seen`, below the horizon:
/// their events go to the feed while it has readers (`reading`), and they
/// are announced as [`Change`]s (a notification may have been lost). Not
/// reading, only the streams are read.
async fn catch_up(
    pool: &deadpool_postgres::Pool,
    target: &str,
    (events, foreign): Feeds<'_>,
    published: &Published,
    seen: &mut u64,
    reading: bool,
) -> Result<(), StoreError> {
    let conn = PgStore::conn(pool, target).await?;
    let e = |e| pg_error(target, e);
    let columns = if reading {
        EVENT_COLUMNS
    } else {
        "position, stream, seq"
    };
    let st = conn
        .prepare_cached(&format!(
            "WITH h AS ({HORIZON} AS horizon) \
             SELECT h.horizon, e.* FROM h LEFT JOIN LATERAL \
               (SELECT {columns} FROM chronicle_events \
                WHERE position > $1 AND position < h.horizon \
                ORDER BY position LIMIT 1000) e ON true"
        ))
        .await
        .map_err(e)?;
    loop {
        let rows = conn.query(&st, &[&(*seen as i64)]).await.map_err(e)?;
        let Some(first) = rows.first() else {
            return Ok(());
        };
        let horizon = first.get::<_, i64>(0) as u64;
        // A row of the horizon alone: nothing new below it.
        let rows: Vec<&tokio_postgres::Row> = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .collect();
        let n = rows.len();
        let mut out = Vec::with_capacity(n);
        let mut streams: Vec<String> = Vec::new();
        let mut offers = false;
        for row in &rows {
            let (stream, seq) = if reading {
                let env = envelope_of_at(row, 1, target)?;
                if published.take(&env) {
                    continue; // sent by this process's writer
                }
                let key = (env.stream.key(), env.seq.0);
                out.push(env);
                key
            } else {
                (row.get::<_, String>(2), row.get::<_, i64>(3) as u64)
            };
            // A run's first event: it was created, and maybe offered.
            offers |= seq == 1 && uuid::Uuid::parse_str(&stream).is_ok();
            streams.push(stream);
        }
        *seen = match rows.last() {
            Some(last) if n == 1000 => last.get::<_, i64>(1) as u64,
            _ => horizon.saturating_sub(1).max(*seen),
        };
        published.prune(*seen);
        if !streams.is_empty() {
            // Read after a lost notification (a reconnection, the poll):
            // announced here too.
            streams.sort_unstable();
            streams.dedup();
            let _ = foreign.send(Arc::new(Change {
                streams: Some(streams),
                offers,
                offered_to: None,
            }));
        }
        if !out.is_empty() {
            let _ = events.send(out.into());
        }
        if n < 1000 {
            return Ok(());
        }
    }
}
