//! Helpers shared by the store's integration tests.
#![allow(dead_code, missing_docs)]

use chronicle_store::{NewEvent, Store, StoreOptions};
use std::path::Path;

/// SplitMix64: a seeded generator for test schedules (the seed is printed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A seed from `CHRONICLE_SEED` or the process id and time, printed.
pub fn seed(name: &str) -> u64 {
    let seed = std::env::var("CHRONICLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::Instant::now();
            (std::process::id() as u64) << 32 ^ (t.elapsed().as_nanos() as u64) ^ 0x5EED
        });
    eprintln!("{name}: seed {seed} (rerun with CHRONICLE_SEED={seed})");
    seed
}

pub fn ev(text: &str) -> NewEvent {
    NewEvent::new(1, format!(r#"{{"v":"{text}"}}"#).into_bytes())
}

pub fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).expect("open store")
}

/// The PostgreSQL server the tests use: `CHRONICLE_TEST_POSTGRES`, set by
/// `scripts/test` (which starts a throwaway cluster with pg_virtualenv).
pub fn postgres_server() -> String {
    std::env::var("CHRONICLE_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "CHRONICLE_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL (pg_virtualenv, Debian package postgresql-common) and sets it"
        )
    })
}

/// A new, empty database on the test server; its URL.
pub fn fresh_postgres() -> String {
    let name = format!("chronicle_t_{}", uuid::Uuid::now_v7().simple());
    chronicle_store::create_postgres_database(&postgres_server(), &name)
        .expect("create a test database")
}

/// One database of a backend under test; `open` gives a new handle to the
/// same database each call (so a test can close and reopen it).
pub enum Db {
    Redb(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    pub fn redb() -> Self {
        Self::Redb(tempfile::tempdir().unwrap())
    }
    pub fn postgres() -> Self {
        Self::Postgres(fresh_postgres())
    }
    /// One database on each backend.
    pub fn all() -> Vec<Self> {
        vec![Self::redb(), Self::postgres()]
    }
    /// Positions there are sparse (numbered from each transaction's id):
    /// increasing, not dense as on redb.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
    pub fn location(&self) -> std::path::PathBuf {
        match self {
            Self::Redb(dir) => dir.path().join("db.redb"),
            Self::Postgres(url) => url.into(),
        }
    }
    pub fn open(&self) -> Store {
        self.open_with(StoreOptions::default())
    }
    pub fn open_with(&self, options: StoreOptions) -> Store {
        Store::open(self.location(), options).expect("open store")
    }
}
