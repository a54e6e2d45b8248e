//! A database that refuses service makes every port method `Unavailable` (retried), never
//! `Invalid` (which would fail workflows for good); once it is back, everything works again.

use super::*;
use crate::store::{Waits, map_sqlx, sqlite_unavailable, sqlstate_unavailable, unavailable};
use std::time::SystemTime;

/// A store whose calls fail quickly while the database is away: on SQLite a short busy timeout,
/// and no connection kept between calls (an open one would stop the outage from locking the
/// file).
async fn outage_store(db: &TestDb) -> AnyStore {
    match db {
        TestDb::Sqlite(_) => {
            let waits = Waits {
                busy: Duration::from_millis(100),
                keep_connections: false,
                ..Waits::default()
            };
            let store = SqlStore::connect_with(&db.urls()[0], waits).await;
            AnyStore::Sqlite(store.expect("connect to SQLite"))
        }
        TestDb::Postgres { .. } => db.open().await,
    }
}

/// Call every port method once, as a retry of run `run` would, and say how each ended.
async fn every_method(store: &AnyStore, run: &str) -> Vec<(&'static str, Result<(), StoreError>)> {
    let k = key(run, 1);
    let policy = json!({"max_attempts": 2});
    let mut done = Vec::new();
    let mut note = |name, result: Result<(), StoreError>| done.push((name, result));
    note(
        "set_policy",
        store.set_policy("dialogue", &policy, "test").await,
    );
    note("policy", store.policy("dialogue").await.map(drop));
    note(
        "set_limit",
        store.set_limit("p1", Some(100_000)).await.map(drop),
    );
    note("reserve", store.reserve(&k, "p1", 100).await.map(drop));
    note("raise", store.raise(&k, "p1", 200).await.map(drop));
    note("budget", store.budget("p1").await.map(drop));
    note(
        "held_before",
        store.held_before(SystemTime::now()).await.map(drop),
    );
    note("settle", store.settle(&k, 150).await);
    note("release", store.release(&key(run, 2)).await);
    note(
        "record_attempt",
        store
            .record_attempt(&record_attempt(run, record(1, 0.9)))
            .await,
    );
    note(
        "record_outcome",
        store
            .record_outcome(&outcome(
                run,
                Outcome::Passed,
                Some(1),
                vec![record(1, 0.9)],
            ))
            .await,
    );
    note("attempts", store.attempts("5").await.map(drop));
    note("outcomes", store.outcomes("5").await.map(drop));
    note("stats", store.stats().await.map(drop));
    note(
        "gpu_ms_quantile",
        store.gpu_ms_quantile("dialogue", 0.9, 50).await.map(drop),
    );
    done
}

async fn a_store_whose_database_refuses_service_is_unavailable_for_every_method_until_it_is_back(
    db: &TestDb,
) {
    let store = outage_store(db).await;
    for (name, result) in every_method(&store, "before").await {
        assert!(result.is_ok(), "{name} before the outage: {result:?}");
    }

    let outage = db.outage().await;
    for (name, result) in every_method(&store, "during").await {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{name} during the outage: {result:?}"
        );
    }
    outage.end().await;

    for (name, result) in every_method(&store, "after").await {
        assert!(result.is_ok(), "{name} after the outage: {result:?}");
    }
    // Nothing of the calls made during the outage was half done.
    let b = budget(&store, "p1").await;
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 300));
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM budget_reservations").await,
        2
    );
    let runs: Vec<String> = store
        .attempts("5")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.run_id)
        .collect();
    assert_eq!(runs, ["before", "after"]);
}

store_tests! {
    #[tokio::test]
    a_store_whose_database_refuses_service_is_unavailable_for_every_method_until_it_is_back,
}

#[tokio::test]
async fn a_sqlite_file_that_cannot_be_opened_is_unavailable() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-directory").join("retake.db");
    let err = SqlStore::connect(&missing.display().to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

/// A worker that opened its SQLite file while the file was read-only (permissions not yet
/// restored after a backup, a read-only mount remounted) got connections SQLite had opened
/// read-only: it falls back to that, silently, when it cannot open the file for writing, and the
/// connection stays so. Kept in the pool, they failed every write with `SQLITE_READONLY` after
/// the file was writable again, until the worker restarted. A write refused as read-only is
/// `Unavailable` (retried), and the retry gets a fresh connection.
#[tokio::test]
async fn a_sqlite_store_opened_while_its_file_was_read_only_writes_once_the_file_is_writable() {
    let db = TestDb::sqlite();
    let store = db.open().await;
    store
        .set_policy("dialogue", &json!({"max_attempts": 2}), "test")
        .await
        .unwrap();
    store.close().await;
    let TestDb::Sqlite(dir) = &db else {
        unreachable!("a SQLite TestDb");
    };
    // SQLite would reuse a descriptor the first store opened for writing.
    closed_by_this_process(&db_path(dir)).await;
    let read_only = match Unwritable::make(&db_path(dir)) {
        Ok(read_only) => read_only,
        Err(why) => {
            eprintln!("skipped: cannot make a file read-only here: {why}");
            return;
        }
    };

    let store = SqlStore::connect(&db.urls()[0]).await.unwrap();
    assert_eq!(
        store.policy("dialogue").await.unwrap(),
        Some(json!({"max_attempts": 2}))
    );
    let err = store
        .set_policy("dialogue", &json!({"max_attempts": 3}), "test")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("readonly")),
        "{err:?}"
    );
    read_only.end();

    store
        .set_policy("dialogue", &json!({"max_attempts": 3}), "test")
        .await
        .unwrap();
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    store
        .record_attempt(&record_attempt("r1", record(1, 0.9)))
        .await
        .unwrap();
    assert_eq!(
        store.policy("dialogue").await.unwrap(),
        Some(json!({"max_attempts": 3}))
    );
    store.close().await;
}

