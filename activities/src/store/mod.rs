//! SQL store adapters: [`SqlStore`] implements [`PolicyStore`], [`BudgetLedger`](crate::ports::BudgetLedger)
//! and [`AttemptStore`](crate::ports::AttemptStore) on SQLite, [`PgStore`] the same on PostgreSQL.
//! [`connect_any`] picks one by the URL.
//!
//! The SQL is kept portable (numbered `$n` parameters, `INSERT ... ON CONFLICT`, `RETURNING`,
//! `CASE`) and [`PgStore`] reuses it; SQLite-specific parts are the connect options, the
//! `BEGIN IMMEDIATE` of write transactions ([`SqlStore::begin_write`]) and the migration
//! (`migrations/sqlite/`; Postgres has its own in `migrations/postgres/`).
//!
//! Write transactions that read before they write (reserve, settle, release, record outcome)
//! start with `BEGIN IMMEDIATE`: the connection takes SQLite's write lock up front, waiting up to
//! the busy timeout for other writers, in this process or another. Writers are thus serialized,
//! which is what makes a reservation's check-and-add atomic, and a transaction never fails
//! half-way with `SQLITE_BUSY` because another writer committed after it read (which a deferred
//! transaction in WAL mode would do without waiting).

mod attempts;
mod budget;
mod pg;
#[cfg(test)]
mod tests;

pub use pg::PgStore;

use crate::ports::{PolicyStore, Store, StoreError};
use async_trait::async_trait;
use serde_json::Value;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row, Sqlite, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The embedded SQLite migrations (`activities/migrations/sqlite`).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

const SELECT_POLICY: &str = "SELECT policy FROM retry_policies WHERE scene_type = $1";

const UPSERT_POLICY: &str = "INSERT INTO retry_policies (scene_type, policy, updated_at) \
     VALUES ($1, $2, $3) ON CONFLICT (scene_type) DO UPDATE SET policy = excluded.policy, \
     updated_at = excluded.updated_at";

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Open the store at `url`: [`PgStore`] for `postgres://` and `postgresql://` URLs, [`SqlStore`]
/// for anything else (`sqlite://PATH`, `sqlite:PATH` or a bare file path; other schemes are
/// refused as [`StoreError::Invalid`]).
pub async fn connect_any(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres_url(url) {
        Ok(Arc::new(PgStore::connect(url).await?))
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

/// How a [`SqlStore`] waits for the database. Only tests that lock the database on purpose
/// change them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// How long a statement waits for another connection's lock before failing with
    /// `SQLITE_BUSY` (getting a connection from the pool may take three times as long).
    /// Default: [`BUSY_TIMEOUT`].
    pub(crate) busy: Duration,
    /// Keep connections open between calls. Without, each call opens the file anew: an open
    /// connection in WAL mode holds a shared lock that would keep another process from locking
    /// the whole database. Default: true.
    pub(crate) keep_connections: bool,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            busy: BUSY_TIMEOUT,
            keep_connections: true,
        }
    }
}

/// The SQL store: policies, budgets and reservations, attempts and outcomes.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: SqlitePool,
}

impl SqlStore {
    /// Open (creating the file if missing) the SQLite database at `url` and run the pending
    /// migrations. `url` is `sqlite://PATH`, `sqlite:PATH` (both may carry SQLite URI
    /// parameters after `?`) or a bare file path.
    pub async fn connect(url: &str) -> Result<SqlStore, StoreError> {
        Self::connect_with(url, Waits::default()).await
    }

    /// [`connect`](Self::connect) with other [`Waits`].
    pub(crate) async fn connect_with(url: &str, waits: Waits) -> Result<SqlStore, StoreError> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(map_sqlx)?
        } else if url.contains("://") {
            return Err(StoreError::Invalid(format!(
                "unsupported store URL {url:?}: only sqlite:// (or a file path) is supported"
            )));
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(waits.busy)
            .foreign_keys(true);
        let mut pool = SqlitePoolOptions::new().acquire_timeout(waits.busy * 3);
        if !waits.keep_connections {
            pool = pool.max_lifetime(Duration::ZERO);
        }
        let pool = pool.connect_with(options).await.map_err(map_sqlx)?;
        // Two processes opening a fresh file at once may both try to apply a migration; the loser
        // fails, and on the next try sees it applied.
        let mut tries = 0;
        loop {
            match MIGRATOR.run(&pool).await {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tracing::debug!(error = %e, "running migrations failed, trying again");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => return Err(map_migrate(e)),
            }
        }
        Ok(SqlStore { pool })
    }

    /// The connection pool (for ad-hoc queries, e.g. in tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Close every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begin a write transaction that holds the database's write lock from its first statement
    /// (see the module documentation). Dropping it without commit rolls back.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_sqlx)
    }
}

#[async_trait]
impl PolicyStore for SqlStore {
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
        return sqlstate_unavailable(pg.code());
    }
    if let Some(sqlite) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        return sqlx::error::DatabaseError::code(sqlite)
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(sqlite_unavailable);
    }
    // Another driver: by its SQLSTATE, if it reports one.
    db.code().is_some_and(|code| sqlstate_unavailable(&code))
}

/// Whether a SQLite (extended) result code means "try again later": the database is busy or
/// locked by another connection (`BUSY`, `LOCKED`), cannot be opened, read or written
/// (`CANTOPEN`, `IOERR`, `FULL`, `READONLY`, `PERM`), or the library ran out of memory, was
/// interrupted or lost a locking race (`NOMEM`, `INTERRUPT`, `PROTOCOL`). Extended codes carry
/// their primary code in the low byte (e.g. `SQLITE_BUSY_SNAPSHOT` = 517 = 5 | 2 << 8).
/// Constraint violations, SQL errors, type mismatches, corruption and the rest are data or
/// program errors.
pub(crate) fn sqlite_unavailable(code: i32) -> bool {
    const PERM: i32 = 3;
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const NOMEM: i32 = 7;
    const READONLY: i32 = 8;
    const INTERRUPT: i32 = 9;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    const PROTOCOL: i32 = 15;
    matches!(
        code & 0xff,
        PERM | BUSY | LOCKED | NOMEM | READONLY | INTERRUPT | IOERR | FULL | CANTOPEN | PROTOCOL
    )
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

/// Read a column, mapping a missing or undecodable column to `Invalid`.
pub(crate) fn get<'r, T>(row: &'r sqlx::sqlite::SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column).map_err(map_sqlx)
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
