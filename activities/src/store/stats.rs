//! [`Reporting`] on SQL, the same statements on both backends, computed at scrape time.

use super::sql::stmt;
use super::{Backend, SqlxStore, map_sqlx, to_i64};
use crate::ports::{Known, Reporting, Stats, StoreError, VariationCount};
use async_trait::async_trait;
use retake_domain::adapt::{ArmStats, Evidence, EvidenceQuery};

// The same statements on both backends: COUNT is BIGINT on Postgres and SUM(BIGINT) is NUMERIC
// there, hence the CAST.
const BY_STATUS: &str = "SELECT status, COUNT(*) AS n, CAST(COALESCE(SUM(gpu_ms), 0) AS BIGINT) AS ms \
     FROM retry_attempts GROUP BY status";
/// Every scene type with whether it has a stored policy (1) or only recorded retries (0).
const SCENE_TYPES: &str = "SELECT scene_type AS id, CAST(MAX(stored) AS BIGINT) AS stored FROM (\
     SELECT scene_type, 1 AS stored FROM retry_policies \
     UNION ALL SELECT DISTINCT scene_type, 0 AS stored FROM segment_retries) known \
     GROUP BY scene_type ORDER BY scene_type";

/// Every project with whether it has a budget limit (1) or only reservations or recorded
/// retries (0).
const PROJECTS: &str = "SELECT project_id AS id, CAST(MAX(stored) AS BIGINT) AS stored FROM (\
     SELECT project_id, CASE WHEN limit_ms IS NULL THEN 0 ELSE 1 END AS stored \
     FROM project_budgets \
     UNION ALL SELECT DISTINCT project_id, 0 AS stored FROM segment_retries) known \
     GROUP BY project_id ORDER BY project_id";

const BY_OUTCOME: &str = "SELECT outcome, COUNT(*) AS n FROM segment_retries GROUP BY outcome";
const REFUSALS: &str = "SELECT COUNT(*) AS n FROM budget_reservations WHERE status = 'refused'";
const PENDING: &str = "SELECT COUNT(*) AS n FROM segment_retries WHERE review = 'pending'";
const COOLING: &str = "SELECT COUNT(*) AS n FROM workers WHERE cooling_until_ms > $1";
/// The nearest-rank quantile of the GPU time of the scene type's latest `$2` attempts that
/// generated (newest first by insertion, `id`, which, unlike `created_at`, does not depend on the
/// clocks of the workers that recorded them): the value at the smallest rank `r` with
/// `r ≥ q × n`, `q` given in billionths as `$3`, so the comparison is exact in integers (0.3 × 10
/// is rank 3, where floating point says 3.0000000000000004). Computed in the database, so one
/// row comes back instead of the whole window.
const GPU_MS_QUANTILE: &str = "WITH recent AS (SELECT gpu_ms FROM retry_attempts \
     WHERE scene_type = $1 AND (status IN ('passed', 'failed') OR (status = 'error' AND gpu_ms > 0 \
     AND COALESCE(error_type, '') <> 'BudgetExhausted')) ORDER BY id DESC LIMIT $2), \
     ranked AS (SELECT gpu_ms, ROW_NUMBER() OVER (ORDER BY gpu_ms) AS r, COUNT(*) OVER () AS n \
     FROM recent) \
     SELECT gpu_ms FROM ranked WHERE r * 1000000000 >= $3 * n ORDER BY r LIMIT 1";

/// Billionths in one, the unit `GPU_MS_QUANTILE` takes its quantile in.
const BILLION: f64 = 1e9;

/// Per failure kind and arm, the counts over the scene type's latest `$3` scored attempts with a
/// variation in scope `$2` (newest by `retry_attempts.id`, see `GPU_MS_QUANTILE`).
const EVIDENCE: &str = "SELECT failure_kind, arm, COUNT(*) AS n, \
     CAST(SUM(CASE WHEN passed THEN 1 ELSE 0 END) AS BIGINT) AS passes, \
     CAST(COALESCE(SUM(gain_e4), 0) AS BIGINT) AS gain_e4 \
     FROM attempt_arms WHERE scene_type = $1 AND scope = $2 AND attempt_id IN \
     (SELECT DISTINCT attempt_id FROM attempt_arms WHERE scene_type = $1 AND scope = $2 \
     ORDER BY attempt_id DESC LIMIT $3) \
     GROUP BY failure_kind, arm ORDER BY failure_kind, arm";

