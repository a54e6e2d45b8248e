//! SQLite: [`SqlStore`]'s connect options and migrations, and the one hook that differs from
//! Postgres, [`Backend::begin_write`].
//!
//! Write transactions that read before they write (reserve, raise, settle, release, record
//! outcome) start with `BEGIN IMMEDIATE`: the connection takes SQLite's write lock up front,
//! waiting up to the busy timeout for other writers, in this process or another. Writers are thus
//! serialized, which is what makes a reservation's check-and-add atomic, and a transaction never
//! fails half-way with `SQLITE_BUSY` because another writer committed after it read (which a
//! deferred transaction in WAL mode would do without waiting). The write lock covers every row,
//! so the row locks Postgres needs ([`Backend::lock_project`]) are nothing to do here.

use super::{
    Backend, FIRST_CONNECT, SqlStore, SqlxStore, begin_detached, map_sqlx, while_contended,
};
use crate::ports::StoreError;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Pool, Sqlite, Transaction};
use std::str::FromStr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The embedded SQLite migrations (`activities/migrations/sqlite`).
static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections a worker keeps to its SQLite file (sqlx's default is 10).
const SQLITE_CONNECTIONS: u32 = 4;

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
    /// How long opening the store tries again while another connection holds the file (e.g.
    /// another process migrating it), before failing as [`StoreError::Unavailable`]. Default:
    /// [`FIRST_CONNECT`].
    pub(crate) open: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            busy: BUSY_TIMEOUT,
            keep_connections: true,
            open: FIRST_CONNECT,
        }
    }
}

impl SqlxStore<Sqlite> {
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
        // A few connections: writers take turns on SQLite's one write lock anyway, and each
        // connection is a thread of its own (sqlx runs SQLite off the async runtime), so more
        // connections only add threads to wake. No ping before handing one out: a connection
        // to a local file cannot go stale the way a network connection does, and the ping is
        // a round trip to that thread on every acquire.
        let mut pool = SqlitePoolOptions::new()
            .max_connections(SQLITE_CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(waits.busy * 3);
        if !waits.keep_connections {
            pool = pool.max_lifetime(Duration::ZERO);
        }
        let pool = pool.before_acquire(|conn, meta| {
            let stuck = left_in_transaction(conn);
            Box::pin(async move { Ok(!stuck && !opened_before_read_only(meta.age)) })
        });
        // Several processes opening a new file at once contend for it: the first turns it to
        // WAL and migrates it while the others' connects and migrations wait on its locks, and
        // some of those waits end in `SQLITE_BUSY` at once, whatever the busy timeout (SQLite
        // skips the busy handler where waiting could deadlock, e.g. changing the journal mode
        // or upgrading a read to a write). So opening starts over while the file is busy, as a
        // store step would be retried, up to `waits.open`.
        let pool = while_contended(waits.open, || async {
            let pool = pool.clone().connect_with(options.clone()).await?;
            match migrate_alone(&pool).await {
                Ok(()) => Ok(pool),
                Err(e) => {
                    pool.close().await;
                    Err(e)
                }
            }
        })
        .await?;
        Ok(SqlxStore { pool })
    }
}

