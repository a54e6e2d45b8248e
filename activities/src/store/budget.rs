//! [`BudgetLedger`] on SQL, written once for both backends: `project_budgets` holds each
//! project's totals, `budget_reservations` one row per attempt key, which makes every operation
//! idempotent. Each write runs in a [`Backend::begin_write`] transaction and locks the project
//! with [`Backend::lock_project`] before it reads what it changes (see the module documentation
//! of `store`).

use super::sql::{Db, stmt};
use super::{Backend, SqlxStore, map_sqlx, now, rfc3339, to_i64, to_u32, to_u64};
use crate::io::{AttemptKey, Reservation};
use crate::ports::{Budget, BudgetLedger, HeldReservation, StoreError};
use async_trait::async_trait;
use sqlx::Pool;
use std::time::SystemTime;

pub(super) const RESERVED: &str = "reserved";
const SETTLED: &str = "settled";
const RELEASED: &str = "released";
const REFUSED: &str = "refused";

const SELECT_RESERVATION: &str = "SELECT project_id, reserved_ms, status, limit_ms, \
     committed_ms FROM budget_reservations WHERE workflow_id = $1 AND run_id = $2 AND attempt = $3";

const INSERT_RESERVATION: &str = "INSERT INTO budget_reservations (workflow_id, \
     run_id, attempt, project_id, reserved_ms, spent_ms, status, limit_ms, committed_ms, \
     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $9)";

/// Hold a released or refused reservation again (see [`Stored::answers_again`]): its row takes
/// the new answer, from the status it was read with (`$10`).
const RETAKE_RESERVATION: &str = "UPDATE budget_reservations SET project_id = $1, \
     reserved_ms = $2, spent_ms = NULL, status = $3, limit_ms = $4, committed_ms = $5, \
     updated_at = $6 WHERE workflow_id = $7 AND run_id = $8 AND attempt = $9 AND status = $10";

/// Create the project's row (no limit) unless it exists.
const ENSURE_PROJECT: &str = "INSERT INTO project_budgets (project_id, limit_ms, \
     reserved_ms, spent_ms, updated_at) VALUES ($1, NULL, 0, 0, $2) \
     ON CONFLICT (project_id) DO NOTHING";

/// Check and add in one statement: it changes one row exactly when the reservation is granted.
const ADD_WITHIN_LIMIT: &str = "UPDATE project_budgets \
     SET reserved_ms = reserved_ms + $1, updated_at = $2 \
     WHERE project_id = $3 AND (limit_ms IS NULL OR reserved_ms + spent_ms + $1 <= limit_ms)";

/// What a refusal saw.
const SELECT_COMMITTED: &str = "SELECT limit_ms, reserved_ms + spent_ms AS committed_ms \
     FROM project_budgets WHERE project_id = $1";

/// Set a held reservation to its raised amount (the project's totals took the difference).
const RAISE_RESERVATION: &str = "UPDATE budget_reservations \
     SET reserved_ms = $1, updated_at = $2 \
     WHERE workflow_id = $3 AND run_id = $4 AND attempt = $5 AND status = $6";

/// Move a reservation from the status it was read with (`$7`) to another.
const CLOSE_RESERVATION: &str = "UPDATE budget_reservations \
     SET status = $1, spent_ms = $2, updated_at = $3 \
     WHERE workflow_id = $4 AND run_id = $5 AND attempt = $6 AND status = $7";

/// Take a closed reservation off the project's reserved time, adding what it spent.
const MOVE_TO_SPENT: &str = "UPDATE project_budgets \
     SET reserved_ms = reserved_ms - $1, spent_ms = spent_ms + $2, updated_at = $3 \
     WHERE project_id = $4";

/// [`release_abandoned`], first the projects' totals, then the reservations.
const RELEASE_RUN_TOTALS: &str = "UPDATE project_budgets SET reserved_ms = \
     reserved_ms - COALESCE((SELECT SUM(r.reserved_ms) FROM budget_reservations r \
     WHERE r.project_id = project_budgets.project_id AND r.workflow_id = $1 AND r.run_id = $2 \
     AND r.status = $3), 0), updated_at = $4 \
     WHERE project_id IN (SELECT project_id FROM budget_reservations \
     WHERE workflow_id = $1 AND run_id = $2 AND status = $3)";

