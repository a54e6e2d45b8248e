//! [`AttemptStore`] on SQL, written once for both backends: `retry_attempts` holds one row per
//! attempt, `segment_retries` one per run's outcome. One transaction per write. In
//! `record_outcome` the run's projects are locked first (by `release_abandoned`); on Postgres the
//! `segment_retries` upsert then serializes two calls for the same run, so the outcome and the
//! selected mark always come from the same call.

use super::budget::{release_abandoned, settle_in};
use super::sql::{Db, stmt};
use super::{Backend, SqlxStore, from_json, map_sqlx, now, to_i64, to_json, to_u32, to_u64};
use crate::io::{AttemptKey, RecordAttempt, RecordOutcome};
use crate::ports::{
    AttemptStore, SegmentQuery, SegmentRow, StoreError, StoredAttempt, StoredOutcome,
};
use async_trait::async_trait;
use retake_domain::contract::{AttemptRecord, AttemptStatus, Params};
use serde_json::Value;

const INSERT_ATTEMPT: &str = "INSERT INTO retry_attempts (segment_id, project_id, \
     scene_type, workflow_id, run_id, attempt, seed, params, original_params, jitter, scores, \
     failures, passed, status, gpu_ms, output_uri, error, strategy, prompt, revises, breakdown, \
     error_type, note, variation, worker, selected, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $19, \
     $20, $21, $22, $23, $24, $25, $26, FALSE, $18, $18) ON CONFLICT (workflow_id, run_id, attempt) ";

/// On conflict, replace the data but keep `created_at` and `selected`.
const REPLACE_DATA: &str = "DO UPDATE SET segment_id = excluded.segment_id, \
     project_id = excluded.project_id, scene_type = excluded.scene_type, seed = excluded.seed, \
     params = excluded.params, original_params = excluded.original_params, \
     jitter = excluded.jitter, scores = excluded.scores, failures = excluded.failures, \
     passed = excluded.passed, status = excluded.status, gpu_ms = excluded.gpu_ms, \
     output_uri = excluded.output_uri, error = excluded.error, strategy = excluded.strategy, \
     prompt = excluded.prompt, revises = excluded.revises, breakdown = excluded.breakdown, \
     error_type = excluded.error_type, note = excluded.note, variation = excluded.variation, \
     worker = excluded.worker, updated_at = excluded.updated_at";

const KEEP_EXISTING: &str = "DO NOTHING";

/// A segment's attempts: runs ordered by their first inserted attempt row (the smallest `id`),
/// which follows the order the runs happened in even when timestamps tie; within a run, by
/// attempt number.
const SELECT_ATTEMPTS: &str = "SELECT a.segment_id, a.project_id, a.scene_type, \
     a.workflow_id, a.run_id, a.attempt, a.seed, a.params, a.original_params, a.jitter, a.scores, \
     a.failures, a.passed, a.status, a.gpu_ms, a.output_uri, a.error, a.strategy, a.prompt, \
     a.revises, a.breakdown, a.error_type, a.note, a.variation, a.worker, a.selected, a.created_at, a.updated_at FROM retry_attempts a WHERE a.segment_id = $1 \
     ORDER BY (SELECT MIN(b.id) FROM retry_attempts b \
     WHERE b.workflow_id = a.workflow_id AND b.run_id = a.run_id), a.attempt";

/// The attempt numbers of a run that are recorded.
const RECORDED_ATTEMPTS: &str =
    "SELECT attempt FROM retry_attempts WHERE workflow_id = $1 AND run_id = $2";

const UPSERT_OUTCOME: &str = "INSERT INTO segment_retries (workflow_id, run_id, \
     segment_id, project_id, scene_type, outcome, reason, selected_attempt, gpu_ms_total, report, \
     review, decisions, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $12, $12) \
     ON CONFLICT (workflow_id, run_id) DO UPDATE SET segment_id = excluded.segment_id, \
     project_id = excluded.project_id, scene_type = excluded.scene_type, \
     outcome = excluded.outcome, reason = excluded.reason, \
     selected_attempt = excluded.selected_attempt, gpu_ms_total = excluded.gpu_ms_total, \
     report = excluded.report, review = excluded.review, decisions = excluded.decisions, \
     updated_at = excluded.updated_at";

