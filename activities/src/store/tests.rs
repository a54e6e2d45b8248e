//! The store tests. Those written with [`store_tests!`] run on both backends, as `NAME::sqlite`
//! (a fresh SQLite file in its own temporary directory) and `NAME::postgres` (a fresh database
//! on the server of `RETAKE_TEST_POSTGRES_URL`, dropped at the end; see [`harness`]).

use super::{PgStore, SqlStore, connect_any, rfc3339};
use crate::io::{AttemptKey, RecordAttempt, RecordOutcome, Reservation, Review};
use crate::ports::{
    AttemptStore, Budget, BudgetLedger, Known, PolicyStore, SegmentQuery, SegmentRow, StoreError,
};
use harness::{AnyStore, TestDb};
use retake_domain::contract::{AttemptRecord, AttemptStatus, Outcome, Params, RetryResult};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tempfile::TempDir;

/// For each `#[test attribute] NAME` listed, a module `NAME` with two tests, `sqlite` and
/// `postgres`, each running the test body `async fn NAME(db: &TestDb)` of the module where it is
/// listed with a fresh [`TestDb`] of that backend, and cleaning it up afterwards, even when the
/// body panics. The Postgres test is skipped (or fails when `CI` is set) if no server can be
/// reached.
macro_rules! store_tests {
    ($( #[$attr:meta] $name:ident ),* $(,)?) => {$(
        mod $name {
            #[$attr]
            async fn sqlite() {
                let db = $crate::store::tests::harness::TestDb::sqlite();
                let result = ::futures::FutureExt::catch_unwind(
                    ::std::panic::AssertUnwindSafe(super::$name(&db)),
                )
                .await;
                db.finish(result).await;
            }

            #[$attr]
            async fn postgres() {
                let Some(db) = $crate::store::tests::harness::TestDb::postgres().await else {
                    return;
                };
                let result = ::futures::FutureExt::catch_unwind(
                    ::std::panic::AssertUnwindSafe(super::$name(&db)),
                )
                .await;
                db.finish(result).await;
            }
        }
    )*};
}

mod attempts;
mod budget;
mod harness;
mod opening;
mod outage;
mod postgres;
mod raise;
mod stats;
mod workers;

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("retake.db")
}

fn key(run: &str, attempt: u32) -> AttemptKey {
    AttemptKey {
        workflow_id: "segment-retry-5".to_owned(),
        run_id: run.to_owned(),
        attempt,
    }
}

fn params(value: serde_json::Value) -> Params {
    Params::parse(&value).expect("valid params")
}

fn record(attempt: u32, face: f64) -> AttemptRecord {
    let passed = face >= 0.8;
    AttemptRecord {
        attempt,
        seed: 1000 + u64::from(attempt),
        params: params(json!({"seed": 1000 + attempt, "cfg": 7.5})),
        original_params: params(json!({"seed": 42, "cfg": 7.0})),
        jitter: Vec::new(),
        scores: BTreeMap::from([("face".to_owned(), face)]),
        passed,
        failures: if passed {
            vec![]
        } else {
            vec!["face".to_owned()]
        },
        gpu_ms: 100 * u64::from(attempt),
        status: if passed {
            AttemptStatus::Passed
        } else {
            AttemptStatus::Failed
        },
        output_uri: Some(format!("s3://out/{attempt}.mp4")),
        error: None,
        strategy: None,
        prompt: None,
        revises: None,
        breakdown: vec![],
        error_type: None,
        note: None,
        variation: None,
        worker: Some(format!("gpu-{}", attempt % 2)),
    }
}

fn record_attempt(run: &str, rec: AttemptRecord) -> RecordAttempt {
    RecordAttempt {
        key: key(run, rec.attempt),
        segment_id: "5".parse().unwrap(),
        project_id: "p1".parse().unwrap(),
        scene_type: "dialogue".parse().unwrap(),
        record: rec,
    }
}

fn outcome(
    run: &str,
    outcome: Outcome,
    selected: Option<u32>,
    attempts: Vec<AttemptRecord>,
) -> RecordOutcome {
    RecordOutcome {
        workflow_id: "segment-retry-5".to_owned(),
        run_id: run.to_owned(),
        result: RetryResult {
            segment_id: "5".parse().unwrap(),
            project_id: "p1".parse().unwrap(),
            scene_type: "dialogue".parse().unwrap(),
            outcome,
            reason: "because".to_owned(),
            selected_attempt: selected,
            gpu_ms_total: attempts.iter().map(|a| a.gpu_ms).sum(),
            attempts,
            report: "Segment 5: ...".to_owned(),
            decisions: vec![],
        },
        // What the workflow sends: escalations await review.
        review: if outcome == Outcome::Escalated {
            Review::Pending
        } else {
            Review::None
        },
    }
}