/// Wait until no file descriptor of this process refers to `path` (Linux): a closed pool's
/// connections close on their own threads, after `close` returns.
async fn closed_by_this_process(path: &std::path::Path) {
    let open = || {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .any(|target| target == path)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} is still open",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A file this process cannot open for writing until [`Unwritable::end`] (or drop): by its
/// permission bits, or, where they do not stop this process (root), by the immutable attribute
/// (`chattr +i`, which needs `CAP_LINUX_IMMUTABLE` and a filesystem that has it).
struct Unwritable {
    path: PathBuf,
    restore: Option<Restore>,
}

enum Restore {
    Mode(std::fs::Permissions),
    Immutable,
}

impl Unwritable {
    fn make(path: &std::path::Path) -> Result<Unwritable, String> {
        let writable =
            |path: &std::path::Path| std::fs::OpenOptions::new().write(true).open(path).is_ok();
        let before = std::fs::metadata(path)
            .map_err(|e| e.to_string())?
            .permissions();
        let mut read_only = before.clone();
        read_only.set_readonly(true);
        std::fs::set_permissions(path, read_only).map_err(|e| e.to_string())?;
        let mut made = Unwritable {
            path: path.to_owned(),
            restore: Some(Restore::Mode(before)),
        };
        if !writable(path) {
            return Ok(made);
        }
        made.restore_now();
        let chattr = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .map_err(|e| format!("chattr: {e}"))?;
        if !chattr.status.success() {
            return Err(format!(
                "permissions do not stop this process and chattr +i failed: {}",
                String::from_utf8_lossy(&chattr.stderr).trim()
            ));
        }
        made.restore = Some(Restore::Immutable);
        if writable(path) {
            return Err("the file is still writable with chattr +i".to_owned());
        }
        Ok(made)
    }

    /// Make the file writable again.
    fn end(mut self) {
        self.restore_now();
    }

    fn restore_now(&mut self) {
        match self.restore.take() {
            Some(Restore::Mode(before)) => {
                std::fs::set_permissions(&self.path, before).expect("restore the permissions");
            }
            Some(Restore::Immutable) => {
                let done = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(&self.path)
                    .status()
                    .expect("chattr -i");
                assert!(done.success(), "chattr -i {}", self.path.display());
            }
            None => {}
        }
    }
}

impl Drop for Unwritable {
    /// Also on a failed test: an immutable file would outlive its temporary directory.
    fn drop(&mut self) {
        self.restore_now();
    }
}

/// A missing database (not restored yet) and a role that cannot log in (a rotated password) are
/// outages an operator ends, not bad data: `Unavailable` when the pool connects.
#[tokio::test]
async fn connecting_to_a_missing_postgres_database_or_as_an_unknown_role_is_unavailable() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        let TestDb::Postgres { url, name, .. } = &db else {
            unreachable!("a Postgres TestDb");
        };
        let missing = url.replace(name.as_str(), "retake_no_such_database");
        let err = PgStore::connect(&missing).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("does not exist")),
            "{err:?}"
        );
        let rest = url.split_once('@').map_or(url.as_str(), |(_, rest)| rest);
        let unknown_role = format!("postgres://retake_no_such_role@{rest}");
        let err = PgStore::connect(&unknown_role).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("retake_no_such_role")),
            "{err:?}"
        );
    }))
    .await;
    db.finish(result).await;
}

