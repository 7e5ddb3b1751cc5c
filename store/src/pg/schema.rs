//! The schema on PostgreSQL: versioned migrations (`migrations/V*.sql`,
//! embedded and applied with refinery at open, one process at a time), and
//! the version check that refuses a database migrated by a newer build, as
//! `FORMAT_VERSION` does for a redb file.

use std::path::PathBuf;

use deadpool_postgres::Pool;

use super::{PgStore, pg_error};
use crate::error::StoreError;

mod embedded {
    refinery::embed_migrations!("src/pg/migrations");
}

/// The schema version this build reads and writes: the last migration.
pub const PG_SCHEMA_VERSION: u32 = 4;

/// Apply the embedded migrations (serialized across processes by an
/// advisory lock) and check the version the database is at.
pub(super) async fn migrate(pool: &Pool, target: &str, read_only: bool) -> Result<(), StoreError> {
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