const VARIATIONS: &str = "SELECT scene_type, failure_kind, arm, COUNT(*) AS n, \
     CAST(SUM(CASE WHEN passed THEN 1 ELSE 0 END) AS BIGINT) AS passes FROM attempt_arms \
     GROUP BY scene_type, failure_kind, arm ORDER BY scene_type, failure_kind, arm";

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

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl<DB: Backend> Reporting for SqlxStore<DB> {
    async fn known(&self) -> Result<Known, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let mut list = async |sql: &'static str| -> Result<Vec<(String, bool)>, StoreError> {
            DB::fetch_all(&mut conn, stmt(sql))
                .await?
                .iter()
                .map(|row| {
                    let stored: i64 = DB::get(row, "stored")?;
                    Ok((DB::get(row, "id")?, stored == 1))
                })
                .collect()
        };
        let scene_types = list(SCENE_TYPES).await?;
        let projects = list(PROJECTS).await?;
        Ok(Known {
            scene_types,
            projects,
        })
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let mut stats = Stats::default();
        for row in DB::fetch_all(&mut conn, stmt(BY_STATUS)).await? {
            let status: String = DB::get(&row, "status")?;
            let n: i64 = DB::get(&row, "n")?;
            let ms: i64 = DB::get(&row, "ms")?;
            stats.attempts_by_status.insert(status, count(n));
            stats.gpu_ms += count(ms);
        }
        for row in DB::fetch_all(&mut conn, stmt(BY_OUTCOME)).await? {
            let outcome: String = DB::get(&row, "outcome")?;
            let n: i64 = DB::get(&row, "n")?;
            stats.runs_by_outcome.insert(outcome, count(n));
        }
        let refused = DB::fetch_one(&mut conn, stmt(REFUSALS)).await?;
        stats.budget_refusals = count(DB::get(&refused, "n")?);
        let pending = DB::fetch_one(&mut conn, stmt(PENDING)).await?;
        stats.reviews_pending = count(DB::get(&pending, "n")?);
        let now_ms = to_i64(crate::ports::now_ms(), "now_ms")?;
        let cooling = DB::fetch_one(&mut conn, stmt(COOLING).bind(now_ms)).await?;
        stats.workers_cooling = count(DB::get(&cooling, "n")?);
        for row in DB::fetch_all(&mut conn, stmt(VARIATIONS)).await? {
            stats.variations.push(VariationCount {
                scene_type: DB::get(&row, "scene_type")?,
                failure_kind: DB::get(&row, "failure_kind")?,
                arm: DB::get(&row, "arm")?,
                attempts: count(DB::get(&row, "n")?),
                passes: count(DB::get(&row, "passes")?),
            });
        }
        Ok(stats)
    }

    async fn gpu_ms_quantile(
        &self,
        scene_type: &str,
        q: f64,
        last: u32,
    ) -> Result<Option<u64>, StoreError> {
        check_quantile(q)?;
        let select = stmt(GPU_MS_QUANTILE)
            .bind(scene_type)
            .bind(i64::from(last))
            // q is in 0..=1 (checked above): 0..=10⁹ fits an i64.
            .bind((q * BILLION).round() as i64);
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let Some(row) = DB::fetch_optional(&mut conn, select).await? else {
            return Ok(None);
        };
        let ms: i64 = DB::get(&row, "gpu_ms")?;
        u64::try_from(ms)
            .map(Some)
            .map_err(|_| StoreError::Invalid(format!("retry_attempts.gpu_ms is negative: {ms}")))
    }

    async fn evidence(
        &self,
        scene_type: &str,
        query: &EvidenceQuery,
    ) -> Result<Evidence, StoreError> {
        let select = stmt(EVIDENCE)
            .bind(scene_type)
            .bind(query.scope.as_deref().unwrap_or(""))
            .bind(i64::from(query.window));
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let rows = DB::fetch_all(&mut conn, select)
            .await?
            .iter()
            .map(|row| {
                let n: i64 = DB::get(row, "n")?;
                let passes: i64 = DB::get(row, "passes")?;
                let gain_e4: i64 = DB::get(row, "gain_e4")?;
                Ok(ArmStats {
                    failure_kind: DB::get(row, "failure_kind")?,
                    arm: DB::get(row, "arm")?,
                    attempts: u32::try_from(n).unwrap_or(u32::MAX),
                    passes: u32::try_from(passes).unwrap_or(0),
                    gain_sum: gain_e4 as f64 / 10_000.0,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Evidence { rows })
    }
}
