//! The directory of live workers (`chronicle_workers`, schema version 4):
//! each process that claims runs registers itself with its spare capacity
//! and renews the row with its heartbeat; a process that offers runs
//! names one of them in the offer's notification, so that one worker
//! claims instead of every worker (all but one of which would claim
//! nothing: a claim per worker per offer is what made many workers cost
//! the database more than one — see the README's "Scaling out").
//!
//! The offer itself is unchanged — the run's lease is free, any worker may
//! claim it — so a named worker that died, or is full, delays the run by
//! at most the workers' poll (each claims at least once a second), and a
//! full worker passes the offer on to every worker at once
//! ([`PgStore::announce_offers`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::writes::CHANNEL_CONTROL;
use super::{PgStore, pg_error};
use crate::error::StoreError;

/// How old the list of live workers an offering process names workers
/// from may be before it is read again, as the offers need it.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// The live workers with spare capacity, as last read; named in turn.
#[derive(Default)]
pub(crate) struct Directory {
    listing: Mutex<Listing>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Listing {
    owners: Vec<String>,
    loaded_at: Option<Instant>,
    loading: bool,
}

impl Directory {
    /// The worker the next offer names: the live workers with spare
    /// capacity in turn, as last read; `None` (every worker is woken)
    /// while none is known. When the list is older than [`REFRESH`] it is
    /// read again in the background (on the caller's runtime, from
    /// `pool`), and this offer goes by the old one.
    pub(crate) fn pick(
        self: &Arc<Self>,
        pool: &deadpool_postgres::Pool,
        target: &str,
    ) -> Option<String> {
        let mut l = self.listing.lock().unwrap_or_else(|e| e.into_inner());
        if !l.loading && l.loaded_at.is_none_or(|t| t.elapsed() >= REFRESH) {
            l.loading = true;
            let (me, pool, target) = (self.clone(), pool.clone(), target.to_string());
            tokio::spawn(async move {
                let read = live_workers(&pool, &target).await;
                let mut l = me.listing.lock().unwrap_or_else(|e| e.into_inner());
                l.loading = false;
                match read {
                    Ok(owners) => {
                        l.owners = owners;
                        l.loaded_at = Some(Instant::now());
                    }
                    Err(e) => {
                        // Every worker is woken until the list is read.
                        tracing::debug!(%target, error = %e, "cannot read the live workers");
                        l.owners.clear();
                        l.loaded_at = Some(Instant::now());
                    }
                }
            });
        }
        if l.owners.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % l.owners.len();
        Some(l.owners[i].clone())
    }
}

/// The workers whose registration is live and that have spare capacity,
/// in owner order.
async fn live_workers(
    pool: &deadpool_postgres::Pool,
    target: &str,
) -> Result<Vec<String>, StoreError> {
    let conn = PgStore::conn(pool, target).await?;
    let rows = conn
        .query(
            "SELECT owner FROM chronicle_workers \
             WHERE expires_at > now() AND spare > 0 ORDER BY owner",
            &[],
        )
        .await
        .map_err(|e| pg_error(target, e))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        // A name the notification's format cannot carry is not named.
        .filter(|o| !o.contains(':') && !o.is_empty())
        .collect())
}

impl PgStore {
    /// Register worker `owner` as live for `ttl_ms` milliseconds from now,
    /// able to hold `spare` more runs; registrations dead for an hour are
    /// removed meanwhile.
    ///
    /// Errors: storage errors.
    pub fn register_worker(
        &self,
        owner: &str,
        ttl_ms: u64,
        spare: usize,
    ) -> Result<(), StoreError> {
        self.rows(
            "WITH gone AS (DELETE FROM chronicle_workers \
               WHERE expires_at < now() - interval '1 hour' AND owner <> $1) \
             INSERT INTO chronicle_workers (owner, expires_at, spare) \
             VALUES ($1, now() + $2 * interval '1 millisecond', $3) \
             ON CONFLICT (owner) DO UPDATE \
               SET expires_at = EXCLUDED.expires_at, spare = EXCLUDED.spare"
                .to_string(),
            vec![
                Box::new(owner.to_string()),
                Box::new(ttl_ms as f64),
                Box::new(spare.min(i32::MAX as usize) as i32),
            ],
        )?;
        Ok(())
    }

    /// Remove worker `owner`'s registration (it stops): no offer names it
    /// any more. Errors: storage errors.
    pub fn unregister_worker(&self, owner: &str) -> Result<(), StoreError> {
        self.rows(
            "DELETE FROM chronicle_workers WHERE owner = $1".to_string(),
            vec![Box::new(owner.to_string())],
        )?;
        Ok(())
    }

    /// Wake every worker to claim offered runs (a notification that offers
    /// without naming a worker, and announces no events).
    ///
    /// Errors: storage errors.
    pub fn announce_offers(&self) -> Result<(), StoreError> {
        let payload = format!("0:0:{}:o:", self.published.writer());
        self.rows(
            "SELECT pg_notify($1, $2)".to_string(),
            vec![Box::new(CHANNEL_CONTROL.to_string()), Box::new(payload)],
        )?;
        Ok(())
    }
}
