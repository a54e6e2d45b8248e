//! PostgreSQL: [`PgStore`]'s connect options and migrations (`migrations/postgres/`), and the
//! row locks that stand in for SQLite's database-wide write lock.
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

use super::sql::{Db, stmt};
use super::{
    Backend, FIRST_CONNECT, PgStore, SqlxStore, StoreOptions, begin_detached, is_postgres_url,
    map_sqlx, migrate, while_contended,
};
use crate::ports::StoreError;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Pool, Postgres, Transaction};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The embedded Postgres migrations (`activities/migrations/postgres`).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a statement waits for a row lock (e.g. a project's, held by another reservation)
/// before failing with `Unavailable`.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Lock, in a fixed order, every project a run holds reservations in.
const LOCK_RUN_PROJECTS: &str = "SELECT project_id FROM project_budgets \
     WHERE project_id IN (SELECT project_id FROM budget_reservations \
     WHERE workflow_id = $1 AND run_id = $2 AND status = $3) \
     ORDER BY project_id FOR UPDATE";

impl SqlxStore<Postgres> {
    /// Connect to the PostgreSQL database at `url` (`postgres://` or `postgresql://`, with the
    /// usual libpq-style parameters) and run the pending migrations. The database must exist.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        Self::connect_with_options(url, StoreOptions::default()).await
    }

    /// [`connect`](Self::connect), then wait for the database as `options` say.
    pub async fn connect_with_options(
        url: &str,
        options: StoreOptions,
    ) -> Result<PgStore, StoreError> {
        if !is_postgres_url(url) {
            return Err(StoreError::Invalid(format!(
                "unsupported store URL {url:?}: PgStore needs a postgres:// or postgresql:// URL"
            )));
        }
        let lock_timeout = format!("{}ms", LOCK_TIMEOUT.as_millis());
        let connect = PgConnectOptions::from_str(url)
            .map_err(map_sqlx)?
            .options([("lock_timeout", lock_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        if let Err(e) = first_connection(&pool).await {
            pool.close().await;
            return Err(map_sqlx(e));
        }
        // sqlx holds an advisory lock while it applies migrations, so processes migrating a
        // new database at once take turns; a turn that waits longer than `lock_timeout`, or a
        // deadlock with whatever else runs, is tried again until `FIRST_CONNECT` has passed.
        // The bookkeeping table may still collide (see `migrate`).
        let migrated = while_contended(FIRST_CONNECT, || async {
            migrate(|| MIGRATOR.run(&pool))
                .await
                .map_err(sqlx::Error::from)
        })
        .await;
        if let Err(e) = migrated {
            pool.close().await;
            return Err(e);
        }
        Ok(SqlxStore { pool })
    }
}

/// Wait for the pool's first connection up to [`FIRST_CONNECT`], whatever the pool's acquire
/// timeout: each acquire tries again while the server refuses connections (e.g. while it starts)
/// and gives up as `PoolTimedOut` at that timeout, so a short one is tried again here. Any
/// other error (a missing database, a refused login) ends the wait at once, as sqlx does.
async fn first_connection(pool: &Pool<Postgres>) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + FIRST_CONNECT;
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::PoolTimedOut) if Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

impl Backend for Postgres {
    const STORE: &'static str = "PgStore";
    const WRITES_SERIALIZED: bool = false;

    /// Begin a READ COMMITTED transaction. Dropping it without commit rolls back; so does
    /// dropping the call itself ([`begin_detached`]).
    async fn begin_write(
        pool: &Pool<Postgres>,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let pool = pool.clone();
        begin_detached(async move { pool.begin().await }).await
    }

    /// Lock the project's row, if it exists, until the transaction ends (see the module
    /// documentation).
    async fn lock_project(conn: &mut PgConnection, project_id: &str) -> Result<(), StoreError> {
        let lock = "SELECT project_id FROM project_budgets WHERE project_id = $1 FOR UPDATE";
        Postgres::fetch_optional(conn, stmt(lock).bind(project_id)).await?;
        Ok(())
    }

    /// Lock, in a fixed order, every project the run holds reservations in, so the release of
    /// its abandoned reservations reads totals nobody else is changing.
    async fn lock_run_projects(
        conn: &mut PgConnection,
        workflow_id: &str,
        run_id: &str,
    ) -> Result<(), StoreError> {
        let held = stmt(LOCK_RUN_PROJECTS)
            .bind(workflow_id)
            .bind(run_id)
            .bind(super::budget::RESERVED);
        Postgres::fetch_all(conn, held).await?;
        Ok(())
    }
}

/// Whether a Postgres SQLSTATE means "try again later" (checked on the code itself, never parsed
/// as a number: `40001` is not a SQLite result code). By class:
/// * `08` connection exception; `57` operator intervention (shutdown, `57P01` a terminated
///   backend, `57P03` cannot connect now, `57014` statement timeout or cancel); `53`
///   insufficient resources (too many connections, disk full); `58` system error (I/O);
/// * `55` object not in prerequisite state: `55000` a database that does not accept
///   connections (`ALLOW_CONNECTIONS false`), `55006` object in use, `55P03` a lock wait that
///   ran out (`lock_timeout`);
/// * `28` invalid authorization (a rotated password or a dropped role), `3D000` a database that
///   does not exist (not yet restored or created), `42501` insufficient privilege (revoked
///   grants): the operator fixes them and the retries go on;
/// * `40001` serialization failure, `40P01` deadlock, `40003` commit outcome unknown;
/// * `25006` read-only transaction (a write that reached a standby during a failover), `25P03`
///   idle-in-transaction timeout.
///
/// Everything else (e.g. `22` data exceptions, `23` constraint violations, `42` syntax errors
/// and undefined objects) is a data or program error.
pub(crate) fn sqlstate_unavailable(code: &str) -> bool {
    const CLASSES: [&str; 6] = ["08", "28", "53", "55", "57", "58"];
    const CODES: [&str; 7] = [
        "3D000", "40001", "40P01", "40003", "42501", "25006", "25P03",
    ];
    CLASSES.iter().any(|class| code.starts_with(class)) || CODES.contains(&code)
}