async fn budget(store: &AnyStore, project: &str) -> Budget {
    store
        .budget(project)
        .await
        .expect("budget")
        .expect("a budget row")
}

async fn count(store: &AnyStore, sql: &str) -> i64 {
    store.count(sql).await
}

async fn a_policy_round_trips_and_setting_it_again_replaces_it(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.policy("dialogue").await.unwrap(), None);
    let policy = json!({"max_attempts": 3, "retry_on": ["face"], "thresholds": {"face": 0.8}});
    store.set_policy("dialogue", &policy, "test").await.unwrap();
    assert_eq!(store.policy("dialogue").await.unwrap(), Some(policy));
    let replaced = json!({"max_attempts": 5});
    store
        .set_policy("dialogue", &replaced, "test")
        .await
        .unwrap();
    assert_eq!(store.policy("dialogue").await.unwrap(), Some(replaced));
    assert_eq!(store.policy("action").await.unwrap(), None);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM retry_policies").await,
        1
    );
}

async fn every_stored_policy_is_kept_with_who_stored_it_newest_first(db: &TestDb) {
    let store = db.open().await;
    assert!(
        store
            .policy_changes("dialogue", 10)
            .await
            .unwrap()
            .is_empty()
    );
    for (n, by) in [(2, "api:admin"), (3, "cli:jun"), (4, "api:admin ops")] {
        store
            .set_policy("dialogue", &json!({"max_attempts": n}), by)
            .await
            .unwrap();
    }
    store
        .set_policy("action", &json!({"max_attempts": 9}), "api:admin")
        .await
        .unwrap();
    let changes = store.policy_changes("dialogue", 2).await.unwrap();
    let seen: Vec<(&str, &serde_json::Value)> = changes
        .iter()
        .map(|c| (c.by.as_str(), &c.policy["max_attempts"]))
        .collect();
    assert_eq!(seen, [("api:admin ops", &json!(4)), ("cli:jun", &json!(3))]);
    assert!(changes[0].changed_at >= changes[1].changed_at);
    assert_eq!(store.policy_changes("dialogue", 10).await.unwrap().len(), 3);
}

/// `outcome(..)` for segment `segment` of `project`, with its attempts recorded first.
async fn recorded_run(
    store: &AnyStore,
    segment: &str,
    project: &str,
    run: &str,
    result: Outcome,
    selected: Option<u32>,
) {
    let attempts = vec![record(1, 0.3), record(2, 0.9)];
    for a in &attempts {
        let mut rec = record_attempt(run, a.clone());
        rec.key.workflow_id = format!("segment-retry-{segment}");
        rec.segment_id = segment.parse().unwrap();
        rec.project_id = project.parse().unwrap();
        store.record_attempt(&rec).await.unwrap();
    }
    let mut out = outcome(run, result, selected, attempts);
    out.workflow_id = format!("segment-retry-{segment}");
    out.result.segment_id = segment.parse().unwrap();
    out.result.project_id = project.parse().unwrap();
    store.record_outcome(&out).await.unwrap();
}

async fn segments_are_found_by_any_part_of_their_ids_in_any_case_by_their_latest_run(db: &TestDb) {
    let store = db.open().await;
    recorded_run(&store, "Seg-A", "Alpha", "r1", Outcome::Escalated, None).await;
    recorded_run(&store, "seg-b", "beta", "r1", Outcome::Passed, Some(2)).await;
    recorded_run(&store, "seg-b", "beta", "r2", Outcome::Aborted, None).await;
    recorded_run(&store, "50pct_off", "p", "r1", Outcome::NotRetried, None).await;
    let find = |search: &str, outcome: Option<&str>, pending_review: bool| SegmentQuery {
        search: search.to_owned(),
        outcome: outcome.map(str::to_owned),
        pending_review,
        limit: 10,
        offset: 0,
    };
    let listed = |rows: Vec<SegmentRow>| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = rows
            .into_iter()
            .map(|r| (r.segment_id, r.outcome))
            .collect();
        v.sort();
        v
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let seg = store.segments(&find("SEG", None, false)).await.unwrap();
    assert_eq!(
        listed(seg),
        [pair("Seg-A", "escalated"), pair("seg-b", "aborted")],
        "each segment once, by its latest run"
    );
    let alpha = store.segments(&find("alpha", None, false)).await.unwrap();
    assert_eq!(listed(alpha), [pair("Seg-A", "escalated")]);
    let literal = store.segments(&find("_", None, false)).await.unwrap();
    assert_eq!(
        listed(literal),
        [pair("50pct_off", "not_retried")],
        "_ is no wildcard"
    );
    assert!(
        store
            .segments(&find("", Some("passed"), false))
            .await
            .unwrap()
            .is_empty()
    );
    let pending = store.segments(&find("", None, true)).await.unwrap();
    assert_eq!(listed(pending), [pair("Seg-A", "escalated")]);
    let b = store.segments(&find("seg-b", None, false)).await.unwrap();
    assert_eq!(
        b[0].output_uri.as_deref(),
        Some("s3://out/2.mp4"),
        "no selected attempt: the last output"
    );
    let all = store.segments(&find("", None, false)).await.unwrap();
    assert_eq!(all.len(), 3);
    let second = store
        .segments(&SegmentQuery {
            limit: 1,
            offset: 1,
            ..find("", None, false)
        })
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].segment_id, all[1].segment_id);
}