/// Exactly the selected attempt (none if there is none) is marked; only rows whose flag changes
/// are touched.
const MARK_SELECTED: &str = "UPDATE retry_attempts \
     SET selected = CASE WHEN attempt = $1 THEN TRUE ELSE FALSE END, updated_at = $2 \
     WHERE workflow_id = $3 AND run_id = $4 \
     AND selected <> CASE WHEN attempt = $1 THEN TRUE ELSE FALSE END";

/// Ordered by `created_at` (millisecond resolution), ties by workflow id and run id.
const SELECT_OUTCOMES: &str = "SELECT workflow_id, run_id, segment_id, project_id, \
     scene_type, outcome, reason, selected_attempt, gpu_ms_total, report, review, decisions, \
     updated_at FROM segment_retries WHERE segment_id = $1 \
     ORDER BY created_at, workflow_id, run_id";

/// Each segment's latest run (by `updated_at`, ties by workflow and run id) matching the
/// filters: `$1` a lower-case `LIKE` pattern (`\` escapes) over segment, project and scene type,
/// `$2` an outcome or `''`, `$3` 1 for pending reviews only; newest first, `$4` rows from `$5`.
/// The thumbnail is the selected attempt's output, else the run's last one with an output.
const SELECT_SEGMENTS: &str = "SELECT r.segment_id, r.project_id, r.scene_type, r.outcome, \
     r.review, r.report, r.updated_at, COALESCE(\
       (SELECT a.output_uri FROM retry_attempts a WHERE a.workflow_id = r.workflow_id \
          AND a.run_id = r.run_id AND a.attempt = r.selected_attempt), \
       (SELECT a.output_uri FROM retry_attempts a WHERE a.workflow_id = r.workflow_id \
          AND a.run_id = r.run_id AND a.output_uri IS NOT NULL ORDER BY a.attempt DESC LIMIT 1)\
     ) AS output_uri \
     FROM segment_retries r \
     WHERE NOT EXISTS (SELECT 1 FROM segment_retries n WHERE n.segment_id = r.segment_id \
          AND (n.updated_at > r.updated_at OR (n.updated_at = r.updated_at \
          AND (n.workflow_id > r.workflow_id OR (n.workflow_id = r.workflow_id \
          AND n.run_id > r.run_id))))) \
       AND (LOWER(r.segment_id) LIKE $1 ESCAPE '\\' OR LOWER(r.project_id) LIKE $1 ESCAPE '\\' \
          OR LOWER(r.scene_type) LIKE $1 ESCAPE '\\') \
       AND ($2 = '' OR r.outcome = $2) \
       AND ($3 = 0 OR r.review = 'pending') \
     ORDER BY r.updated_at DESC, r.segment_id \
     LIMIT $4 OFFSET $5";

/// `text` as a `LIKE` pattern matching it anywhere, any case, `%` and `_` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Where an attempt belongs.
struct Owner<'a> {
    segment_id: &'a str,
    project_id: &'a str,
    scene_type: &'a str,
    workflow_id: &'a str,
    run_id: &'a str,
}

/// Insert `rec`; on a conflicting key, `on_conflict` decides ([`REPLACE_DATA`] or
/// [`KEEP_EXISTING`]).
async fn insert_attempt<DB: Db>(
    conn: &mut DB::Connection,
    owner: &Owner<'_>,
    rec: &AttemptRecord,
    on_conflict: &str,
    now: &str,
) -> Result<(), StoreError> {
    let insert = stmt(format!("{INSERT_ATTEMPT}{on_conflict}"))
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
        .bind(rec.strategy.map(|s| s.as_str()))
        .bind(rec.prompt.as_deref())
        .bind(rec.revises.map(i64::from))
        .bind(to_json(&rec.breakdown)?)
        .bind(rec.error_type.as_deref())
        .bind(rec.note.as_deref())
        .bind(rec.variation.as_ref().map(to_json).transpose()?.as_deref())
        .bind(rec.worker.as_deref());
    DB::execute(conn, insert).await?;
    Ok(())
}

