//! PostgreSQL for the benchmarks: a fresh database per measurement on the
//! server a `postgres://` URL names, and the baseline a PostgreSQL figure
//! is compared with — the latency of the server's own durable commit.

use chronicle_engine::runtime::EngineError;
use chronicle_store::StoreError;

fn pg(target: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(StoreError::Postgres {
        target: chronicle_store::redact_url(target),
        message: e.to_string(),
    })
}

/// A plain connection to `url` (no TLS: benchmarks run next to their
/// server), its connection driven on the current runtime.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, EngineError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| pg(url, e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// A new database on `server` for one measurement: `(url, name)`.
pub fn fresh_database(server: &str, what: &str) -> Result<(String, String), EngineError> {
    let name = format!("chronicle_bench_{what}_{}", uuid::Uuid::now_v7().simple());
    let url = chronicle_store::create_postgres_database(server, &name)?;
    Ok((url, name))
}

/// Drop the database `name` of `server` (its connections are closed).
pub async fn drop_database(server: &str, name: &str) -> Result<(), EngineError> {
    let client = connect(server).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| pg(server, e))
}

/// The server's durable commit: one-row updates, each its own transaction
/// with `synchronous_commit = on` — what one group commit of the log costs
/// at least (a table of its own in the measured database).
pub struct CommitProbe {
    client: tokio_postgres::Client,
}

impl CommitProbe {
    /// Create the probe's table in the database at `url`.
    pub async fn new(url: &str) -> Result<Self, EngineError> {
        let client = connect(url).await?;
        client
            .batch_execute(
                "SET synchronous_commit = on; \
                 CREATE TABLE IF NOT EXISTS chronicle_bench_probe (id int PRIMARY KEY, v bytea); \
                 INSERT INTO chronicle_bench_probe VALUES (1, '') ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(|e| pg(url, e))?;
        Ok(Self { client })
    }

    /// Latencies of `samples` commits, milliseconds.
    pub async fn sample(&self, samples: usize) -> Result<Vec<f64>, EngineError> {
        let v = vec![7u8; 200];
        let mut out = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = std::time::Instant::now();
            self.client
                .execute(
                    "UPDATE chronicle_bench_probe SET v = $1 WHERE id = 1",
                    &[&v],
                )
                .await
                .map_err(|e| pg("the probe", e))?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(out)
    }

    /// `(write transactions of the log, all commits)` of this database so
    /// far: the events of one group commit share their position's high
    /// bits (its transaction id: position >> 24); `xact_commit` counts
    /// every transaction, reads too (PostgreSQL publishes it within a
    /// second).
    pub async fn commits(&self) -> Result<(i64, i64), EngineError> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(DISTINCT position >> 24) FROM chronicle_events), \
                 (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
                &[],
            )
            .await
            .map_err(|e| pg("the probe", e))?;
        Ok((row.get::<_, Option<i64>>(0).unwrap_or(0), row.get(1)))
    }
}
