//! [`BudgetLedger`] on Postgres: the statements of the SQLite ledger (`store::budget`), with
//! the project's row locked wherever SQLite relies on its database-wide write lock.

use super::{PgStore, get, lock_project};
use crate::io::{AttemptKey, Reservation};
use crate::ports::{Budget, BudgetLedger, HeldReservation, StoreError};
use crate::store::budget::{
    ADD_WITHIN_LIMIT, CLOSE_RESERVATION, ENSURE_PROJECT, INSERT_RESERVATION, MOVE_TO_SPENT,
    RAISE_RESERVATION, REFUSED, RELEASE_RUN_RESERVATIONS, RELEASE_RUN_TOTALS, RELEASED, RESERVED,
    Raise, SELECT_BUDGET, SELECT_COMMITTED, SELECT_HELD_BEFORE, SELECT_RESERVATION, SETTLED,
    Stored, UPSERT_LIMIT,
};
use crate::store::{map_sqlx, now, rfc3339, to_i64, to_u32, to_u64};
use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgRow};
use std::time::SystemTime;

/// Lock, in a fixed order, every project a run holds reservations in.
const LOCK_RUN_PROJECTS: &str = "SELECT project_id FROM project_budgets \
     WHERE project_id IN (SELECT project_id FROM budget_reservations \
     WHERE workflow_id = $1 AND run_id = $2 AND status = $3) \
     ORDER BY project_id FOR UPDATE";

fn stored_from_row(row: &PgRow) -> Result<Stored, StoreError> {
    Ok(Stored {
        project_id: get(row, "project_id")?,
        reserved_ms: get(row, "reserved_ms")?,
        status: get(row, "status")?,
        limit_ms: get(row, "limit_ms")?,
        committed_ms: get(row, "committed_ms")?,
    })
}

fn budget_from_row(row: &PgRow) -> Result<Budget, StoreError> {
    let limit_ms: Option<i64> = get(row, "limit_ms")?;
    Ok(Budget {
        project_id: get(row, "project_id")?,
        limit_ms: limit_ms
            .map(|l| to_u64(l, "project_budgets.limit_ms"))
            .transpose()?,
        reserved_ms: to_u64(get(row, "reserved_ms")?, "project_budgets.reserved_ms")?,
        spent_ms: to_u64(get(row, "spent_ms")?, "project_budgets.spent_ms")?,
    })
}

/// The reservation of `key` as the transaction sees it now.
async fn reservation(
    conn: &mut PgConnection,
    key: &AttemptKey,
) -> Result<Option<Stored>, StoreError> {
    sqlx::query(SELECT_RESERVATION)
        .bind(key.workflow_id.as_str())
        .bind(key.run_id.as_str())
        .bind(i64::from(key.attempt))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .map(|row| stored_from_row(&row))
        .transpose()
}