const DELETE_ARMS: &str =
    "DELETE FROM attempt_arms WHERE workflow_id = $1 AND run_id = $2 AND attempt = $3";

const INSERT_ARM: &str = "INSERT INTO attempt_arms (workflow_id, run_id, attempt, attempt_id, \
     scene_type, scope, failure_kind, arm, passed, gain_e4) \
     SELECT $1, $2, $3, id, $4, $5, $6, $7, $8, $9 FROM retry_attempts \
     WHERE workflow_id = $1 AND run_id = $2 AND attempt = $3 \
     ON CONFLICT (workflow_id, run_id, attempt, failure_kind, arm) DO NOTHING";

/// Count the attempt's arms for insights (see `adapt`): one row per target failure kind and arm
/// of a scored attempt with a variation; nothing for errors, aborts and earlier runs' records.
/// `replace` drops the rows an earlier write of the same attempt left.
async fn count_arms<DB: Db>(
    conn: &mut DB::Connection,
    owner: &Owner<'_>,
    rec: &AttemptRecord,
    replace: bool,
) -> Result<(), StoreError> {
    let key = |s: &'static str| {
        stmt(s)
            .bind(owner.workflow_id)
            .bind(owner.run_id)
            .bind(i64::from(rec.attempt))
    };
    if replace {
        DB::execute(conn, key(DELETE_ARMS)).await?;
    }
    let scored = matches!(rec.status, AttemptStatus::Passed | AttemptStatus::Failed);
    let Some(v) = rec.variation.as_ref().filter(|_| scored) else {
        return Ok(());
    };
    // Gains are within -1..=1: ten-thousandths fit any integer.
    let gain_e4 = (v.gain.unwrap_or(0.0) * 10_000.0).round() as i64;
    for kind in &v.targets {
        for arm in &v.arms {
            let insert = key(INSERT_ARM)
                .bind(owner.scene_type)
                .bind(v.scope.as_deref().unwrap_or(""))
                .bind(kind.as_str())
                .bind(arm.as_str())
                .bind(rec.passed)
                .bind(gain_e4);
            DB::execute(conn, insert).await?;
        }
    }
    Ok(())
}

fn attempt_from_row<DB: Db>(row: &DB::Row) -> Result<StoredAttempt, StoreError> {
    let status: String = DB::get(row, "status")?;
    let status: AttemptStatus =
        serde_json::from_value(Value::String(status.clone())).map_err(|_| {
            StoreError::Invalid(format!("retry_attempts.status: unknown status {status:?}"))
        })?;
    let params: Params = from_json(&DB::get::<String>(row, "params")?, "retry_attempts.params")?;
    let original_params: Params = from_json(
        &DB::get::<String>(row, "original_params")?,
        "retry_attempts.original_params",
    )?;
    let record = AttemptRecord {
        attempt: to_u32(DB::get(row, "attempt")?, "retry_attempts.attempt")?,
        seed: to_u64(DB::get(row, "seed")?, "retry_attempts.seed")?,
        params,
        original_params,
        jitter: from_json(&DB::get::<String>(row, "jitter")?, "retry_attempts.jitter")?,
        scores: from_json(&DB::get::<String>(row, "scores")?, "retry_attempts.scores")?,
        passed: DB::get(row, "passed")?,
        failures: from_json(
            &DB::get::<String>(row, "failures")?,
            "retry_attempts.failures",
        )?,
        gpu_ms: to_u64(DB::get(row, "gpu_ms")?, "retry_attempts.gpu_ms")?,
        status,
        output_uri: DB::get(row, "output_uri")?,
        error: DB::get(row, "error")?,
        strategy: DB::get::<Option<String>>(row, "strategy")?
            .map(|s| {
                serde_json::from_value(Value::String(s.clone())).map_err(|_| {
                    StoreError::Invalid(format!("retry_attempts.strategy: unknown strategy {s:?}"))
                })
            })
            .transpose()?,
        prompt: DB::get(row, "prompt")?,
        revises: DB::get::<Option<i64>>(row, "revises")?
            .map(|k| to_u32(k, "retry_attempts.revises"))
            .transpose()?,
        breakdown: from_json(
            &DB::get::<String>(row, "breakdown")?,
            "retry_attempts.breakdown",
        )?,
        error_type: DB::get(row, "error_type")?,
        note: DB::get(row, "note")?,
        variation: DB::get::<Option<String>>(row, "variation")?
            .map(|v| from_json(&v, "retry_attempts.variation"))
            .transpose()?,
        worker: DB::get(row, "worker")?,
    };
    Ok(StoredAttempt {
        segment_id: DB::get(row, "segment_id")?,
        project_id: DB::get(row, "project_id")?,
        scene_type: DB::get(row, "scene_type")?,
        workflow_id: DB::get(row, "workflow_id")?,
        run_id: DB::get(row, "run_id")?,
        selected: DB::get(row, "selected")?,
        record,
        created_at: DB::get(row, "created_at")?,
        updated_at: DB::get(row, "updated_at")?,
    })
}

