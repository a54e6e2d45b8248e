//! Postgres only: what has no SQLite counterpart among the shared tests.

use super::harness::with_database;
use super::*;
use crate::store::{StoreOptions, map_sqlx};

#[tokio::test]
async fn pg_store_refuses_urls_of_other_databases() {
    for url in [
        "sqlite://retake.db",
        "retake.db",
        "mysql://localhost/retake",
    ] {
        let err = PgStore::connect(url).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{url}: {err:?}");
    }
}

/// Errors raised with a given SQLSTATE, as the server reports them: those about reaching the
/// database, lock waits, serialization failures and deadlocks are `Unavailable` (retried), the
/// rest `Invalid`. (The whole table is in `outage`.)
#[tokio::test]
async fn postgres_error_codes_map_to_unavailable_or_invalid() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        let AnyStore::Postgres(store) = db.open().await else {
            unreachable!("a Postgres TestDb opens a PgStore");
        };
        // Lock waits end (as Unavailable) instead of hanging.
        let lock_timeout = AnyStore::Postgres(store.clone())
            .text("SHOW lock_timeout")
            .await;
        assert_eq!(lock_timeout, "10s");
        let cases = [
            ("40001", true),
            ("40P01", true),
            ("55P03", true),
            ("57014", true),
            ("08006", true),
            ("53300", true),
            ("57P01", true),
            ("55000", true),
            ("3D000", true),
            ("28P01", true),
            ("58030", true),
            ("23505", false),
            ("22P02", false),
            ("42601", false),
        ];
        for (code, unavailable) in cases {
            let sql =
                format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$");
            let err = sqlx::query(&sql).execute(store.pool()).await.unwrap_err();
            let mapped = map_sqlx(err);
            assert_eq!(
                matches!(mapped, StoreError::Unavailable(_)),
                unavailable,
                "{code}: {mapped:?}"
            );
        }
        store.close().await;
    }))
    .await;
    db.finish(result).await;
}

/// A short acquire timeout (the API's) is for calls once connected: connecting still waits for
/// a server that refuses connections, e.g. one that is starting, as long as a worker does. The
/// server here is a relay to the test server on a port that refuses connections until the relay
/// listens on it.
#[tokio::test]
async fn connecting_with_a_short_acquire_timeout_still_waits_for_a_server_that_is_starting() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
        let TestDb::Postgres { url, .. } = &db else {
            unreachable!("a Postgres TestDb");
        };
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a database");
        let (user, upstream) = authority
            .rsplit_once('@')
            .map_or(("", authority), |(user, host)| (user, host));
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        let relayed = format!("{scheme}://{user}127.0.0.1:{port}/{path}");
        let short = Duration::from_millis(200);
        let connecting =
            PgStore::connect_with_options(&relayed, StoreOptions::default().acquire_timeout(short));
        tokio::pin!(connecting);

        let waited = tokio::time::timeout(short * 5, &mut connecting).await;
        assert!(
            waited.is_err(),
            "gave up while the server was starting: {waited:?}"
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port again");
        let upstream = upstream.to_owned();
        let relay = tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.expect("accept");
                let mut server = tokio::net::TcpStream::connect(&upstream)
                    .await
                    .expect("the test server");
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        let store = connecting.await.expect("connected once the server is up");
        store
            .set_policy("dialogue", &json!({"max_attempts": 2}), "test")
            .await
            .unwrap();
        store.close().await;
        relay.abort();
    }))
    .await;
    db.finish(result).await;
}

#[test]
fn the_test_database_url_keeps_the_server_and_the_parameters() {
    let url = |u: &str| with_database(u, "retake_t_1");
    assert_eq!(
        url("postgres://postgres@127.0.0.1:5432/postgres").as_deref(),
        Some("postgres://postgres@127.0.0.1:5432/retake_t_1")
    );
    assert_eq!(
        url("postgresql://u:p@db/x?sslmode=disable").as_deref(),
        Some("postgresql://u:p@db/retake_t_1?sslmode=disable")
    );
    assert_eq!(
        url("postgres://localhost").as_deref(),
        Some("postgres://localhost/retake_t_1")
    );
    assert_eq!(url("retake.db"), None);
}