impl PgStore {
    /// Move a `reserved` reservation to `status`, taking its time off the project's reserved
    /// time and adding `spent_ms` (if any) to its spent time. Anything else is left alone.
    async fn close_reservation(
        &self,
        key: &AttemptKey,
        status: &str,
        spent_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let Some(stored) = reservation(&mut tx, key).await? else {
            return tx.commit().await.map_err(map_sqlx);
        };
        if stored.status != RESERVED {
            return tx.commit().await.map_err(map_sqlx);
        }
        lock_project(&mut tx, &stored.project_id).await?;
        // Read again under the lock: a settle, release or recorded outcome of the same attempt
        // may have closed it while this one waited.
        let Some(stored) = reservation(&mut tx, key).await? else {
            return tx.commit().await.map_err(map_sqlx);
        };
        if stored.status != RESERVED {
            return tx.commit().await.map_err(map_sqlx);
        }
        let now = now();
        let closed = sqlx::query(CLOSE_RESERVATION)
            .bind(status)
            .bind(spent_ms)
            .bind(now.as_str())
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .bind(RESERVED)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        if closed == 1 {
            sqlx::query(MOVE_TO_SPENT)
                .bind(stored.reserved_ms)
                .bind(spent_ms.unwrap_or(0))
                .bind(now.as_str())
                .bind(stored.project_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)
    }
}

/// Release every reservation of a run that is still held (see the SQLite version). Part of the
/// caller's transaction; locks the run's projects first, so the totals' subquery reads
/// reservations that nobody else is changing.
pub(super) async fn release_abandoned(
    conn: &mut PgConnection,
    workflow_id: &str,
    run_id: &str,
    now: &str,
) -> Result<u64, StoreError> {
    sqlx::query(LOCK_RUN_PROJECTS)
        .bind(workflow_id)
        .bind(run_id)
        .bind(RESERVED)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    sqlx::query(RELEASE_RUN_TOTALS)
        .bind(workflow_id)
        .bind(run_id)
        .bind(RESERVED)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let released = sqlx::query(RELEASE_RUN_RESERVATIONS)
        .bind(RELEASED)
        .bind(now)
        .bind(workflow_id)
        .bind(run_id)
        .bind(RESERVED)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(released.rows_affected())
}

#[async_trait]
impl BudgetLedger for PgStore {
    async fn reserve(
        &self,
        key: &AttemptKey,
        project_id: &str,
        gpu_ms: u64,
    ) -> Result<Reservation, StoreError> {
        let requested = to_i64(gpu_ms, "requested gpu_ms")?;
        let now = now();
        let mut tx = self.begin().await?;
        if let Some(stored) = reservation(&mut tx, key).await? {
            tx.commit().await.map_err(map_sqlx)?;
            return stored.answer();
        }
        sqlx::query(ENSURE_PROJECT)
            .bind(project_id)
            .bind(now.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        // Held to commit: no other reserve, settle or release of this project can interleave.
        lock_project(&mut tx, project_id).await?;
        // A call for the same key that held the lock before this one has answered it.
        if let Some(stored) = reservation(&mut tx, key).await? {
            tx.commit().await.map_err(map_sqlx)?;
            return stored.answer();
        }
        let granted = sqlx::query(ADD_WITHIN_LIMIT)
            .bind(requested)
            .bind(now.as_str())
            .bind(project_id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?
            .rows_affected()
            == 1;
        let (status, limit_ms, committed_ms) = if granted {
            (RESERVED, None, None)
        } else {
            let row = sqlx::query(SELECT_COMMITTED)
                .bind(project_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_sqlx)?;
            let limit: Option<i64> = get(&row, "limit_ms")?;
            let committed: i64 = get(&row, "committed_ms")?;
            if limit.is_none() {
                return Err(StoreError::Invalid(format!(
                    "project {project_id:?} has no limit, yet reserving {gpu_ms} ms failed"
                )));
            }
            (REFUSED, limit, Some(committed))
        };
        // A call for the same key under another project id holds another lock: if it inserted
        // first, its answer stands and this transaction rolls back.
        let inserted = sqlx::query(&format!("{INSERT_RESERVATION} ON CONFLICT DO NOTHING"))
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .bind(project_id)
            .bind(requested)
            .bind(status)
            .bind(limit_ms)
            .bind(committed_ms)
            .bind(now.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        if inserted == 0 {
            tx.rollback().await.map_err(map_sqlx)?;
            let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
            return match reservation(&mut conn, key).await? {
                Some(stored) => stored.answer(),
                None => Err(StoreError::Unavailable(format!(
                    "the reservation of {} vanished",
                    key.idempotency_key()
                ))),
            };
        }
        tx.commit().await.map_err(map_sqlx)?;
        Stored {
            project_id: project_id.to_owned(),
            reserved_ms: requested,
            status: status.to_owned(),
            limit_ms,
            committed_ms,
        }
        .answer()
    }

    async fn raise(
        &self,
        key: &AttemptKey,
        project_id: &str,
        to_ms: u64,
    ) -> Result<Reservation, StoreError> {
        let to = to_i64(to_ms, "raised gpu_ms")?;
        let mut tx = self.begin().await?;
        // Held to commit, as in `reserve`: the reservation read below is the one the update
        // changes, and no reserve, raise, settle or release of the project interleaves. A key
        // in another project fails below, whatever this lock held.
        lock_project(&mut tx, project_id).await?;
        let stored = reservation(&mut tx, key).await?;
        let (held, by) = match Raise::plan(key, project_id, stored.as_ref(), to)? {
            Raise::Held(held) => {
                tx.commit().await.map_err(map_sqlx)?;
                return Ok(Reservation::Granted { gpu_ms: held });
            }
            Raise::By { held, by } => (held, by),
        };
        let now = now();
        let granted = sqlx::query(ADD_WITHIN_LIMIT)
            .bind(by)
            .bind(now.as_str())
            .bind(project_id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?
            .rows_affected()
            == 1;
        if !granted {
            let row = sqlx::query(SELECT_COMMITTED)
                .bind(project_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_sqlx)?;
            tx.rollback().await.map_err(map_sqlx)?;
            return Raise::refused(
                project_id,
                get(&row, "limit_ms")?,
                get(&row, "committed_ms")?,
                held,
                to_ms,
            );
        }
        sqlx::query(RAISE_RESERVATION)
            .bind(to)
            .bind(now.as_str())
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .bind(RESERVED)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(Reservation::Granted { gpu_ms: to_ms })
    }

    async fn settle(&self, key: &AttemptKey, gpu_ms: u64) -> Result<(), StoreError> {
        let spent = to_i64(gpu_ms, "settled gpu_ms")?;
        self.close_reservation(key, SETTLED, Some(spent)).await
    }

    async fn release(&self, key: &AttemptKey) -> Result<(), StoreError> {
        self.close_reservation(key, RELEASED, None).await
    }

    async fn held_before(&self, before: SystemTime) -> Result<Vec<HeldReservation>, StoreError> {
        sqlx::query(SELECT_HELD_BEFORE)
            .bind(RESERVED)
            .bind(rfc3339(before))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(|row| {
                Ok(HeldReservation {
                    key: AttemptKey {
                        workflow_id: get(row, "workflow_id")?,
                        run_id: get(row, "run_id")?,
                        attempt: to_u32(get(row, "attempt")?, "budget_reservations.attempt")?,
                    },
                    project_id: get(row, "project_id")?,
                    reserved_ms: to_u64(
                        get(row, "reserved_ms")?,
                        "budget_reservations.reserved_ms",
                    )?,
                    created_at: get(row, "created_at")?,
                })
            })
            .collect()
    }

    async fn budget(&self, project_id: &str) -> Result<Option<Budget>, StoreError> {
        sqlx::query(SELECT_BUDGET)
            .bind(project_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .map(|row| budget_from_row(&row))
            .transpose()
    }

    async fn set_limit(
        &self,
        project_id: &str,
        limit_ms: Option<u64>,
    ) -> Result<Budget, StoreError> {
        let limit = limit_ms.map(|l| to_i64(l, "limit_ms")).transpose()?;
        let row = sqlx::query(UPSERT_LIMIT)
            .bind(project_id)
            .bind(limit)
            .bind(now())
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        budget_from_row(&row)
    }
}