const RELEASE_RUN_RESERVATIONS: &str = "UPDATE budget_reservations \
     SET status = $1, updated_at = $2 WHERE workflow_id = $3 AND run_id = $4 AND status = $5";

const SELECT_HELD_BEFORE: &str = "SELECT workflow_id, run_id, attempt, project_id, \
     reserved_ms, created_at FROM budget_reservations WHERE status = $1 AND created_at < $2 \
     ORDER BY created_at, workflow_id, run_id, attempt";

const SELECT_BUDGET: &str = "SELECT project_id, limit_ms, reserved_ms, spent_ms \
     FROM project_budgets WHERE project_id = $1";

const UPSERT_LIMIT: &str = "INSERT INTO project_budgets (project_id, limit_ms, \
     reserved_ms, spent_ms, updated_at) VALUES ($1, $2, 0, 0, $3) ON CONFLICT (project_id) \
     DO UPDATE SET limit_ms = excluded.limit_ms, updated_at = excluded.updated_at \
     RETURNING project_id, limit_ms, reserved_ms, spent_ms";

/// A reservation row, as far as the ledger needs it.
struct Stored {
    project_id: String,
    reserved_ms: i64,
    status: String,
    limit_ms: Option<i64>,
    committed_ms: Option<i64>,
}

impl Stored {
    fn from_row<DB: Db>(row: &DB::Row) -> Result<Self, StoreError> {
        Ok(Stored {
            project_id: DB::get(row, "project_id")?,
            reserved_ms: DB::get(row, "reserved_ms")?,
            status: DB::get(row, "status")?,
            limit_ms: DB::get(row, "limit_ms")?,
            committed_ms: DB::get(row, "committed_ms")?,
        })
    }

    /// Whether `reserve` answers from this row as it is: while it holds time or spent it.
    ///
    /// A `released` or `refused` row is checked against the limit again. Nothing holds time
    /// for it, and a call for its key means an attempt is about to run under that number:
    /// - after a worker is killed, the next one replays the run and runs again the local store
    ///   steps whose results the history lacks; a `record_outcome` of the previous review round
    ///   releases the next round's reservation before its `reserve` runs again (issue 28.5), so
    ///   answering `Granted` from the row would let the attempt run holding nothing;
    /// - numbering goes on above the highest *recorded* attempt (`plan::made`), so an attempt
    ///   stopped before it started (released) or refused by the budget gives its number to the
    ///   next review round, whose call must not get the old round's answer (a refusal that a
    ///   raised limit has lifted, or a grant that holds nothing).
    ///
    /// The workflow never saw an answer that is replaced: its history holds each `reserve`
    /// result it used, and a call that is made again is one whose result it lacks.
    fn answers_again(&self) -> bool {
        self.status == RESERVED || self.status == SETTLED
    }

