//! [`BudgetLedger`] on SQL: `project_budgets` holds each project's totals, `budget_reservations`
//! one row per attempt key, which makes every operation idempotent. The statements are shared
//! with [`PgStore`](super::PgStore).

use super::{SqlStore, get, map_sqlx, now, rfc3339, to_i64, to_u32, to_u64};
use crate::io::{AttemptKey, Reservation};
use crate::ports::{Budget, BudgetLedger, HeldReservation, StoreError};
use async_trait::async_trait;
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;
use std::time::SystemTime;

pub(super) const RESERVED: &str = "reserved";
pub(super) const SETTLED: &str = "settled";
pub(super) const RELEASED: &str = "released";
pub(super) const REFUSED: &str = "refused";

pub(super) const SELECT_RESERVATION: &str = "SELECT project_id, reserved_ms, status, limit_ms, \
     committed_ms FROM budget_reservations WHERE workflow_id = $1 AND run_id = $2 AND attempt = $3";

pub(super) const INSERT_RESERVATION: &str = "INSERT INTO budget_reservations (workflow_id, \
     run_id, attempt, project_id, reserved_ms, spent_ms, status, limit_ms, committed_ms, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $9)";

/// Create the project's row (no limit) unless it exists.
pub(super) const ENSURE_PROJECT: &str = "INSERT INTO project_budgets (project_id, limit_ms, \
     reserved_ms, spent_ms, updated_at) VALUES ($1, NULL, 0, 0, $2) \
     ON CONFLICT (project_id) DO NOTHING";

/// Check and add in one statement: it changes one row exactly when the reservation is granted.
pub(super) const ADD_WITHIN_LIMIT: &str = "UPDATE project_budgets \
     SET reserved_ms = reserved_ms + $1, updated_at = $2 \
     WHERE project_id = $3 AND (limit_ms IS NULL OR reserved_ms + spent_ms + $1 <= limit_ms)";

/// What a refusal saw.
pub(super) const SELECT_COMMITTED: &str = "SELECT limit_ms, reserved_ms + spent_ms AS committed_ms \
     FROM project_budgets WHERE project_id = $1";

/// Set a held reservation to its raised amount (the project's totals took the difference).
pub(super) const RAISE_RESERVATION: &str = "UPDATE budget_reservations \
     SET reserved_ms = $1, updated_at = $2 \
     WHERE workflow_id = $3 AND run_id = $4 AND attempt = $5 AND status = $6";

/// Move a reservation that is still `reserved` to another status.
pub(super) const CLOSE_RESERVATION: &str = "UPDATE budget_reservations \
     SET status = $1, spent_ms = $2, updated_at = $3 \
     WHERE workflow_id = $4 AND run_id = $5 AND attempt = $6 AND status = $7";

/// Take a closed reservation off the project's reserved time, adding what it spent.
pub(super) const MOVE_TO_SPENT: &str = "UPDATE project_budgets \
     SET reserved_ms = reserved_ms - $1, spent_ms = spent_ms + $2, updated_at = $3 \
     WHERE project_id = $4";

/// [`release_abandoned`], first the projects' totals, then the reservations.
pub(super) const RELEASE_RUN_TOTALS: &str = "UPDATE project_budgets SET reserved_ms = \
     reserved_ms - COALESCE((SELECT SUM(r.reserved_ms) FROM budget_reservations r \
     WHERE r.project_id = project_budgets.project_id AND r.workflow_id = $1 AND r.run_id = $2 \
     AND r.status = $3), 0), updated_at = $4 \
     WHERE project_id IN (SELECT project_id FROM budget_reservations \
     WHERE workflow_id = $1 AND run_id = $2 AND status = $3)";

pub(super) const RELEASE_RUN_RESERVATIONS: &str = "UPDATE budget_reservations \
     SET status = $1, updated_at = $2 WHERE workflow_id = $3 AND run_id = $4 AND status = $5";

pub(super) const SELECT_HELD_BEFORE: &str = "SELECT workflow_id, run_id, attempt, project_id, \
     reserved_ms, created_at FROM budget_reservations WHERE status = $1 AND created_at < $2 \
     ORDER BY created_at, workflow_id, run_id, attempt";

pub(super) const SELECT_BUDGET: &str = "SELECT project_id, limit_ms, reserved_ms, spent_ms \
     FROM project_budgets WHERE project_id = $1";

pub(super) const UPSERT_LIMIT: &str = "INSERT INTO project_budgets (project_id, limit_ms, \
     reserved_ms, spent_ms, updated_at) VALUES ($1, $2, 0, 0, $3) ON CONFLICT (project_id) \
     DO UPDATE SET limit_ms = excluded.limit_ms, updated_at = excluded.updated_at \
     RETURNING project_id, limit_ms, reserved_ms, spent_ms";

/// A reservation row, as far as the ledger needs it.
pub(super) struct Stored {
    pub(super) project_id: String,
    pub(super) reserved_ms: i64,
    pub(super) status: String,
    pub(super) limit_ms: Option<i64>,
    pub(super) committed_ms: Option<i64>,
}

impl Stored {
    fn from_row(row: &SqliteRow) -> Result<Self, StoreError> {
        Ok(Stored {
            project_id: get(row, "project_id")?,
            reserved_ms: get(row, "reserved_ms")?,
            status: get(row, "status")?,
            limit_ms: get(row, "limit_ms")?,
            committed_ms: get(row, "committed_ms")?,
        })
    }

