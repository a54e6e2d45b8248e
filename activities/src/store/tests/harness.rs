//! A fresh database per test, on either backend.
//!
//! Postgres: the server of `RETAKE_TEST_POSTGRES_URL` (default [`DEFAULT_POSTGRES_URL`]), where
//! each test creates a database `retake_t_<random hex>` and drops it at the end. If that fails
//! (no server, refused login, no right to create databases) the Postgres tests print why and
//! pass, unless the environment variable `CI` is set (to anything but the empty string): then
//! they fail.

use super::super::{PgStore, SqlStore};
use crate::ports::Store;
use sqlx::sqlite::{SqliteConnectOptions, SqliteLockingMode};
use sqlx::{Connection, PgConnection, SqliteConnection};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

pub(super) const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How long setting up or dropping a test database may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A store of either backend: the ports through `Deref`, raw SQL through the methods below.
#[derive(Debug, Clone)]
pub(super) enum AnyStore {
    Sqlite(SqlStore),
    Postgres(PgStore),
}

impl Deref for AnyStore {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        match self {
            AnyStore::Sqlite(store) => store,
            AnyStore::Postgres(store) => store,
        }
    }
}

impl AnyStore {
    /// The one `BIGINT` that `sql` selects.
    pub(super) async fn count(&self, sql: &str) -> i64 {
        let count = match self {
            AnyStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
            AnyStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        };
        count.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The one text that `sql` selects.
    pub(super) async fn text(&self, sql: &str) -> String {
        let text = match self {
            AnyStore::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
            AnyStore::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        };
        text.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub(super) async fn execute(&self, sql: &str) {
        let done = match self {
            AnyStore::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
            AnyStore::Postgres(s) => sqlx::query(sql).execute(s.pool()).await.map(drop),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub(super) async fn close(&self) {
        match self {
            AnyStore::Sqlite(s) => s.close().await,
            AnyStore::Postgres(s) => s.close().await,
        }
    }
}

/// Where a test's database lives.
pub(super) enum TestDb {
    /// `retake.db` in this directory (deleted with it).
    Sqlite(TempDir),
    /// Database `name` on the server of `admin_url`, reached at `url`.
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

impl TestDb {
    pub(super) fn sqlite() -> TestDb {
        TestDb::Sqlite(TempDir::new().expect("a temporary directory"))
    }

    /// A fresh database on the test server, or `None` (after saying why) if there is none and
    /// `CI` is not set.
    pub(super) async fn postgres() -> Option<TestDb> {
        let admin_url = std::env::var("RETAKE_TEST_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| DEFAULT_POSTGRES_URL.to_owned());
        match create_database(&admin_url).await {
            Ok(db) => Some(db),
            Err(why) => {
                let what = format!(
                    "the Postgres store tests need a PostgreSQL server where they can create \
                     databases, but {admin_url} (RETAKE_TEST_POSTGRES_URL) failed: {why}"
                );
                if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
                    panic!("{what} (CI is set, so this is an error; scripts/test starts one)");
                }
                eprintln!("skipped: {what} (set CI to make this an error)");
                None
            }
        }
    }

    /// Every spelling of the database's location that its store accepts, the usual one first.
    pub(super) fn urls(&self) -> Vec<String> {
        match self {
            TestDb::Sqlite(dir) => {
                let path = dir.path().join("retake.db").display().to_string();
                vec![
                    format!("sqlite://{path}"),
                    path.clone(),
                    format!("sqlite:{path}"),
                ]
            }
            TestDb::Postgres { url, .. } => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                vec![
                    url.clone(),
                    format!("postgresql://{rest}"),
                    format!("POSTGRES://{rest}"),
                ]
            }
        }
    }

    /// A new store (with its own pool) on the database.
    pub(super) async fn open(&self) -> AnyStore {
        let urls = self.urls();
        self.open_url(&urls[0]).await
    }

    pub(super) async fn open_url(&self, url: &str) -> AnyStore {
        match self {
            TestDb::Sqlite(_) => {
                AnyStore::Sqlite(SqlStore::connect(url).await.expect("connect to SQLite"))
            }
            TestDb::Postgres { .. } => {
                AnyStore::Postgres(PgStore::connect(url).await.expect("connect to Postgres"))
            }
        }
    }

    /// Drop the database (best effort), then pass on the test's panic, if any.
    pub(super) async fn finish(self, result: std::thread::Result<()>) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = &self
        {
            let dropped = async {
                let mut admin = admin(admin_url).await?;
                // FORCE: pools the test left open are disconnected.
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(ADMIN_TIMEOUT, dropped).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("warning: could not drop the test database {name}: {e}"),
                Err(_) => eprintln!("warning: dropping the test database {name} timed out"),
            }
        }
        drop(self);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

/// The database refusing service until [`Outage::end`].
pub(super) enum Outage {
    /// A connection that holds SQLite's exclusive lock on the whole file (locking mode
    /// EXCLUSIVE, an open `BEGIN EXCLUSIVE`): no other connection can read or write.
    Sqlite(SqliteConnection),
    /// The database refuses connections (`ALLOW_CONNECTIONS false`); its backends were
    /// terminated.
    Postgres { admin: PgConnection, name: String },
}

impl TestDb {
    /// Take the database away from every store on it. On SQLite, only stores that do not keep
    /// connections open can be locked out, and their open ones must close first: the lock waits
    /// for them up to the locker's busy timeout.
    pub(super) async fn outage(&self) -> Outage {
        match self {
            TestDb::Sqlite(dir) => {
                let options = SqliteConnectOptions::new()
                    .filename(dir.path().join("retake.db"))
                    .locking_mode(SqliteLockingMode::Exclusive)
                    .busy_timeout(ADMIN_TIMEOUT);
                let mut conn = SqliteConnection::connect_with(&options)
                    .await
                    .expect("open the SQLite file to lock it");
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut conn)
                    .await
                    .expect("lock the SQLite file");
                Outage::Sqlite(conn)
            }
            TestDb::Postgres {
                admin_url, name, ..
            } => {
                let mut admin = admin(admin_url).await.expect("an admin connection");
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    .execute(&mut admin)
                    .await
                    .expect("refuse connections");
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(name)
                .execute(&mut admin)
                .await
                .expect("terminate the database's backends");
                Outage::Postgres {
                    admin,
                    name: name.clone(),
                }
            }
        }
    }
}

impl Outage {
    /// Give the database back.
    pub(super) async fn end(self) {
        match self {
            Outage::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("unlock the SQLite file");
                conn.close().await.expect("close the locking connection");
            }
            Outage::Postgres { mut admin, name } => {
                sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
                    .execute(&mut admin)
                    .await
                    .expect("allow connections again");
                let _ = admin.close().await;
            }
        }
    }
}

async fn admin(admin_url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(ADMIN_TIMEOUT, PgConnection::connect(admin_url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {ADMIN_TIMEOUT:?}")),
    }
}

async fn create_database(admin_url: &str) -> Result<TestDb, String> {
    let name = format!("retake_t_{}", random_hex());
    let url = with_database(admin_url, &name)
        .ok_or_else(|| format!("{admin_url:?} is not a postgres:// URL"))?;
    let mut admin = admin(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
    let _ = admin.close().await;
    Ok(TestDb::Postgres {
        admin_url: admin_url.to_owned(),
        name,
        url,
    })
}

/// `url` with its path (the database) replaced by `name`; the query string is kept.
pub(super) fn with_database(url: &str, name: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    let authority = location.split_once('/').map_or(location, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// 16 random hex digits (std's per-process random hash keys, the time, a counter).
fn random_hex() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", hasher.finish())
}
