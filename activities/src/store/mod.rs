//! SQL store adapters: [`SqlxStore`] implements [`PolicyStore`](crate::ports::PolicyStore),
//! [`BudgetLedger`](crate::ports::BudgetLedger), [`AttemptStore`](crate::ports::AttemptStore)
//! and [`Reporting`](crate::ports::Reporting) on SQLite ([`SqlStore`]) and PostgreSQL
//! ([`PgStore`]). [`connect_any`] picks one by the URL.
//!
//! Each port is written once (`attempts`, `budget`, `policies`, `stats`), generic over the
//! database: the SQL is portable (numbered `$n` parameters, `INSERT ... ON CONFLICT`,
//! `RETURNING`, `CASE`) and runs through [`sql::Db`]. What really differs between the databases
//! is the small [`Backend`] trait, implemented in `sqlite` and `postgres`: how a write
//! transaction begins and which rows it must lock, besides each one's connect options and
//! migrations (`migrations/sqlite/`, `migrations/postgres/`).
//!
//! Atomicity: every write transaction that reads before it writes starts with
//! [`Backend::begin_write`] and locks what it reads from with [`Backend::lock_project`] and
//! [`Backend::lock_run_projects`]. On SQLite the write transaction holds the database's write
//! lock, so every writer runs alone and the row locks are nothing; on Postgres the transaction
//! locks the project rows (see `postgres`). Either way, every change to a project's totals or
//! reservations happens with nobody else changing them, and what was read before the lock is
//! read again under it.

mod attempts;
mod budget;
mod policies;
mod postgres;
mod sql;
mod sqlite;
pub(crate) mod stats;
#[cfg(test)]
mod tests;
mod workers;

#[cfg(test)]
pub(crate) use postgres::sqlstate_unavailable;
#[cfg(test)]
pub(crate) use sqlite::Waits;
#[cfg(test)]
pub(crate) use sqlite::sqlite_unavailable;

use crate::ports::{Store, StoreError};
use sqlx::migrate::MigrateError;
use sqlx::{Database, Pool, Postgres, Sqlite, Transaction};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The SQL store on SQLite: policies, budgets and reservations, attempts and outcomes.
pub type SqlStore = SqlxStore<Sqlite>;

/// The SQL store on PostgreSQL: policies, budgets and reservations, attempts and outcomes.
pub type PgStore = SqlxStore<Postgres>;

/// The SQL store on the database `DB` ([`SqlStore`] or [`PgStore`]; open one with their
/// `connect`). It implements every store port; its `Debug` names it by those aliases.
pub struct SqlxStore<DB: Database> {
    pool: Pool<DB>,
}

impl<DB: Database> Clone for SqlxStore<DB> {
    fn clone(&self) -> Self {
        SqlxStore {
            pool: self.pool.clone(),
        }
    }
}

impl<DB: Backend> fmt::Debug for SqlxStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(DB::STORE).field("pool", &self.pool).finish()
    }
}

impl<DB: Database> SqlxStore<DB> {
    /// The connection pool (for ad-hoc queries, e.g. in tests and tools).
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Close every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// What differs between the databases once connected: the hooks the port modules call around
/// their shared statements.
trait Backend: sql::Db {
    /// The store's name in `Debug` output, the alias callers know it by.
    const STORE: &'static str;

    /// Whether [`begin_write`](Self::begin_write) holds the whole database from the first
    /// statement (SQLite's `BEGIN IMMEDIATE`): then nothing a transaction read can change before
    /// it commits, and a row read before [`lock_project`](Self::lock_project) need not be read
    /// again after it.
    const WRITES_SERIALIZED: bool;