async fn the_known_scene_types_and_projects_are_listed_as_stored(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(store.known().await.unwrap(), Known::default());
    store
        .set_policy("Dialogue", &json!({"max_attempts": 3}), "test")
        .await
        .unwrap();
    store.set_limit("Budgeted", Some(1000)).await.unwrap();
    store.reserve(&key("r9", 1), "Reserved", 10).await.unwrap();
    recorded_run(&store, "seg-1", "Alpha", "r1", Outcome::Passed, Some(2)).await;
    let known = store.known().await.unwrap();
    let own = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
        v.iter().map(|(s, b)| ((*s).to_owned(), *b)).collect()
    };
    assert_eq!(
        known.scene_types,
        own(&[("Dialogue", true), ("dialogue", false)]),
        "as stored, case and all"
    );
    assert_eq!(
        known.projects,
        own(&[("Alpha", false), ("Budgeted", true), ("Reserved", false)])
    );
}

async fn reopening_the_same_database_keeps_the_data_and_runs_the_migrations_once(db: &TestDb) {
    let store = db.open().await;
    store
        .set_policy("dialogue", &json!({"max_attempts": 3}), "test")
        .await
        .unwrap();
    store.set_limit("p1", Some(1000)).await.unwrap();
    store.reserve(&key("r1", 1), "p1", 100).await.unwrap();
    store.close().await;
    drop(store);
    // Reopen through every accepted spelling of the location.
    for url in db.urls() {
        let store = db.open_url(&url).await;
        assert_eq!(
            store.policy("dialogue").await.unwrap(),
            Some(json!({"max_attempts": 3}))
        );
        assert_eq!(budget(&store, "p1").await.reserved_ms, 100);
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM _sqlx_migrations").await,
            7
        );
        store.close().await;
    }
}

async fn connect_any_picks_the_backend_from_the_url(db: &TestDb) {
    for url in db.urls() {
        let store = connect_any(&url).await.unwrap();
        let expected = match db {
            TestDb::Sqlite(_) => "SqlStore",
            TestDb::Postgres { .. } => "PgStore",
        };
        assert!(
            format!("{store:?}").starts_with(expected),
            "{url}: {store:?}"
        );
        // The same database as the concrete store's, through the trait object.
        store
            .set_policy("dialogue", &json!({"max_attempts": 2}), "test")
            .await
            .unwrap();
        let direct = db.open_url(&url).await;
        assert_eq!(
            direct.policy("dialogue").await.unwrap(),
            Some(json!({"max_attempts": 2}))
        );
        direct.close().await;
        // Each port is one upcast away, as `RetryActivities::new` takes them.
        let _ports: (
            Arc<dyn PolicyStore>,
            Arc<dyn BudgetLedger>,
            Arc<dyn AttemptStore>,
        ) = (store.clone(), store.clone(), store);
    }
    for url in ["mysql://localhost/retake", "file:///tmp/retake.db"] {
        let err = connect_any(url).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{url}: {err:?}");
    }
}

store_tests! {
    #[tokio::test] a_policy_round_trips_and_setting_it_again_replaces_it,
    #[tokio::test] every_stored_policy_is_kept_with_who_stored_it_newest_first,
    #[tokio::test] the_known_scene_types_and_projects_are_listed_as_stored,
    #[tokio::test] segments_are_found_by_any_part_of_their_ids_in_any_case_by_their_latest_run,
    #[tokio::test] reopening_the_same_database_keeps_the_data_and_runs_the_migrations_once,
    #[tokio::test] connect_any_picks_the_backend_from_the_url,
}

#[tokio::test]
async fn connecting_creates_a_missing_file_in_wal_mode_and_refuses_other_databases() {
    let dir = TempDir::new().unwrap();
    assert!(!db_path(&dir).exists());
    let store = SqlStore::connect(&db_path(&dir).display().to_string())
        .await
        .unwrap();
    assert!(db_path(&dir).exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let err = SqlStore::connect("postgres://localhost/retake")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds() {
    let at =
        |secs: u64, millis: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis));
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
    assert_eq!(at(1_709_164_800, 5), "2024-02-29T00:00:00.005Z");
    assert_eq!(at(951_782_400, 999), "2000-02-29T00:00:00.999Z");
    assert_eq!(at(4_107_542_400 - 1, 0), "2100-02-28T23:59:59.000Z");
    assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
}
