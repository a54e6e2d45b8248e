//! PostgreSQL store adapter: [`PgStore`] implements [`PolicyStore`],
//! [`BudgetLedger`](crate::ports::BudgetLedger) and [`AttemptStore`](crate::ports::AttemptStore)
//! with the same tables (`migrations/postgres/`), the same statements and the same behaviour as
//! [`SqlStore`](super::SqlStore).
//!
//! Atomicity: SQLite serializes every writer with `BEGIN IMMEDIATE`; Postgres has no such lock,
//! so each write transaction that reads before it writes locks what it reads from. A reservation
//! ensures its project's row exists (`INSERT ... ON CONFLICT DO NOTHING`), locks it with
//! `SELECT ... FOR UPDATE`, reads the attempt's reservation again under the lock, and then does
//! what `SqlStore` does. Every change to a project's totals or reservations (reserve, settle,
//! release, the release of abandoned reservations when a run records its outcome) happens under
//! that row lock, so they run one at a time per project, two calls for the same attempt key
//! included; projects do not wait for each other. Transactions run at READ COMMITTED: a
//! statement after the lock sees everything committed before the lock was granted. Lock waits
//! end after [`LOCK_TIMEOUT`] (`lock_timeout`), which, like deadlocks and serialization
//! failures, is [`StoreError::Unavailable`] and so retried.

mod attempts;
mod budget;

use crate::ports::{PolicyStore, StoreError};
use crate::store::{SELECT_POLICY, UPSERT_POLICY, from_json, is_postgres_url, map_migrate};
use crate::store::{map_sqlx, now, to_json};
use async_trait::async_trait;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

/// The embedded Postgres migrations (`activities/migrations/postgres`).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a statement waits for a row lock (e.g. a project's, held by another reservation)
/// before failing with `Unavailable`.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long getting a connection from the pool may take, the first connect included (which
/// waits that long for a server that refuses connections, e.g. while it starts).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// The SQL store on PostgreSQL: policies, budgets and reservations, attempts and outcomes.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to the PostgreSQL database at `url` (`postgres://` or `postgresql://`, with the
    /// usual libpq-style parameters) and run the pending migrations. The database must exist.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::Invalid(format!(
                "unsupported store URL {url:?}: PgStore needs a postgres:// or postgresql:// URL"
            )));
        }
        let lock_timeout = format!("{}ms", LOCK_TIMEOUT.as_millis());
        let options = PgConnectOptions::from_str(url)
            .map_err(map_sqlx)?
            .options([("lock_timeout", lock_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
        // sqlx holds an advisory lock while it applies migrations, but two processes creating
        // its bookkeeping table at once may still collide; the loser tries again.
        let mut tries = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tracing::debug!(error = %e, "running migrations failed, trying again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => {
                    pool.close().await;
                    return Err(map_migrate(e));
                }
            }
        }
        Ok(PgStore { pool })
    }

    /// The connection pool (for ad-hoc queries, e.g. in tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Close every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begin a READ COMMITTED transaction. Dropping it without commit rolls back.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(map_sqlx)
    }
}

/// Lock the project's row, if it exists, until the transaction ends (see the module
/// documentation).
async fn lock_project(conn: &mut PgConnection, project_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT project_id FROM project_budgets WHERE project_id = $1 FOR UPDATE")
        .bind(project_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

#[async_trait]
impl PolicyStore for PgStore {
    async fn policy(&self, scene_type: &str) -> Result<Option<Value>, StoreError> {
        let row = sqlx::query(SELECT_POLICY)
            .bind(scene_type)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        row.map(|row| from_json(&get::<String>(&row, "policy")?, "retry_policies.policy"))
            .transpose()
    }

    async fn set_policy(&self, scene_type: &str, policy: &Value) -> Result<(), StoreError> {
        sqlx::query(UPSERT_POLICY)
            .bind(scene_type)
            .bind(to_json(policy)?)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }
}

/// Read a column, mapping a missing or undecodable column to `Invalid`.
fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column).map_err(map_sqlx)
}