    /// Begin a transaction for a write that reads before it writes. Dropping it without commit
    /// rolls back.
    fn begin_write(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, StoreError>> + Send;

    /// Lock the project's row, if it exists, until the transaction ends; a reservation, raise,
    /// settle or release of the project waits for it.
    fn lock_project(
        conn: &mut Self::Connection,
        project_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Lock the rows of every project in which the run still holds reservations.
    fn lock_run_projects(
        conn: &mut Self::Connection,
        workflow_id: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How a store waits for its database once it is connected: [`StoreOptions::default`] for a
/// worker, whose store steps may wait, a short wait for an API, which should rather answer `503`
/// soon. Give it to [`connect_any_with`] or [`PgStore::connect_with_options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// How long a call may wait for a connection from the pool before failing as
    /// [`StoreError::Unavailable`]: for a free one, or, on Postgres, for the server to accept a
    /// new one (a server that refuses connections is tried again until then). Connecting, the
    /// first connection is waited for [`FIRST_CONNECT`] however short this is: a worker and an
    /// API started beside their database wait for it to come up. SQLite ignores it: there a
    /// call waits for the file's locks, up to its busy timeout.
    /// Default: [`FIRST_CONNECT`] (30 s).
    pub acquire_timeout: Duration,
}

/// How long connecting waits for the first connection, e.g. while a Postgres server starts and
/// refuses connections.
pub const FIRST_CONNECT: Duration = Duration::from_secs(30);

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            acquire_timeout: FIRST_CONNECT,
        }
    }
}

impl StoreOptions {
    /// These options with [`acquire_timeout`](Self::acquire_timeout) set.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

/// Open the store at `url`: [`PgStore`] for `postgres://` and `postgresql://` URLs, [`SqlStore`]
/// for anything else (`sqlite://PATH`, `sqlite:PATH` or a bare file path; other schemes are
/// refused as [`StoreError::Invalid`]).
pub async fn connect_any(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    connect_any_with(url, StoreOptions::default()).await
}

/// [`connect_any`] waiting for the database as `options` say.
pub async fn connect_any_with(
    url: &str,
    options: StoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres_url(url) {
        Ok(Arc::new(PgStore::connect_with_options(url, options).await?))
    } else if url.contains("://") && !url.starts_with("sqlite:") {
        Err(StoreError::Invalid(format!(
            "unsupported store URL {url:?}: use postgres://, postgresql://, sqlite:// or a file path"
        )))
    } else {
        Ok(Arc::new(SqlStore::connect(url).await?))
    }
}

/// Whether `url` names a PostgreSQL database (the scheme is case-insensitive).
fn is_postgres_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

/// Run the pending migrations with `run`, trying again up to three times: two processes
/// opening a fresh database at once may collide applying them, and the loser, on its next try,
/// sees them applied.
async fn migrate<F, Fut>(mut run: F) -> Result<(), MigrateError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), MigrateError>>,
{
    let mut tries = 0;
    loop {
        match run().await {
            Ok(()) => return Ok(()),
            Err(e) if tries < 3 => {
                tracing::debug!(error = %e, "running migrations failed, trying again");
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50 * tries)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Run `step` (opening a store, running its migrations) again while it fails because another
/// connection holds what it needs ([`contended`]), for up to `within`, then fail as
/// [`StoreError::Unavailable`] saying so. Opening is where several processes meet a new
/// database at once: started together, they all connect, turn the file to WAL and migrate at
/// the same moment, and all but one wait on its locks; a wait that ends in a lock error is
/// theirs to try again, as a store step's would be. Other errors end the wait at once: a
/// database that cannot be reached or refuses the login is reported, not waited for here.
async fn while_contended<T, F, Fut>(within: Duration, mut step: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(e) if contended(&e) && Instant::now() < deadline => {
                tracing::debug!(error = %e, "the database is locked by another connection, trying again");
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            Err(e) if contended(&e) => {
                return Err(StoreError::Unavailable(format!(
                    "another connection kept the database locked for {within:?} while the store \
                     opened: {e}"
                )));
            }
            Err(e) => return Err(map_sqlx(e)),
        }
    }
}

/// Whether `e` means another connection holds a lock this one waited for in vain: SQLite's
/// `BUSY` and `LOCKED` (any extended code), Postgres' serialization failures, deadlocks and
/// lock timeouts, a pool that timed out waiting for a connection, and migrations that failed
/// with any of those.
fn contended(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Migrate(m) => match m.as_ref() {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => contended(e),
            _ => false,
        },
        sqlx::Error::Database(db) => {
            if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                const BUSY: i32 = 5;
                const LOCKED: i32 = 6;
                return sqlx::error::DatabaseError::code(sqlite)
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, BUSY | LOCKED));
            }
            db.code()
                .is_some_and(|code| matches!(code.as_ref(), "40001" | "40P01" | "55P03"))
        }
        _ => false,
    }
}

