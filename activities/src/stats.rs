//! Totals for the `/metrics` endpoint, computed from the store at scrape time so every worker and
//! API replica reports the same numbers.

use crate::ports::StoreError;
use crate::store::{SqlStore, map_sqlx};
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

#[async_trait]
impl Reporting for SqlStore {
    async fn stats(&self) -> Result<Stats, StoreError> {
        let pool = self.pool();
        let mut stats = Stats::default();
        for row in sqlx::query("SELECT status, COUNT(*) AS n, COALESCE(SUM(gpu_ms), 0) AS ms FROM retry_attempts GROUP BY status")
            .fetch_all(pool)
            .await
            .map_err(map_sqlx)?
        {
            let status: String = row.try_get("status").map_err(map_sqlx)?;
            stats.attempts_by_status.insert(status, count(row.try_get("n").map_err(map_sqlx)?));
            stats.gpu_ms += count(row.try_get("ms").map_err(map_sqlx)?);
        }
        for row in
            sqlx::query("SELECT outcome, COUNT(*) AS n FROM segment_retries GROUP BY outcome")
                .fetch_all(pool)
                .await
                .map_err(map_sqlx)?
        {
            let outcome: String = row.try_get("outcome").map_err(map_sqlx)?;
            stats
                .runs_by_outcome
                .insert(outcome, count(row.try_get("n").map_err(map_sqlx)?));
        }
        let refused: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM budget_reservations WHERE status = 'refused'")
                .fetch_one(pool)
                .await
                .and_then(|r| r.try_get("n"))
                .map_err(map_sqlx)?;
        stats.budget_refusals = count(refused);
        let pending: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM segment_retries WHERE review = 'pending'")
                .fetch_one(pool)
                .await
                .and_then(|r| r.try_get("n"))
                .map_err(map_sqlx)?;
        stats.reviews_pending = count(pending);
        Ok(stats)
    }
}