#[test]
fn postgres_sqlstates_of_outages_are_unavailable_and_data_errors_invalid() {
    let unavailable_codes = [
        "08000", "08001", "08003", "08006", "08P01", // connection exceptions
        "28000", "28P01", // authorisation: a dropped role, a rotated password
        "3D000", // the database does not exist
        "40001", "40P01", "40003", // serialization failure, deadlock, commit unknown
        "42501", // insufficient privilege
        "53000", "53100", "53200", "53300", // out of resources
        "55000", "55006", "55P03", // not accepting connections, object in use, lock timeout
        "57000", "57014", "57P01", "57P02", "57P03", "57P04", // operator intervention
        "58000", "58030", // system error, I/O error
        "25006", "25P03", // read-only (failover), idle-in-transaction timeout
    ];
    for code in unavailable_codes {
        assert!(sqlstate_unavailable(code), "{code} must be Unavailable");
    }
    let invalid_codes = [
        "22003", "22P02", "22001", // data exceptions: out of range, bad text, too long
        "23502", "23503", "23505", "23514", // constraint violations
        "42601", "42P01", "42703", // syntax error, undefined table or column
        "40002", // an integrity violation that rolled back
        "XX000", "0A000",
    ];
    for code in invalid_codes {
        assert!(!sqlstate_unavailable(code), "{code} must be Invalid");
    }
}

#[test]
fn sqlite_result_codes_of_outages_are_unavailable_and_data_errors_invalid() {
    let unavailable_codes = [
        (5, "BUSY"),
        (517, "BUSY_SNAPSHOT"),
        (261, "BUSY_RECOVERY"),
        (6, "LOCKED"),
        (262, "LOCKED_SHAREDCACHE"),
        (14, "CANTOPEN"),
        (1038, "CANTOPEN_ISDIR"),
        (10, "IOERR"),
        (266, "IOERR_READ"),
        (13, "FULL"),
        (8, "READONLY"),
        (3, "PERM"),
        (7, "NOMEM"),
        (9, "INTERRUPT"),
        (15, "PROTOCOL"),
    ];
    for (code, name) in unavailable_codes {
        assert!(
            sqlite_unavailable(code),
            "SQLITE_{name} must be Unavailable"
        );
    }
    let invalid_codes = [
        (1, "ERROR"),
        (19, "CONSTRAINT"),
        (2067, "CONSTRAINT_UNIQUE"),
        (787, "CONSTRAINT_FOREIGNKEY"),
        (275, "CONSTRAINT_CHECK"),
        (20, "MISMATCH"),
        (25, "RANGE"),
        (18, "TOOBIG"),
        (11, "CORRUPT"),
        (26, "NOTADB"),
    ];
    for (code, name) in invalid_codes {
        assert!(!sqlite_unavailable(code), "SQLITE_{name} must be Invalid");
    }
}

#[test]
fn errors_reaching_the_database_are_unavailable_and_errors_in_the_data_invalid() {
    use sqlx::Error as E;
    let io = |kind| E::Io(std::io::Error::from(kind));
    for e in [
        E::PoolTimedOut,
        E::PoolClosed,
        E::WorkerCrashed,
        E::BeginFailed,
        io(std::io::ErrorKind::ConnectionRefused),
        io(std::io::ErrorKind::ConnectionReset),
        E::Protocol("unexpected end of stream".to_owned()),
        E::Tls("handshake failed".into()),
    ] {
        assert!(unavailable(&e), "{e:?} must be Unavailable");
        assert!(matches!(map_sqlx(e), StoreError::Unavailable(_)));
    }
    for e in [
        E::RowNotFound,
        E::ColumnNotFound("gpu_ms".to_owned()),
        E::Decode("not a number".into()),
        E::Configuration("bad URL".into()),
        E::InvalidArgument("bad argument".to_owned()),
    ] {
        assert!(!unavailable(&e), "{e:?} must be Invalid");
        assert!(matches!(map_sqlx(e), StoreError::Invalid(_)));
    }
}

/// Real errors from SQLite: a unique violation is `Invalid`, a statement kept waiting by another
/// connection's write lock `Unavailable` (`SQLITE_BUSY`, after the busy timeout).
#[tokio::test]
async fn sqlite_errors_are_classified_by_their_result_code() {
    let db = TestDb::sqlite();
    let waits = Waits {
        busy: Duration::from_millis(100),
        keep_connections: true,
        ..Waits::default()
    };
    let store = SqlStore::connect_with(&db.urls()[0], waits).await.unwrap();
    let insert =
        "INSERT INTO retry_policies (scene_type, policy, updated_at) VALUES ('a', '{}', 'x')";
    sqlx::query(insert).execute(store.pool()).await.unwrap();
    let duplicate = sqlx::query(insert).execute(store.pool()).await.unwrap_err();
    assert!(matches!(map_sqlx(duplicate), StoreError::Invalid(_)));

    let mut writer = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("DELETE FROM retry_policies")
        .execute(&mut *writer)
        .await
        .unwrap();
    let err = store
        .set_policy("b", &json!({"max_attempts": 2}), "test")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("locked")),
        "{err:?}"
    );
    // Readers are not blocked by a writer in WAL mode.
    assert_eq!(store.policy("a").await.unwrap(), Some(json!({})));
    writer.rollback().await.unwrap();
    store
        .set_policy("b", &json!({"max_attempts": 2}), "test")
        .await
        .unwrap();
}
