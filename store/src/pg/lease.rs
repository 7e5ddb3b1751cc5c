//! Leases on PostgreSQL: claimed with `FOR UPDATE SKIP LOCKED` (two
//! workers never claim the same run, and neither waits for the other),
//! renewed in one statement per heartbeat, compared against the
//! database's clock.

use super::PgStore;
use crate::error::StoreError;

/// One run's lease as the database holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LeaseInfo {
    /// The run's stream key.
    pub run: String,
    /// The worker holding it (`None`: offered, no holder yet).
    pub owner: Option<String>,
    /// Take-overs so far.
    pub epoch: u64,
    /// True while the lease has not expired.
    pub live: bool,
    /// Milliseconds until it expires (negative: expired that long ago).
    pub expires_in_ms: i64,
}

impl PgStore {
    /// Claim up to `max` runs whose lease is free or expired (only among
    /// `only`, when given), oldest expiry first, for `owner`, for `ttl_ms`.
    /// Returns `(run, epoch)` of each.
    pub fn claim_leases(
        &self,
        owner: &str,
        max: usize,
        ttl_ms: u64,
        only: Option<Vec<String>>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        // Two statements, each with a plan of its own (this client's plans
        // are generic): given runs are looked up by key, the others found
        // by expiry.
        let mut params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>> = vec![
            Box::new(owner.to_string()),
            Box::new(max.min(i64::MAX as usize) as i64),
            Box::new(ttl_ms as f64),
        ];
        let which = match only {
            Some(runs) => {
                params.push(Box::new(runs));
                "run = ANY($4) AND expires_at <= now()"
            }
            None => "expires_at <= now()",
        };
        let rows = self.rows(
            format!(
                "WITH free AS ( \
                   SELECT run FROM chronicle_leases WHERE {which} \
                   ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE chronicle_leases l SET owner = $1, epoch = l.epoch + 1, \
                   expires_at = now() + $3 * interval '1 millisecond' \
                 FROM free WHERE l.run = free.run RETURNING l.run, l.epoch"
            ),
            params,
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// Renew `owner`'s live leases `(run, epoch)` for `ttl_ms`; returns
    /// the runs renewed (the others are lost: expired or taken over).
    pub fn renew_leases(
        &self,
        owner: &str,
        held: Vec<(String, u64)>,
        ttl_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let (runs, epochs): (Vec<String>, Vec<i64>) =
            held.into_iter().map(|(r, e)| (r, e as i64)).unzip();
        let rows = self.rows(
            "UPDATE chronicle_leases l SET expires_at = now() + $4 * interval '1 millisecond' \
             FROM unnest($2::text[], $3::int8[]) AS h(run, epoch) \
             WHERE l.run = ANY($2) AND l.run = h.run AND l.epoch = h.epoch \
               AND l.owner = $1 AND l.expires_at > now() \
             RETURNING l.run"
                .to_string(),
            vec![
                Box::new(owner.to_string()),
                Box::new(runs),
                Box::new(epochs),
                Box::new(ttl_ms as f64),
            ],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Give up `owner`'s lease of `run` at `epoch`: any worker may claim
    /// it at once.
    pub fn release_lease(&self, run: &str, owner: &str, epoch: u64) -> Result<(), StoreError> {
        self.rows(
            "UPDATE chronicle_leases SET owner = NULL, expires_at = 'epoch' \
             WHERE run = $1 AND owner = $2 AND epoch = $3"
                .to_string(),
            vec![
                Box::new(run.to_string()),
                Box::new(owner.to_string()),
                Box::new(epoch as i64),
            ],
        )?;
        Ok(())
    }

    /// The lease of `run`, if it has one.
    pub fn lease(&self, run: &str) -> Result<Option<LeaseInfo>, StoreError> {
        let rows = self.rows(
            "SELECT run, owner, epoch, expires_at > now(), \
               (extract(epoch FROM expires_at - now()) * 1000)::int8 \
             FROM chronicle_leases WHERE run = $1"
                .to_string(),
            vec![Box::new(run.to_string())],
        )?;
        Ok(rows.first().map(|r| LeaseInfo {
            run: r.get(0),
            owner: r.get(1),
            epoch: r.get::<_, i64>(2) as u64,
            live: r.get(3),
            expires_in_ms: r.get(4),
        }))
    }
}
