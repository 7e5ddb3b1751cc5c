//! The log on PostgreSQL: the same model, envelope and hash chain as the
//! redb file, for many processes on many machines sharing one database.
//!
//! - **Schema**: versioned migrations (`migrations/V*.sql`, applied with
//!   refinery at open, inside its own lock); the version applied is
//!   checked as `FORMAT_VERSION` is for a redb file: a database migrated
//!   by a newer build is refused ([`StoreError::UnsupportedFormat`]).
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

pub(crate) mod lease;
pub mod listen;
mod read;
mod rules;
mod txn;
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

mod embedded {
    refinery::embed_migrations!("src/pg/migrations");
}

/// The schema version this build reads and writes: the last migration.
pub const PG_SCHEMA_VERSION: u32 = 3;

/// True when `location` names a PostgreSQL database (`postgres://` or
/// `postgresql://`) rather than a redb file path.
pub fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for messages and
/// [`crate::Store::path`].
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://{a}@{host}"),
        },
        None => url.to_string(),
    }
}

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

/// [`pg_error`] for a connection that could not be made: the message says
/// what to check.
/// How long a connection to the server may take, start-up included, when
/// the URL gives no `connect_timeout`: 10 s (libpq waits forever by
/// default; a CLI command or a worker should rather say that the server
/// does not answer).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The connection timeout of `config` (set by `connect_config`).
pub(crate) fn connect_timeout(config: &tokio_postgres::Config) -> std::time::Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// The error of a connection that did not complete within `timeout`.
pub(crate) fn pg_timeout_error(target: &str, timeout: std::time::Duration) -> StoreError {
    pg_error(
        target,
        format!(
            "the server did not answer within {} s (connect_timeout); check that the server is running and reachable, and the URL",
            timeout.as_secs_f64()
        ),
    )
}

