//! Opening a store: processes that meet a new database at the same moment, and a database that
//! another connection keeps locked while a store opens.

use super::*;
use crate::store::Waits;
use sqlx::sqlite::{SqliteConnectOptions, SqliteLockingMode};
use sqlx::{Connection, SqliteConnection};
use std::time::Instant;

/// Eight stores (each with its own pool, as eight workers would have) open one new database at
/// the same moment: each connects, turns the file to WAL and migrates while the others do.
async fn stores_opened_at_the_same_moment_on_a_new_database_all_open(db: &TestDb) {
    const STORES: usize = 8;
    let url = db.urls().remove(0);
    let barrier = Arc::new(tokio::sync::Barrier::new(STORES));
    let opens: Vec<_> = (0..STORES)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                connect_any(&url).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.expect("the task ran").expect("the store opened"));
    }
    // Every migration was applied once, and every store works.
    let applied = match db {
        TestDb::Sqlite(_) => "SELECT COUNT(*) FROM _sqlx_migrations",
        TestDb::Postgres { .. } => "SELECT COUNT(*)::BIGINT FROM _sqlx_migrations",
    };
    let first = db.open().await;
    assert_eq!(first.count(applied).await, 7);
    for store in &stores {
        store.set_limit("p", Some(1000)).await.expect("a write");
    }
}

store_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    stores_opened_at_the_same_moment_on_a_new_database_all_open,
}

/// A connection holding the exclusive lock of `path` (created if missing), as a process in the
/// middle of creating or migrating it does.
async fn lock(path: &std::path::Path) -> SqliteConnection {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .locking_mode(SqliteLockingMode::Exclusive);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("open the file to lock it");
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut conn)
        .await
        .expect("lock the file");
    conn
}

/// Short waits, so that the lock below outlasts many of them.
fn impatient(open: Duration) -> Waits {
    Waits {
        busy: Duration::from_millis(100),
        open,
        ..Waits::default()
    }
}

/// Another process holds a new file longer than the busy timeout while a store opens it (the
/// report: a worker started beside two others exited with "database is locked"). Opening waits
/// for the file, as any store step would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opening_a_new_sqlite_file_another_process_holds_waits_until_it_is_free() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let mut locker = lock(&path).await;
    let url = format!("sqlite://{}", path.display());
    let opening = tokio::spawn(async move {
        SqlStore::connect_with(&url, impatient(Duration::from_secs(30))).await
    });
    // Ten busy timeouts: the store's first tries have all given up by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!opening.is_finished(), "{:?}", opening.await);
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();

    let store = opening
        .await
        .unwrap()
        .expect("the store opened once the file was free");
    store.set_limit("p", Some(1000)).await.expect("a write");
}

/// A file that stays locked fails the opening after its bounded wait, saying why.
#[tokio::test]
async fn a_store_opening_a_sqlite_file_that_stays_locked_fails_after_its_wait_saying_why() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let _locker = lock(&path).await;
    let started = Instant::now();
    let url = format!("sqlite://{}", path.display());
    let err = SqlStore::connect_with(&url, impatient(Duration::from_millis(500)))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    let StoreError::Unavailable(why) = err else {
        panic!("{err:?}")
    };
    assert!(
        why.contains("kept the database locked for 500ms") && why.contains("database is locked"),
        "{why}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "gave up after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "gave up only after {waited:?}"
    );
}