/// Begin a transaction on a task of its own and wait for it there.
///
/// sqlx's `begin` is not cancel-safe: dropped after the database began the transaction but
/// before the `Transaction` value existed, it hands the connection back to the pool inside a
/// transaction nobody will end. On SQLite that connection keeps the write lock (every other
/// writer then times out as "database is locked") and its later statements never commit. Callers
/// are dropped mid-write in practice: a cancelled activity, or the budget meter once its
/// generation ends. A spawned `begin` always runs to its end; if the caller is gone by then, the
/// `Transaction` is dropped on that task and rolls back.
async fn begin_detached<DB, F>(begin: F) -> Result<Transaction<'static, DB>, StoreError>
where
    DB: Database,
    F: Future<Output = Result<Transaction<'static, DB>, sqlx::Error>> + Send + 'static,
{
    tokio::spawn(begin)
        .await
        .map_err(|e| StoreError::Unavailable(format!("beginning a transaction: {e}")))?
        .map_err(map_sqlx)
}

/// Map a database error by its cause. Everything about reaching the database, or the database
/// being unable to serve right now, is `Unavailable`: the activity fails retryably and the
/// workflow waits for the database, however long it is away. Only errors in the data itself
/// (constraint violations, undecodable rows, values out of range) and in the statements are
/// `Invalid`, which fails the activity for good. An error while the pool opens a connection
/// arrives as the same `Database` error, with the SQLSTATE (or SQLite result code) the server
/// or library refused the connection with, and is classified by that code like any other.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    let e = match e {
        sqlx::Error::Migrate(m) => return map_migrate(*m),
        e => e,
    };
    sqlite::note_read_only(&e);
    if unavailable(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Invalid(e.to_string())
    }
}

fn map_migrate(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(e) => map_sqlx(e),
        MigrateError::ExecuteMigration(e, version) => match map_sqlx(e) {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("migration {version}: {m}"))
            }
            other => StoreError::Invalid(format!("migration {version}: {other}")),
        },
        other => StoreError::Invalid(format!("migrations: {other}")),
    }
}

/// Whether `e` means "the database cannot serve now" rather than "this data is wrong".
pub(crate) fn unavailable(e: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match e {
        // The connection broke or never came up, or the pool gave up waiting for one.
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed => true,
        E::WorkerCrashed | E::BeginFailed | E::AnyDriverError(_) => true,
        E::Database(db) => database_unavailable(db.as_ref()),
        E::Configuration(_) | E::InvalidArgument(_) | E::RowNotFound | E::TypeNotFound { .. } => {
            false
        }
        E::ColumnIndexOutOfBounds { .. } | E::ColumnNotFound(_) | E::ColumnDecode { .. } => false,
        E::Encode(_) | E::Decode(_) | E::InvalidSavePointStatement => false,
        // A variant added later: assume it is about reaching the database.
        _ => true,
    }
}

/// An error the database reported, by its driver's code.
fn database_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return postgres::sqlstate_unavailable(pg.code());
    }
    if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        return sqlx::error::DatabaseError::code(sqlite)
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(sqlite::sqlite_unavailable);
    }
    // Another driver: by its SQLSTATE, if it reports one.
    db.code()
        .is_some_and(|code| postgres::sqlstate_unavailable(&code))
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid(format!("cannot encode JSON: {e}")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    column: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("{column}: invalid JSON: {e}")))
}

/// A `u64` for a `BIGINT` column.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value)
        .map_err(|_| StoreError::Invalid(format!("{what} {value} is above 2^63 - 1")))
}

/// A `BIGINT` column that holds a `u64`.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} is negative: {value}")))
}

/// An `INTEGER` column that holds a `u32` (attempt numbers).
pub(crate) fn to_u32(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Invalid(format!("{what} {value} is out of range")))
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2025-11-23T18:17:05.042Z`.
pub(crate) fn now() -> String {
    rfc3339(SystemTime::now())
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
