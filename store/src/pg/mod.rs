//! The log on PostgreSQL: the same model, envelope and hash chain as the
//! redb file, for many processes on many machines sharing one database.
//!
//! - **Schema**: `schema` — versioned migrations (`migrations/V*.sql`,
//!   applied with refinery at open, inside its own lock); the version
//!   applied is checked as `FORMAT_VERSION` is for a redb file: a database
//!   migrated by a newer build is refused ([`StoreError::UnsupportedFormat`]).
//! - **Connecting**: `connect` — the URL, its TLS settings and the
//!   connection timeout.
//! - **Writes**: [`write`] — group commit: the requests queued meanwhile
//!   commit in one transaction; appenders of a stream take its advisory
//!   lock, and optimistic concurrency per stream is checked under it; no
//!   lock is shared by every writer, so the commits of many processes
//!   overlap. Positions are numbered from the transaction's id: unique and
//!   growing along each stream, not gapless nor in commit order (schema
//!   version 3). `synchronous_commit = on`: acknowledged means committed.
//! - **Reads**: plain queries through a connection pool. The store's read
//!   API is synchronous (as redb's is): a read runs on the store's own
//!   small runtime and the caller's thread waits for it.
//! - **Live feed**: [`listen`] — `LISTEN chronicle_events` (and
//!   `chronicle_feed` while the feed has readers): commits of other
//!   processes reach [`crate::Store::subscribe`] too, read below the
//!   horizon (no transaction that could still commit holds a smaller
//!   position), in position order.
//!
//! The client is `tokio-postgres` with a `deadpool-postgres` pool; TLS
//! (rustls) when the URL asks for it (`sslmode=require`, with
//! `sslrootcert=PATH` for a private CA; the web PKI's roots otherwise).

mod connect;
pub(crate) mod lease;
pub mod listen;
mod read;
mod rules;
mod schema;
mod txn;
mod workers;
pub(crate) mod write;
mod writes;

use std::path::PathBuf;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::envelope::RawEnvelope;
use crate::error::StoreError;
use crate::request::{Committed, WriteRequest};
use crate::store::StoreOptions;

use connect::connect_config;
pub(crate) use connect::{connect_timeout, pg_connect_error, pg_timeout_error};
pub use connect::{create_postgres_database, is_postgres_url, redact_url};
pub use schema::PG_SCHEMA_VERSION;
use schema::migrate;

/// The PostgreSQL backend of a [`crate::Store`].
pub(crate) struct PgStore {
    /// Runs the pool's connections, the writer and the listener (first
    /// field: shut down before the others are dropped).
    rt: Background,
    pub pool: Pool,
    /// The redacted URL: messages and `Store::path`.
    pub target: String,
    pub tx: mpsc::Sender<write::Job>,
    pub read_only: bool,
    /// Shared with the writer and the listener.
    published: listen::Published,
}

/// A runtime shut down in the background when dropped: a store may be
/// dropped — or fail to open — inside another runtime, where dropping one
/// the ordinary way panics.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish()
    }
}

/// A PostgreSQL error as a [`StoreError::Postgres`] naming the database.
pub(crate) fn pg_error(target: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres {
        target: target.to_string(),
        message: e.to_string(),
    }
}

