//! Totals for the `/metrics` endpoint, computed from the store at scrape time so every worker and
//! API replica reports the same numbers.

use crate::ports::StoreError;
use crate::store::{PgStore, SqlStore, map_sqlx};
use async_trait::async_trait;
use serde::Serialize;
use sqlx::Row;
use std::collections::BTreeMap;

/// Totals over every recorded retry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Recorded attempts by status (`passed`, `failed`, `error`, `aborted`).
    pub attempts_by_status: BTreeMap<String, u64>,
    /// Retry runs by outcome (`passed` = segments fixed, `escalated`, ...).
    pub runs_by_outcome: BTreeMap<String, u64>,
    /// GPU milliseconds of every recorded attempt.
    pub gpu_ms: u64,
    /// Reservations the budget refused.
    pub budget_refusals: u64,
    /// Escalations awaiting a human decision.
    pub reviews_pending: u64,
}

/// Read-only totals over the store.
#[async_trait]
pub trait Reporting: Send + Sync {
    async fn stats(&self) -> Result<Stats, StoreError>;
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// The same statements on both backends: COUNT is BIGINT on Postgres and SUM(BIGINT) is NUMERIC
// there, hence the CAST.
const BY_STATUS: &str = "SELECT status, COUNT(*) AS n, CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) AS ms \
     FROM retry_attempts GROUP BY status";
const BY_OUTCOME: &str = "SELECT outcome, COUNT(*) AS n FROM segment_retries GROUP BY outcome";
const REFUSALS: &str = "SELECT COUNT(*) AS n FROM budget_reservations WHERE status = 'refused'";
const PENDING: &str = "SELECT COUNT(*) AS n FROM segment_retries WHERE review = 'pending'";

macro_rules! stats_impl {
    ($store:ty) => {
        #[async_trait]
        impl Reporting for $store {
            async fn stats(&self) -> Result<Stats, StoreError> {
                let pool = self.pool();
                let mut stats = Stats::default();
                for row in sqlx::query(BY_STATUS)
                    .fetch_all(pool)
                    .await
                    .map_err(map_sqlx)?
                {
                    let status: String = row.try_get("status").map_err(map_sqlx)?;
                    let n: i64 = row.try_get("n").map_err(map_sqlx)?;
                    let ms: i64 = row.try_get("ms").map_err(map_sqlx)?;
                    stats.attempts_by_status.insert(status, count(n));
                    stats.gpu_ms += count(ms);
                }
                for row in sqlx::query(BY_OUTCOME)
                    .fetch_all(pool)
                    .await
                    .map_err(map_sqlx)?
                {
                    let outcome: String = row.try_get("outcome").map_err(map_sqlx)?;
                    let n: i64 = row.try_get("n").map_err(map_sqlx)?;
                    stats.runs_by_outcome.insert(outcome, count(n));
                }
                let refused: i64 = sqlx::query(REFUSALS)
                    .fetch_one(pool)
                    .await
                    .and_then(|r| r.try_get("n"))
                    .map_err(map_sqlx)?;
                stats.budget_refusals = count(refused);
                let pending: i64 = sqlx::query(PENDING)
                    .fetch_one(pool)
                    .await
                    .and_then(|r| r.try_get("n"))
                    .map_err(map_sqlx)?;
                stats.reviews_pending = count(pending);
                Ok(stats)
            }
        }
    };
}

stats_impl!(SqlStore);
stats_impl!(PgStore);