    /// The answer `reserve` gave when it created this row.
    fn answer(&self) -> Result<Reservation, StoreError> {
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
enum Raise {
    /// Already holding at least the amount asked for: answer `Granted` with it.
    Held(u64),
    /// Add `by` to the project's reserved time if the limit allows, then hold `to`.
    By { held: i64, by: i64 },
}

impl Raise {
    fn plan(
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
    fn refused(
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

fn budget_from_row<DB: Db>(row: &DB::Row) -> Result<Budget, StoreError> {
    let limit_ms: Option<i64> = DB::get(row, "limit_ms")?;
    Ok(Budget {
        project_id: DB::get(row, "project_id")?,
        limit_ms: limit_ms
            .map(|l| to_u64(l, "project_budgets.limit_ms"))
            .transpose()?,
        reserved_ms: to_u64(DB::get(row, "reserved_ms")?, "project_budgets.reserved_ms")?,
        spent_ms: to_u64(DB::get(row, "spent_ms")?, "project_budgets.spent_ms")?,
    })
}

/// The reservation of `key` as the transaction sees it now.
async fn reservation<DB: Db>(
    conn: &mut DB::Connection,
    key: &AttemptKey,
) -> Result<Option<Stored>, StoreError> {
    let select = stmt(SELECT_RESERVATION)
        .bind(key.workflow_id.as_str())
        .bind(key.run_id.as_str())
        .bind(i64::from(key.attempt));
    DB::fetch_optional(conn, select)
        .await?
        .map(|row| Stored::from_row::<DB>(&row))
        .transpose()
}

/// What the project's row said when a check-and-add was refused: its limit and committed time.
async fn committed<DB: Db>(
    conn: &mut DB::Connection,
    project_id: &str,
) -> Result<(Option<i64>, i64), StoreError> {
    let row = DB::fetch_one(conn, stmt(SELECT_COMMITTED).bind(project_id)).await?;
    Ok((DB::get(&row, "limit_ms")?, DB::get(&row, "committed_ms")?))
}

/// Add `ms` to the project's reserved time if its limit allows; whether it did.
async fn add_within_limit<DB: Db>(
    conn: &mut DB::Connection,
    project_id: &str,
    ms: i64,
    now: &str,
) -> Result<bool, StoreError> {
    let add = stmt(ADD_WITHIN_LIMIT).bind(ms).bind(now).bind(project_id);
    Ok(DB::execute(conn, add).await? == 1)
}

/// Release every reservation of a run that is still held: once a run records its outcome no
/// attempt of it is in flight, so such a reservation was abandoned (a safety net; the workflow
/// settles or releases each attempt itself). Part of the caller's write transaction; locks the
/// run's projects first, so the totals' subquery reads reservations that nobody else is
/// changing.
pub(super) async fn release_abandoned<DB: Backend>(
    conn: &mut DB::Connection,
    workflow_id: &str,
    run_id: &str,
    now: &str,
) -> Result<u64, StoreError> {
    DB::lock_run_projects(conn, workflow_id, run_id).await?;
    let totals = stmt(RELEASE_RUN_TOTALS)
        .bind(workflow_id)
        .bind(run_id)
        .bind(RESERVED)
        .bind(now);
    DB::execute(conn, totals).await?;
    let reservations = stmt(RELEASE_RUN_RESERVATIONS)
        .bind(RELEASED)
        .bind(now)
        .bind(workflow_id)
        .bind(run_id)
        .bind(RESERVED);
    DB::execute(conn, reservations).await
}

/// Move a `reserved` reservation to `status`, taking its time off the project's reserved
/// time and adding `spent_ms` (if any) to its spent time. Anything else is left alone.
async fn close_reservation<DB: Backend>(
    pool: &Pool<DB>,
    key: &AttemptKey,
    status: &str,
    spent_ms: Option<i64>,
) -> Result<(), StoreError> {
    let mut tx = DB::begin_write(pool).await?;
    close_in::<DB>(&mut tx, key, status, spent_ms).await?;
    tx.commit().await.map_err(map_sqlx)
}

/// Settle the attempt's reservation to `gpu_ms` within the caller's write transaction `tx`
/// (nothing when it is not reserved any more).
pub(super) async fn settle_in<DB: Backend>(
    tx: &mut DB::Connection,
    key: &AttemptKey,
    gpu_ms: u64,
) -> Result<(), StoreError> {
    let spent = to_i64(gpu_ms, "settled gpu_ms")?;
    close_in::<DB>(tx, key, SETTLED, Some(spent)).await
}

/// The attempt's reservation if closing it as `status` with `spent_ms` changes it: while it is
/// still `reserved`, or, to settle GPU time that was used, once `released` (see [`close_in`]).
/// None once settled or refused, or when there is none.
async fn closable<DB: Backend>(
    tx: &mut DB::Connection,
    key: &AttemptKey,
    status: &str,
    spent_ms: Option<i64>,
) -> Result<Option<Stored>, StoreError> {
    let bills = status == SETTLED && spent_ms.is_some_and(|ms| ms > 0);
    Ok(reservation::<DB>(tx, key)
        .await?
        .filter(|stored| stored.status == RESERVED || (bills && stored.status == RELEASED)))
}

/// Close the attempt's reservation as `status` within the caller's write transaction `tx`.
///
/// Settling GPU time also settles a reservation that was already released: the time was used,
/// and a release must not make it free. A release comes before the settle when the run's
/// recorded outcome (`release_abandoned`) or the sweeper took back a hold whose attempt was
/// still running: after a worker is killed, the next one replays the run and runs again the
/// local store steps whose results the history lacks, so a `record_outcome` of the previous
/// review round runs again after the next round's `reserve` and releases its reservation,
/// whose attempt then generates, is recorded and settles. Settling it then adds the time to
/// `spent` (its hold is off `reserved` already), which keeps `spent` equal to the recorded
/// attempts' GPU time. A release with nothing used (no `spent_ms`) stays a release.
async fn close_in<DB: Backend>(
    tx: &mut DB::Connection,
    key: &AttemptKey,
    status: &str,
    spent_ms: Option<i64>,
) -> Result<(), StoreError> {
    let Some(stored) = closable::<DB>(tx, key, status, spent_ms).await? else {
        return Ok(());
    };
    DB::lock_project(tx, &stored.project_id).await?;
    // Read again under the lock unless the transaction holds the whole database: a settle,
    // release or recorded outcome of the same attempt may have closed it while this one waited.
    let stored = if DB::WRITES_SERIALIZED {
        stored
    } else {
        let Some(stored) = closable::<DB>(tx, key, status, spent_ms).await? else {
            return Ok(());
        };
        stored
    };
    let now = now();
    let close = stmt(CLOSE_RESERVATION)
        .bind(status)
        .bind(spent_ms)
        .bind(now.as_str())
        .bind(key.workflow_id.as_str())
        .bind(key.run_id.as_str())
        .bind(i64::from(key.attempt))
        .bind(stored.status.as_str());
    if DB::execute(tx, close).await? == 1 {
        // A released reservation's hold is off the project's reserved time already.
        let held = if stored.status == RESERVED {
            stored.reserved_ms
        } else {
            0
        };
        let spend = stmt(MOVE_TO_SPENT)
            .bind(held)
            .bind(spent_ms.unwrap_or(0))
            .bind(now.as_str())
            .bind(stored.project_id.as_str());
        DB::execute(tx, spend).await?;
    }
    Ok(())
}

#[async_trait]
impl<DB: Backend> BudgetLedger for SqlxStore<DB> {
    async fn reserve(
        &self,
        key: &AttemptKey,
        project_id: &str,
        gpu_ms: u64,
    ) -> Result<Reservation, StoreError> {
        let requested = to_i64(gpu_ms, "requested gpu_ms")?;
        let now = now();
        let mut tx = DB::begin_write(&self.pool).await?;
        let mut earlier = reservation::<DB>(&mut tx, key).await?;
        if let Some(stored) = earlier.as_ref().filter(|s| s.answers_again()) {
            tx.commit().await.map_err(map_sqlx)?;
            return stored.answer();
        }
        let ensure = stmt(ENSURE_PROJECT).bind(project_id).bind(now.as_str());
        DB::execute(&mut tx, ensure).await?;
        // Held to commit: no other reserve, settle or release of this project can interleave.
        DB::lock_project(&mut tx, project_id).await?;
        // A call for the same key that held the lock before this one has answered it.
        if !DB::WRITES_SERIALIZED {
            earlier = reservation::<DB>(&mut tx, key).await?;
            if let Some(stored) = earlier.as_ref().filter(|s| s.answers_again()) {
                tx.commit().await.map_err(map_sqlx)?;
                return stored.answer();
            }
        }
        // Check and add in one statement, so it stays atomic even without the lock.
        let granted = add_within_limit::<DB>(&mut tx, project_id, requested, &now).await?;
        let (status, limit_ms, committed_ms) = if granted {
            (RESERVED, None, None)
        } else {
            let (limit, committed) = committed::<DB>(&mut tx, project_id).await?;
            if limit.is_none() {
                return Err(StoreError::Invalid(format!(
                    "project {project_id:?} has no limit, yet reserving {gpu_ms} ms failed"
                )));
            }
            (REFUSED, limit, Some(committed))
        };
        // On Postgres a call for the same key under another project id holds another lock: if
        // it wrote first, its answer stands and this transaction rolls back. (SQLite's write
        // lock lets no such call in between.)
        let write = match &earlier {
            Some(stored) => stmt(RETAKE_RESERVATION)
                .bind(project_id)
                .bind(requested)
                .bind(status)
                .bind(limit_ms)
                .bind(committed_ms)
                .bind(now.as_str())
                .bind(key.workflow_id.as_str())
                .bind(key.run_id.as_str())
                .bind(i64::from(key.attempt))
                .bind(stored.status.as_str()),
            None => stmt(format!("{INSERT_RESERVATION} ON CONFLICT DO NOTHING"))
                .bind(key.workflow_id.as_str())
                .bind(key.run_id.as_str())
                .bind(i64::from(key.attempt))
                .bind(project_id)
                .bind(requested)
                .bind(status)
                .bind(limit_ms)
                .bind(committed_ms)
                .bind(now.as_str()),
        };
        if DB::execute(&mut tx, write).await? == 0 {
            tx.rollback().await.map_err(map_sqlx)?;
            let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
            return match reservation::<DB>(&mut conn, key).await? {
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
        let mut tx = DB::begin_write(&self.pool).await?;
        // Held to commit, as in `reserve`: the reservation read below is the one the update
        // changes, and no reserve, raise, settle or release of the project interleaves. A key
        // in another project fails below, whatever this lock held.
        DB::lock_project(&mut tx, project_id).await?;
        let stored = reservation::<DB>(&mut tx, key).await?;
        let (held, by) = match Raise::plan(key, project_id, stored.as_ref(), to)? {
            Raise::Held(held) => {
                tx.commit().await.map_err(map_sqlx)?;
                return Ok(Reservation::Granted { gpu_ms: held });
            }
            Raise::By { held, by } => (held, by),
        };
        let now = now();
        if !add_within_limit::<DB>(&mut tx, project_id, by, &now).await? {
            let (limit, committed) = committed::<DB>(&mut tx, project_id).await?;
            tx.rollback().await.map_err(map_sqlx)?;
            return Raise::refused(project_id, limit, committed, held, to_ms);
        }
        let raise = stmt(RAISE_RESERVATION)
            .bind(to)
            .bind(now.as_str())
            .bind(key.workflow_id.as_str())
            .bind(key.run_id.as_str())
            .bind(i64::from(key.attempt))
            .bind(RESERVED);
        DB::execute(&mut tx, raise).await?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(Reservation::Granted { gpu_ms: to_ms })
    }

    async fn settle(&self, key: &AttemptKey, gpu_ms: u64) -> Result<(), StoreError> {
        let spent = to_i64(gpu_ms, "settled gpu_ms")?;
        close_reservation(&self.pool, key, SETTLED, Some(spent)).await
    }

    async fn release(&self, key: &AttemptKey) -> Result<(), StoreError> {
        close_reservation(&self.pool, key, RELEASED, None).await
    }

    async fn held_before(&self, before: SystemTime) -> Result<Vec<HeldReservation>, StoreError> {
        let held = stmt(SELECT_HELD_BEFORE)
            .bind(RESERVED)
            .bind(rfc3339(before));
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_all(&mut conn, held)
            .await?
            .iter()
            .map(|row| {
                Ok(HeldReservation {
                    key: AttemptKey {
                        workflow_id: DB::get(row, "workflow_id")?,
                        run_id: DB::get(row, "run_id")?,
                        attempt: to_u32(DB::get(row, "attempt")?, "budget_reservations.attempt")?,
                    },
                    project_id: DB::get(row, "project_id")?,
                    reserved_ms: to_u64(
                        DB::get(row, "reserved_ms")?,
                        "budget_reservations.reserved_ms",
                    )?,
                    created_at: DB::get(row, "created_at")?,
                })
            })
            .collect()
    }

    async fn budget(&self, project_id: &str) -> Result<Option<Budget>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        DB::fetch_optional(&mut conn, stmt(SELECT_BUDGET).bind(project_id))
            .await?
            .map(|row| budget_from_row::<DB>(&row))
            .transpose()
    }

    async fn set_limit(
        &self,
        project_id: &str,
        limit_ms: Option<u64>,
    ) -> Result<Budget, StoreError> {
        let limit = limit_ms.map(|l| to_i64(l, "limit_ms")).transpose()?;
        let upsert = stmt(UPSERT_LIMIT).bind(project_id).bind(limit).bind(now());
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        let row = DB::fetch_one(&mut conn, upsert).await?;
        budget_from_row::<DB>(&row)
    }
}