impl PgStore {
    /// Connect to `url`, apply the migrations this build has (unless
    /// `read_only`) and check the schema version; start the writer and the
    /// listener.
    ///
    /// Errors: [`StoreError::Postgres`] when the URL is malformed or the
    /// server cannot be reached or refuses; [`StoreError::UnsupportedFormat`]
    /// for a schema newer than this build's.
    pub fn open(
        url: &str,
        options: &StoreOptions,
        events: broadcast::Sender<Arc<[RawEnvelope]>>,
        foreign: broadcast::Sender<Arc<listen::Change>>,
        read_only: bool,
    ) -> Result<Self, StoreError> {
        let target = redact_url(url);
        // Shut down in the background should opening fail too.
        let rt = Background(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("chronicle-pg")
                .enable_all()
                .build()
                .map_err(|e| pg_error(&target, format!("cannot start its runtime: {e}")))?,
        ));
        let (config, tls) = connect_config(url, &target)?;
        let manager = match tls.clone() {
            Some(tls) => Manager::from_config(
                config.clone(),
                tls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
            None => Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(16)
            .create_timeout(Some(connect_timeout(&config)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| pg_error(&target, e))?;
        // The schema; then the horizon, where the live feed starts: a
        // subscriber of the opened store gets every commit from here on
        // (read by the listener task itself, it could come after a commit
        // made right after the open, which would then never be sent).
        let horizon = {
            // Not `block_on`: the caller may be inside another runtime.
            let (pool, t) = (pool.clone(), target.clone());
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            rt.get().spawn(async move {
                let opened = async {
                    migrate(&pool, &t, read_only).await?;
                    listen::horizon(&pool, &t).await
                };
                let _ = done.send(opened.await);
            });
            wait.recv()
                .map_err(|_| pg_error(&target, "the migration task stopped"))??
        };
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = write::Writer {
            pool: pool.clone(),
            target: target.clone(),
            clock: options.clock.clone(),
            max_group: options.max_group.max(1),
            events: events.clone(),
            published: listen::Published::default(),
            workers: Default::default(),
        };
        let published = writer.published.clone();
        published.opened_at(horizon);
        if !read_only {
            rt.get().spawn(writer.run(rx));
        }
        rt.get().spawn(listen::run(
            config,
            tls,
            pool.clone(),
            target.clone(),
            events.clone(),
            foreign,
            published.clone(),
        ));
        Ok(Self {
            rt,
            pool,
            target,
            tx,
            read_only,
            published,
        })
    }

    /// Run `f` on the store's runtime and wait for it on this thread (the
    /// synchronous read API). Works from any thread, inside an async
    /// runtime too: the caller's thread blocks for the query's round trip.
    pub fn block<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.get().spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// The rows of `sql` with `params`, on a pooled connection (the
    /// statement prepared once per connection and cached), waiting on this
    /// thread ([`Self::block`]).
    ///
    /// Errors: [`StoreError::Postgres`] naming the database.
    pub fn rows(
        &self,
        sql: String,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let (pool, target) = (self.pool.clone(), self.target.clone());
        self.block(async move {
            let conn = PgStore::conn(&pool, &target).await?;
            let e = |e| pg_error(&target, e);
            let st = conn.prepare_cached(&sql).await.map_err(e)?;
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            conn.query(&st, &refs).await.map_err(e)
        })
    }

    /// The live feed has a reader again: it reads from the horizon now on
    /// (see [`listen`]). Should the horizon not be read, the feed goes on
    /// from where it stopped reading.
    pub fn feed_starts(&self) {
        match self.rows(listen::HORIZON.to_string(), Vec::new()) {
            Ok(rows) => {
                if let Some(h) = rows.first().map(|r| r.get::<_, i64>(0) as u64) {
                    self.published.starts_at(h.saturating_sub(1));
                }
            }
            Err(e) => tracing::debug!(target = %self.target, error = %e, "the feed's start"),
        }
    }

    /// A pooled connection.
    pub async fn conn(pool: &Pool, target: &str) -> Result<deadpool_postgres::Object, StoreError> {
        pool.get()
            .await
            .map_err(|e| match (&e, pool.timeouts().create) {
                (deadpool_postgres::PoolError::Timeout(_), Some(t)) => pg_timeout_error(target, t),
                _ => pg_connect_error(target, e),
            })
    }

    /// [`crate::Store::write`]: queue `request` for the writer's next
    /// group and wait until it is committed.
    pub async fn write(&self, request: WriteRequest) -> Result<Committed, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.path()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(write::Job { request, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`crate::Store::write_blocking`].
    pub fn write_blocking(&self, request: WriteRequest) -> Result<Committed, StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.path()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(write::Job { request, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// The path label (`Store::path`): the redacted URL.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.target)
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (`None`: no bound, for an empty prefix or one of only `char::MAX`).
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        if let Some(next) = char::from_u32(c as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Store a clock reading as i64 nanoseconds (as the redb record does).
pub(crate) fn nanos(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_every_string_with_the_prefix() {
        assert_eq!(prefix_end("agent:").as_deref(), Some("agent;"));
        assert_eq!(prefix_end(""), None);
        let end = prefix_end("ab").unwrap();
        for s in ["ab", "ab\u{10FFFF}", "abzzz"] {
            assert!(s < end.as_str());
        }
        assert!("ac" >= end.as_str());
    }
}