/// Run the pending migrations holding the database's write lock (`BEGIN IMMEDIATE`, waited
/// for up to the busy timeout), the lock sqlx takes on Postgres but not on SQLite. Without it
/// two processes could both read that a migration is pending and both apply it; the second
/// then failed ("duplicate column name") and had to start over, once per migration it lost.
/// With it they take turns, and each sees what the ones before applied. sqlx's own
/// transaction per migration becomes a savepoint inside this one.
///
/// Only when a migration is pending: a process opening a migrated file takes no write lock, so
/// it opens while another connection holds one (a long write, a backup), as before.
async fn migrate_alone(pool: &Pool<Sqlite>) -> Result<(), sqlx::Error> {
    if !pending(pool).await {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    MIGRATOR.run_direct(&mut *tx).await?;
    tx.commit().await
}

/// Whether a migration of [`MIGRATOR`] is not applied yet (read without a write lock; a
/// database without sqlx's bookkeeping table has them all pending).
async fn pending(pool: &Pool<Sqlite>) -> bool {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            Err(_) => return true,
        };
    MIGRATOR
        .iter()
        .any(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
}

impl Backend for Sqlite {
    const STORE: &'static str = "SqlStore";
    const WRITES_SERIALIZED: bool = true;

    /// Begin a write transaction that holds the database's write lock from its first statement
    /// (see the module documentation). Dropping it without commit rolls back; so does dropping
    /// the call itself ([`begin_detached`]).
    async fn begin_write(pool: &Pool<Sqlite>) -> Result<Transaction<'static, Sqlite>, StoreError> {
        let pool = pool.clone();
        begin_detached(async move { pool.begin_with("BEGIN IMMEDIATE").await }).await
    }

    /// Nothing: the write transaction holds every row.
    async fn lock_project(_: &mut SqliteConnection, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Nothing: the write transaction holds every row.
    async fn lock_run_projects(
        _: &mut SqliteConnection,
        _: &str,
        _: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// When a connection last reported the database read-only, in nanoseconds since [`EPOCH`]
/// (0: never).
///
/// SQLite opens a file it may not write read-only, without an error, and the connection stays
/// read-only when the file becomes writable again (permissions restored after a backup, a
/// read-only mount remounted); a connection to a file that was replaced under it reports
/// `SQLITE_READONLY_DBMOVED` for good. Kept in the pool, such connections fail every write
/// until the process restarts. So a connection opened before the last read-only error is closed
/// instead of handed out ([`opened_before_read_only`], the pool's `before_acquire`), and the
/// retry of the refused write gets a fresh connection, which is writable once the file is.
///
/// One instant for the whole process, not one per store: errors are classified by
/// [`map_sqlx`](super::map_sqlx), far from the pool they came from. Another store in the
/// process then reopens its connections once too, which costs a few file opens; an error that
/// is not about read-only connections never sets it. Connections opened while the file is
/// still read-only fail their first write and set it again.
static READ_ONLY_SEEN: AtomicU64 = AtomicU64::new(0);

/// Whether `conn` still counts itself inside a transaction when it is handed out: a write that
/// failed mid-transaction because the file could not be written (`chattr +i`, a disk error) is
/// rolled back by SQLite itself, so the rollback sqlx sends when the transaction is dropped fails
/// and sqlx keeps counting the transaction as open. Every later `BEGIN IMMEDIATE` on that
/// connection then failed ("attempted to call begin_with at non-zero transaction depth"), which
/// failed the workflow as invalid data. Such a connection is closed instead of handed out, and
/// the retry of the refused write gets a fresh one.
fn left_in_transaction(conn: &SqliteConnection) -> bool {
    use sqlx::TransactionManager as _;
    <Sqlite as sqlx::Database>::TransactionManager::get_transaction_depth(conn) > 0
}

/// The process's reference instant for [`READ_ONLY_SEEN`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Note `e` if it says the database is read-only (`SQLITE_READONLY` or one of its extended
/// codes, e.g. 1032 `SQLITE_READONLY_DBMOVED`).
pub(super) fn note_read_only(e: &sqlx::Error) {
    const READONLY: i32 = 8;
    let read_only = match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::sqlite::SqliteError>()
            .and_then(|e| sqlx::error::DatabaseError::code(e)?.parse::<i32>().ok())
            .is_some_and(|code| code & 0xff == READONLY),
        _ => false,
    };
    if read_only {
        let since = u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Never 0, which means "never".
        READ_ONLY_SEEN.fetch_max(since.max(1), Ordering::Relaxed);
    }
}

/// Whether a connection `age` old was opened before the last read-only error (see
/// [`READ_ONLY_SEEN`]), and so may be read-only itself.
fn opened_before_read_only(age: Duration) -> bool {
    let seen = READ_ONLY_SEEN.load(Ordering::Relaxed);
    if seen == 0 {
        return false;
    }
    let opened = EPOCH.elapsed().saturating_sub(age);
    opened.as_nanos() <= u128::from(seen)
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