    /// The answer `reserve` gave when it created this row.
    pub(super) fn answer(&self) -> Result<Reservation, StoreError> {
        let requested_ms = to_u64(self.reserved_ms, "budget_reservations.reserved_ms")?;
        if self.status != REFUSED {
            return Ok(Reservation::Granted {
                gpu_ms: requested_ms,
            });
        }
        let (Some(limit), Some(committed)) = (self.limit_ms, self.committed_ms) else {
            return Err(StoreError::Invalid(
                "a refused budget reservation lacks its limit or committed time".to_owned(),
            ));
        };
        Ok(Reservation::Refused {
            limit_ms: to_u64(limit, "budget_reservations.limit_ms")?,
            committed_ms: to_u64(committed, "budget_reservations.committed_ms")?,
            requested_ms,
        })
    }
}

/// What [`BudgetLedger::raise`] has to do, decided from the attempt's reservation as read under
/// the lock that serialises the project's changes.
pub(super) enum Raise {
    /// Already holding at least the amount asked for: answer `Granted` with it.
    Held(u64),
    /// Add `by` to the project's reserved time if the limit allows, then hold `to`.
    By { held: i64, by: i64 },
}

impl Raise {
    pub(super) fn plan(
        key: &AttemptKey,
        project_id: &str,
        stored: Option<&Stored>,
        to: i64,
    ) -> Result<Raise, StoreError> {
        let not_held = |why: &str| {
            StoreError::Invalid(format!(
                "cannot raise the budget reservation of attempt {} in project {project_id:?}: {why}",
                key.idempotency_key()
            ))
        };
        let Some(stored) = stored else {
            return Err(not_held("it has none"));
        };
        if stored.project_id != project_id {
            return Err(not_held(&format!(
                "its reservation is in project {:?}",
                stored.project_id
            )));
        }
        if stored.status != RESERVED {
            return Err(not_held(&format!("its reservation is {}", stored.status)));
        }
        if to <= stored.reserved_ms {
            let held = to_u64(stored.reserved_ms, "budget_reservations.reserved_ms")?;
            return Ok(Raise::Held(held));
        }
        Ok(Raise::By {
            held: stored.reserved_ms,
            by: to - stored.reserved_ms,
        })
    }

    /// The refusal of raising a hold of `held` to `to_ms`, from the project's `limit` and
    /// `committed` (reserved + spent, the hold included) as the refused check saw them.
    pub(super) fn refused(
        project_id: &str,
        limit: Option<i64>,
        committed: i64,
        held: i64,
        to_ms: u64,
    ) -> Result<Reservation, StoreError> {
        let Some(limit) = limit else {
            return Err(StoreError::Invalid(format!(
                "project {project_id:?} has no limit, yet raising a reservation to {to_ms} ms failed"
            )));
        };
        Ok(Reservation::Refused {
            limit_ms: to_u64(limit, "project_budgets.limit_ms")?,
            committed_ms: to_u64(committed - held, "committed gpu_ms")?,
            requested_ms: to_ms,
        })
    }
}

fn budget_from_row(row: &SqliteRow) -> Result<Budget, StoreError> {
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

impl SqlStore {
    /// The reservation of `key` inside `tx`, if any.
    async fn reservation(
        tx: &mut sqlx::SqliteConnection,
        key: &AttemptKey,
    ) -> Result<Option<Stored>, StoreError> {
        sqlx::query(SELECT_RESERVATION)
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_sqlx)?
            .map(|row| Stored::from_row(&row))
            .transpose()
    }

    /// Move a `reserved` reservation to `status`, taking its time off the project's reserved
    /// time and adding `spent_ms` (if any) to its spent time. Anything else is left alone.
    async fn close_reservation(
        &self,
        key: &AttemptKey,
        status: &str,
        spent_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(stored) = Self::reservation(&mut tx, key).await? else {
            return tx.commit().await.map_err(map_sqlx);
        };
        if stored.status != RESERVED {
            return tx.commit().await.map_err(map_sqlx);
        }
        let now = now();
        sqlx::query(CLOSE_RESERVATION)
            .bind(status)
            .bind(spent_ms)
            .bind(now.as_str())
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .bind(RESERVED)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(MOVE_TO_SPENT)
            .bind(stored.reserved_ms)
            .bind(spent_ms.unwrap_or(0))
            .bind(now.as_str())
            .bind(stored.project_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }
}

/// Release every reservation of a run that is still held: once a run records its outcome no
/// attempt of it is in flight, so such a reservation was abandoned (a safety net; the workflow
/// settles or releases each attempt itself). Part of the caller's write transaction.
pub(super) async fn release_abandoned(
    conn: &mut SqliteConnection,
    workflow_id: &str,
    run_id: &str,
    now: &str,
) -> Result<u64, StoreError> {
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
impl BudgetLedger for SqlStore {
    async fn reserve(
        &self,
        key: &AttemptKey,
        project_id: &str,
        gpu_ms: u64,
    ) -> Result<Reservation, StoreError> {
        let requested = to_i64(gpu_ms, "requested gpu_ms")?;
        let now = now();
        // Holds the write lock from here to commit: no other reserve can interleave.
        let mut tx = self.begin_write().await?;
        if let Some(stored) = Self::reservation(&mut tx, key).await? {
            tx.commit().await.map_err(map_sqlx)?;
            return stored.answer();
        }
        sqlx::query(ENSURE_PROJECT)
            .bind(project_id)
            .bind(now.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        // Check and add in one statement, so it stays atomic without the write lock too.
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
        sqlx::query(INSERT_RESERVATION)
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
            .map_err(map_sqlx)?;
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
        // Holds the write lock from here to commit, like `reserve`: no reserve, raise, settle or
        // release can change the totals between the check and the update.
        let mut tx = self.begin_write().await?;
        let stored = Self::reservation(&mut tx, key).await?;
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