fn outcome_from_row<DB: Db>(row: &DB::Row) -> Result<StoredOutcome, StoreError> {
    let selected: Option<i64> = DB::get(row, "selected_attempt")?;
    Ok(StoredOutcome {
        segment_id: DB::get(row, "segment_id")?,
        project_id: DB::get(row, "project_id")?,
        scene_type: DB::get(row, "scene_type")?,
        workflow_id: DB::get(row, "workflow_id")?,
        run_id: DB::get(row, "run_id")?,
        outcome: DB::get(row, "outcome")?,
        reason: DB::get(row, "reason")?,
        selected_attempt: selected
            .map(|a| to_u32(a, "segment_retries.selected_attempt"))
            .transpose()?,
        gpu_ms_total: to_u64(
            DB::get(row, "gpu_ms_total")?,
            "segment_retries.gpu_ms_total",
        )?,
        report: DB::get(row, "report")?,
        review: DB::get(row, "review")?,
        decisions: from_json(
            &DB::get::<String>(row, "decisions")?,
            "segment_retries.decisions",
        )?,
        updated_at: DB::get(row, "updated_at")?,
    })
}

/// Insert or replace the attempt `rec` within the caller's write transaction `tx`.
async fn record_in<DB: Backend>(
    tx: &mut DB::Connection,
    rec: &RecordAttempt,
) -> Result<(), StoreError> {
    if rec.key.attempt != rec.record.attempt {
        return Err(StoreError::Invalid(format!(
            "attempt key {} does not match the record's attempt {}",
            rec.key.idempotency_key(),
            rec.record.attempt
        )));
    }
    let owner = Owner {
        segment_id: rec.segment_id.as_str(),
        project_id: rec.project_id.as_str(),
        scene_type: rec.scene_type.as_str(),
        workflow_id: &rec.key.workflow_id,
        run_id: &rec.key.run_id,
    };
    insert_attempt::<DB>(tx, &owner, &rec.record, REPLACE_DATA, &now()).await?;
    count_arms::<DB>(tx, &owner, &rec.record, true).await
}