pub(crate) fn pg_connect_error(target: &str, e: impl std::error::Error) -> StoreError {
    // With its causes: "error performing TLS handshake" alone does not say
    // that the server's certificate is not trusted.
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    pg_error(
        target,
        format!("{message}; check that the server is running, the URL and the credentials"),
    )
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
        {
            // Not `block_on`: the caller may be inside another runtime.
            let (pool, t) = (pool.clone(), target.clone());
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            rt.get().spawn(async move {
                let _ = done.send(migrate(&pool, &t, read_only).await);
            });
            wait.recv()
                .map_err(|_| pg_error(&target, "the migration task stopped"))??;
        }
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let writer = write::Writer {
            pool: pool.clone(),
            target: target.clone(),
            clock: options.clock.clone(),
            max_group: options.max_group.max(1),
            events: events.clone(),
            published: listen::Published::default(),
        };
        let published = writer.published.clone();
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

/// Apply the embedded migrations (serialized across processes by an
/// advisory lock) and check the version the database is at.
async fn migrate(pool: &Pool, target: &str, read_only: bool) -> Result<(), StoreError> {
    let mut conn = PgStore::conn(pool, target).await?;
    let client: &mut tokio_postgres::Client = &mut conn;
    // A schema newer than this build's is refused before anything runs.
    if let Some(v) = schema_version(client, target).await?
        && v > PG_SCHEMA_VERSION as i32
    {
        return Err(unsupported(target, Some(v)));
    }
    if !read_only {
        // Two processes opening a new database at once: one migrates, the
        // other waits and then finds the schema applied.
        client
            .execute("SELECT pg_advisory_lock(7283001)", &[])
            .await
            .map_err(|e| pg_error(target, e))?;
        let applied = embedded::migrations::runner()
            .set_migration_table_name("chronicle_schema_history")
            .run_async(client)
            .await;
        client
            .execute("SELECT pg_advisory_unlock(7283001)", &[])
            .await
            .map_err(|e| pg_error(target, e))?;
        applied.map_err(|e| pg_error(target, format!("applying migrations: {e}")))?;
    }
    let found = schema_version(client, target).await?;
    match found {
        Some(v) if v as u32 == PG_SCHEMA_VERSION => Ok(()),
        Some(v) if (v as u32) < PG_SCHEMA_VERSION && read_only => Err(pg_error(
            target,
            format!(
                "the schema is at version {v}, this build needs {PG_SCHEMA_VERSION}; open it read-write once to migrate it"
            ),
        )),
        None if read_only => Err(pg_error(
            target,
            "not a Chronicle database (no schema history); open it read-write once to create the schema",
        )),
        found => Err(unsupported(target, found)),
    }
}

/// The last migration applied (`None`: no Chronicle schema).
async fn schema_version(
    client: &tokio_postgres::Client,
    target: &str,
) -> Result<Option<i32>, StoreError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('chronicle_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| pg_error(target, e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM chronicle_schema_history", &[])
        .await
        .map_err(|e| pg_error(target, e))?;
    Ok(row.get(0))
}

fn unsupported(target: &str, found: Option<i32>) -> StoreError {
    StoreError::UnsupportedFormat {
        path: PathBuf::from(target),
        found: format!(
            "PostgreSQL schema version {}",
            found.map_or("none".to_string(), |v| v.to_string())
        ),
        supported: PG_SCHEMA_VERSION,
    }
}

/// The connection settings of `url`, and a rustls connector when the URL
/// asks for TLS (`sslmode=require`; `sslrootcert=PATH` names the CA to
/// trust, which tokio-postgres does not parse itself).
fn connect_config(
    url: &str,
    target: &str,
) -> Result<
    (
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    StoreError,
> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut root_cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(path) => {
                root_cert = Some(path.to_string());
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| pg_error(target, format!("a malformed database URL: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("chronicle");
    }
    // A server that accepts a connection and never answers (wedged, or a
    // proxy whose backend is gone) must not hang the caller: each
    // connection, its start-up included, has this long (the URL's
    // `connect_timeout`, seconds, when it gives one).
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // Acknowledged means committed: whatever the server's default, every
    // commit of this client waits for its WAL to be flushed. Generic plans:
    // every statement of this client looks rows up by key (`= ANY($1)`,
    // `unnest`), which a generic plan does as well as a custom one, without
    // planning each execution again (about a tenth of the server's CPU per
    // run in `chronicle bench workers`, 2026-11-30).
    let ours = "-c synchronous_commit=on -c plan_cache_mode=force_generic_plan";
    let options = match config.get_options() {
        Some(o) => format!("{o} {ours}"),
        None => ours.to_string(),
    };
    config.options(&options);
    let tls = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Require => {
            let mut roots = rustls::RootCertStore::empty();
            match &root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        pg_error(target, format!("cannot read sslrootcert {path}: {e}"))
                    })?;
                    use rustls::pki_types::pem::PemObject;
                    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                        let cert = cert.map_err(|e| {
                            pg_error(target, format!("sslrootcert {path} is not PEM: {e}"))
                        })?;
                        roots
                            .add(cert)
                            .map_err(|e| pg_error(target, format!("sslrootcert {path}: {e}")))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let client = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| pg_error(target, e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
        }
        _ => None,
    };
    Ok((config, tls))
}

/// Create the database `name` on the server `url` points to (connecting to
/// the URL's own database), and return `url` naming `name` instead: for
/// test suites and set-up scripts that want a fresh database.
///
/// Errors: [`StoreError::Postgres`] when the server cannot be reached or
/// refuses (a taken name, no `CREATEDB` right).
pub fn create_postgres_database(url: &str, name: &str) -> Result<String, StoreError> {
    let target = redact_url(url);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(pg_error(
            &target,
            format!("{name:?} is not a plain database name"),
        ));
    }
    let (config, tls) = connect_config(url, &target)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| pg_error(&target, e))?;
    let timeout = connect_timeout(&config);
    rt.block_on(async {
        let connecting = async {
            Ok::<_, StoreError>(match tls {
                Some(tls) => {
                    let (c, conn) = config
                        .connect(tls)
                        .await
                        .map_err(|e| pg_connect_error(&target, e))?;
                    tokio::spawn(conn);
                    c
                }
                None => {
                    let (c, conn) = config
                        .connect(tokio_postgres::NoTls)
                        .await
                        .map_err(|e| pg_connect_error(&target, e))?;
                    tokio::spawn(conn);
                    c
                }
            })
        };
        let client = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| pg_timeout_error(&target, timeout))??;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| pg_error(&target, e))
    })?;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
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
    fn urls_are_recognized_and_redacted() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url("chronicle.redb"));
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

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
