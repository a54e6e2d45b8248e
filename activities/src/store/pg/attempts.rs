//! [`AttemptStore`] on Postgres: the statements of the SQLite version (`store::attempts`).

use super::{PgStore, get};
use crate::io::{RecordAttempt, RecordOutcome};
use crate::ports::{AttemptStore, StoreError, StoredAttempt, StoredOutcome};
use crate::store::attempts::{
    INSERT_ATTEMPT, KEEP_EXISTING, MARK_SELECTED, Owner, REPLACE_DATA, SELECT_ATTEMPTS,
    SELECT_OUTCOMES, UPSERT_OUTCOME,
};
use crate::store::{from_json, map_sqlx, now, to_i64, to_json, to_u32, to_u64};
use async_trait::async_trait;
use retake_domain::contract::{AttemptRecord, AttemptStatus, Params};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgRow};

/// Insert `rec`; on a conflicting key, `on_conflict` decides ([`REPLACE_DATA`] or
/// [`KEEP_EXISTING`]).
async fn insert_attempt(
    conn: &mut PgConnection,
    owner: &Owner<'_>,
    rec: &AttemptRecord,
    on_conflict: &str,
    now: &str,
) -> Result<(), StoreError> {
    let sql = format!("{INSERT_ATTEMPT}{on_conflict}");
    sqlx::query(&sql)
        .bind(owner.segment_id)
        .bind(owner.project_id)
        .bind(owner.scene_type)
        .bind(owner.workflow_id)
        .bind(owner.run_id)
        .bind(i64::from(rec.attempt))
        .bind(to_i64(rec.seed, "seed")?)
        .bind(to_json(&rec.params)?)
        .bind(to_json(&rec.original_params)?)
        .bind(to_json(&rec.jitter)?)
        .bind(to_json(&rec.scores)?)
        .bind(to_json(&rec.failures)?)
        .bind(rec.passed)
        .bind(rec.status.as_str())
        .bind(to_i64(rec.gpu_ms, "gpu_ms")?)
        .bind(rec.output_uri.as_deref())
        .bind(rec.error.as_deref())
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

fn attempt_from_row(row: &PgRow) -> Result<StoredAttempt, StoreError> {
    let status: String = get(row, "status")?;
    let status: AttemptStatus =
        serde_json::from_value(Value::String(status.clone())).map_err(|_| {
            StoreError::Invalid(format!("retry_attempts.status: unknown status {status:?}"))
        })?;
    let params: Params = from_json(&get::<String>(row, "params")?, "retry_attempts.params")?;
    let original_params: Params = from_json(
        &get::<String>(row, "original_params")?,
        "retry_attempts.original_params",
    )?;
    let record = AttemptRecord {
        attempt: to_u32(get(row, "attempt")?, "retry_attempts.attempt")?,
        seed: to_u64(get(row, "seed")?, "retry_attempts.seed")?,
        params,
        original_params,
        jitter: from_json(&get::<String>(row, "jitter")?, "retry_attempts.jitter")?,
        scores: from_json(&get::<String>(row, "scores")?, "retry_attempts.scores")?,
        passed: get(row, "passed")?,
        failures: from_json(&get::<String>(row, "failures")?, "retry_attempts.failures")?,
        gpu_ms: to_u64(get(row, "gpu_ms")?, "retry_attempts.gpu_ms")?,
        status,
        output_uri: get(row, "output_uri")?,
        error: get(row, "error")?,
    };
    Ok(StoredAttempt {
        segment_id: get(row, "segment_id")?,
        project_id: get(row, "project_id")?,
        scene_type: get(row, "scene_type")?,
        workflow_id: get(row, "workflow_id")?,
        run_id: get(row, "run_id")?,
        selected: get(row, "selected")?,
        record,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn outcome_from_row(row: &PgRow) -> Result<StoredOutcome, StoreError> {
    let selected: Option<i64> = get(row, "selected_attempt")?;
    Ok(StoredOutcome {
        segment_id: get(row, "segment_id")?,
        project_id: get(row, "project_id")?,
        scene_type: get(row, "scene_type")?,
        workflow_id: get(row, "workflow_id")?,
        run_id: get(row, "run_id")?,
        outcome: get(row, "outcome")?,
        reason: get(row, "reason")?,
        selected_attempt: selected
            .map(|a| to_u32(a, "segment_retries.selected_attempt"))
            .transpose()?,
        gpu_ms_total: to_u64(get(row, "gpu_ms_total")?, "segment_retries.gpu_ms_total")?,
        report: get(row, "report")?,
        review: get(row, "review")?,
        decisions: from_json(
            &get::<String>(row, "decisions")?,
            "segment_retries.decisions",
        )?,
        updated_at: get(row, "updated_at")?,
    })
}

#[async_trait]
impl AttemptStore for PgStore {
    async fn record_attempt(&self, rec: &RecordAttempt) -> Result<(), StoreError> {
        if rec.key.attempt != rec.record.attempt {
            return Err(StoreError::Invalid(format!(
                "attempt key {} does not match the record's attempt {}",
                rec.key.idempotency_key(),
                rec.record.attempt
            )));
        }
        let owner = Owner {
            segment_id: &rec.segment_id,
            project_id: &rec.project_id,
            scene_type: &rec.scene_type,
            workflow_id: &rec.key.workflow_id,
            run_id: &rec.key.run_id,
        };
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        insert_attempt(&mut conn, &owner, &rec.record, REPLACE_DATA, &now()).await
    }

    /// One transaction, as on SQLite. The run's projects are locked first (by
    /// `release_abandoned`); the `segment_retries` upsert then serializes two calls for the same
    /// run, so the outcome and the selected mark always come from the same call.
    async fn record_outcome(&self, out: &RecordOutcome) -> Result<(), StoreError> {
        let result = &out.result;
        let now = now();
        let selected = result.selected_attempt.map(i64::from);
        let review = out.review.as_str();
        let decisions = to_json(&result.decisions)?;
        let owner = Owner {
            segment_id: &result.segment_id,
            project_id: &result.project_id,
            scene_type: &result.scene_type,
            workflow_id: &out.workflow_id,
            run_id: &out.run_id,
        };
        let mut tx = self.begin().await?;
        let released =
            super::budget::release_abandoned(&mut tx, &out.workflow_id, &out.run_id, &now).await?;
        if released > 0 {
            tracing::warn!(workflow_id = %out.workflow_id, run_id = %out.run_id, released, "released abandoned reservations");
        }
        // Attempts whose record_attempt was lost; recorded ones are kept as they are.
        for rec in &result.attempts {
            insert_attempt(&mut tx, &owner, rec, KEEP_EXISTING, &now).await?;
        }
        sqlx::query(UPSERT_OUTCOME)
            .bind(out.workflow_id.as_str())
            .bind(out.run_id.as_str())
            .bind(result.segment_id.as_str())
            .bind(result.project_id.as_str())
            .bind(result.scene_type.as_str())
            .bind(result.outcome.as_str())
            .bind(result.reason.as_str())
            .bind(selected)
            .bind(to_i64(result.gpu_ms_total, "gpu_ms_total")?)
            .bind(result.report.as_str())
            .bind(review)
            .bind(now.as_str())
            .bind(decisions)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(MARK_SELECTED)
            .bind(selected)
            .bind(now.as_str())
            .bind(out.workflow_id.as_str())
            .bind(out.run_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn attempts(&self, segment_id: &str) -> Result<Vec<StoredAttempt>, StoreError> {
        sqlx::query(SELECT_ATTEMPTS)
            .bind(segment_id)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(attempt_from_row)
            .collect()
    }

    async fn outcomes(&self, segment_id: &str) -> Result<Vec<StoredOutcome>, StoreError> {
        sqlx::query(SELECT_OUTCOMES)
            .bind(segment_id)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(outcome_from_row)
            .collect()
    }
}