#[async_trait]
impl<DB: Backend> AttemptStore for SqlxStore<DB> {
    async fn record_attempt(&self, rec: &RecordAttempt) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        record_in::<DB>(&mut tx, rec).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn record_settled(&self, rec: &RecordAttempt, gpu_ms: u64) -> Result<(), StoreError> {
        let mut tx = DB::begin_write(&self.pool).await?;
        // The project's lock first, then the attempt's rows: the order `record_outcome` takes.
        settle_in::<DB>(&mut tx, &rec.key, gpu_ms).await?;
        record_in::<DB>(&mut tx, rec).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    async fn record_outcome(&self, out: &RecordOutcome) -> Result<(), StoreError> {
        let result = &out.result;
        let now = now();
        let selected = result.selected_attempt.map(i64::from);
        let review = out.review.as_str();
        let decisions = to_json(&result.decisions)?;
        let owner = Owner {
            segment_id: result.segment_id.as_str(),
            project_id: result.project_id.as_str(),
            scene_type: result.scene_type.as_str(),
            workflow_id: &out.workflow_id,
            run_id: &out.run_id,
        };
        let mut tx = DB::begin_write(&self.pool).await?;
        // An attempt in the result used its GPU time: bill it (a settle that happened already
        // changes nothing) before the safety net below gives back what is still held. Whatever
        // a crash re-ran or lost, the run's spent time is then its attempts' GPU time.
        for rec in result.attempts.iter().filter(|rec| rec.gpu_ms > 0) {
            let key = AttemptKey {
                workflow_id: out.workflow_id.clone(),
                run_id: out.run_id.clone(),
                attempt: rec.attempt,
            };
            settle_in::<DB>(&mut tx, &key, rec.gpu_ms).await?;
        }
        let released =
            release_abandoned::<DB>(&mut tx, &out.workflow_id, &out.run_id, &now).await?;
        if released > 0 {
            tracing::warn!(workflow_id = %out.workflow_id, run_id = %out.run_id, released, "released abandoned reservations");
        }
        // Attempts whose record_attempt was lost; recorded ones are kept as they are (one read
        // of which are there instead of an insert that changes nothing per attempt).
        let recorded = stmt(RECORDED_ATTEMPTS)
            .bind(out.workflow_id.as_str())
            .bind(out.run_id.as_str());
        let recorded = DB::fetch_all(&mut tx, recorded)
            .await?
            .iter()
            .map(|row| DB::get::<i64>(row, "attempt"))
            .collect::<Result<Vec<i64>, StoreError>>()?;
        for rec in &result.attempts {
            if recorded.contains(&i64::from(rec.attempt)) {
                continue;
            }
            insert_attempt::<DB>(&mut tx, &owner, rec, KEEP_EXISTING, &now).await?;
            count_arms::<DB>(&mut tx, &owner, rec, false).await?;
        }
        let upsert = stmt(UPSERT_OUTCOME)
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
            .bind(decisions);
        DB::execute(&mut tx, upsert).await?;
        let mark = stmt(MARK_SELECTED)
            .bind(selected)
            .bind(now.as_str())
            .bind(out.workflow_id.as_str())
            .bind(out.run_id.as_str());
        DB::execute(&mut tx, mark).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Runs ordered by their first inserted attempt row (the smallest `id`), which follows the
    /// order the runs happened in even when timestamps tie; within a run, by attempt number.
    async fn attempts(&self, segment_id: &str) -> Result<Vec<StoredAttempt>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, stmt(SELECT_ATTEMPTS).bind(segment_id))
            .await?
            .iter()
            .map(attempt_from_row::<DB>)
            .collect()
    }

    /// Ordered by `created_at` (millisecond resolution), ties by workflow id and run id.
    async fn outcomes(&self, segment_id: &str) -> Result<Vec<StoredOutcome>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, stmt(SELECT_OUTCOMES).bind(segment_id))
            .await?
            .iter()
            .map(outcome_from_row::<DB>)
            .collect()
    }

    async fn segments(&self, query: &SegmentQuery) -> Result<Vec<SegmentRow>, StoreError> {
        let select = stmt(SELECT_SEGMENTS)
            .bind(contains_pattern(query.search.trim()))
            .bind(query.outcome.clone().unwrap_or_default())
            .bind(i64::from(query.pending_review))
            .bind(i64::from(query.limit))
            .bind(i64::from(query.offset));
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, select)
            .await?
            .iter()
            .map(|row| {
                Ok(SegmentRow {
                    segment_id: DB::get(row, "segment_id")?,
                    project_id: DB::get(row, "project_id")?,
                    scene_type: DB::get(row, "scene_type")?,
                    outcome: DB::get(row, "outcome")?,
                    review: DB::get(row, "review")?,
                    report: DB::get(row, "report")?,
                    updated_at: DB::get(row, "updated_at")?,
                    output_uri: DB::get(row, "output_uri")?,
                })
            })
            .collect()
    }
}
