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
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .acquire_timeout(BUSY_TIMEOUT * 3)
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
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

/// Map a database error: the database being unreachable, busy or out of resources is
/// `Unavailable` (retried); undecodable rows, constraint violations and bad SQL are `Invalid`.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let e = match e {
        E::Migrate(m) => return map_migrate(*m),
        e => e,
    };
    let unavailable = match &e {
        E::Io(_) | E::Tls(_) | E::Protocol(_) | E::PoolTimedOut | E::PoolClosed => true,
        E::WorkerCrashed | E::BeginFailed | E::AnyDriverError(_) => true,
        E::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(pg) => sqlstate_unavailable(pg.code()),
            None => db_unavailable(db.code().as_deref(), db.message()),
        },
        E::Configuration(_) | E::InvalidArgument(_) | E::RowNotFound | E::TypeNotFound { .. } => {
            false
        }
        E::ColumnIndexOutOfBounds { .. } | E::ColumnNotFound(_) | E::ColumnDecode { .. } => false,
        E::Encode(_) | E::Decode(_) | E::InvalidSavePointStatement => false,
        // A variant added later: assume it is about reaching the database.
        _ => true,
    };
    if unavailable {
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

/// Whether a SQLite error means "try again later". `code` is SQLite's extended result code (a
/// number; a non-numeric code is taken for a SQLSTATE).
fn db_unavailable(code: Option<&str>, message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    if message.contains("database is locked") || message.contains("busy") {
        return true;
    }
    match code {
        Some(code) => match code.parse::<i32>() {
            // SQLITE_NOMEM, _READONLY, _INTERRUPT, _IOERR, _FULL, _CANTOPEN, _PROTOCOL,
            // _BUSY, _LOCKED (primary code in the low byte).
            Ok(n) => matches!(n & 0xff, 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15),
            Err(_) => sqlstate_unavailable(code),
        },
        None => false,
    }
}

/// Whether a Postgres SQLSTATE means "try again later": connection exceptions, serialization
/// failure, deadlock, lock wait timeout (`lock_timeout`), statement timeout or cancel,
/// insufficient resources, operator intervention (e.g. shutdown). Checked on the SQLSTATE
/// itself, never parsed as a number: `40001` is not a SQLite result code.
fn sqlstate_unavailable(code: &str) -> bool {
    code.starts_with("08")
        || code == "40001"
        || code == "40P01"
        || code == "55P03"
        || code == "57014"
        || code.starts_with("53")
        || code.starts_with("57P")
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
