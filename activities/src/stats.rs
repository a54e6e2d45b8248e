//! Totals for the `/metrics` endpoint. [`Stats`] and [`Reporting`] live with the other ports
//! (and are re-exported here for the callers that name them by this path).

pub use crate::ports::{Reporting, Stats};

use crate::ports::StoreError;
use crate::store::{PgStore, SqlStore, map_sqlx};
use async_trait::async_trait;
use sqlx::Row;

/// Refuse a quantile outside `0..=1` (NaN included) before asking the database anything.
fn check_quantile(q: f64) -> Result<(), StoreError> {
    if (0.0..=1.0).contains(&q) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "a quantile must be between 0 and 1, not {q}"
        )))
    }
}

/// The nearest-rank `q`-quantile (`q` in `0..=1`) of `values`, in any order: the value at rank
/// `ceil(q * n)` (at least 1) of the sorted values. The product is nudged down by far less than
/// one rank, so that e.g. 0.3 × 10, which is 3.0000000000000004 in floating point, is rank 3
/// and not 4.
pub(crate) fn nearest_rank(mut values: Vec<u64>, q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    // q is in 0..=1 and n a row count: the rank is in 0..=n, so the casts lose nothing.
    let rank = ((q * n as f64 - 1e-9).ceil() as usize).clamp(1, n);
    Some(values[rank - 1])
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
/// Newest first by insertion (`id`), which, unlike `created_at`, does not depend on the clocks
/// of the workers that recorded the attempts.
const RECENT_GPU_MS: &str = "SELECT gpu_ms FROM retry_attempts WHERE scene_type = $1 \
     AND (status IN ('passed', 'failed') OR (status = 'error' AND gpu_ms > 0)) \
     ORDER BY id DESC LIMIT $2";

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

            async fn gpu_ms_quantile(
                &self,
                scene_type: &str,
                q: f64,
                last: u32,
            ) -> Result<Option<u64>, StoreError> {
                check_quantile(q)?;
                let rows = sqlx::query(RECENT_GPU_MS)
                    .bind(scene_type)
                    .bind(i64::from(last))
                    .fetch_all(self.pool())
                    .await
                    .map_err(map_sqlx)?;
                let values = rows
                    .iter()
                    .map(|row| {
                        let ms: i64 = row.try_get("gpu_ms").map_err(map_sqlx)?;
                        u64::try_from(ms).map_err(|_| {
                            StoreError::Invalid(format!("retry_attempts.gpu_ms is negative: {ms}"))
                        })
                    })
                    .collect::<Result<Vec<u64>, StoreError>>()?;
                Ok(nearest_rank(values, q))
            }
        }
    };
}

stats_impl!(SqlStore);
stats_impl!(PgStore);
