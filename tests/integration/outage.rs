//! The database goes away while retries run: Postgres refusing connections, SQLite locked by
//! another connection. The store steps fail as `StoreUnavailable`, Temporal retries them,
//! and once the database is back every retry finishes as if nothing happened: the predicted
//! attempts, one row each, the budget charged once and nothing left reserved.

use crate::harness::{StoreLock, TestApp, comparable, find_segment, fresh_postgres, request};
use retake::retries;
use retake_activities::failure_types::STORE_UNAVAILABLE;
use retake_activities::sim::Simulator;
use retake_domain::contract::{AttemptRecord, RetryResult};
use serde_json::{Value, json};
use std::time::Duration;
use temporalio_protos::protos::temporal::api::failure::v1::Failure;
use temporalio_protos::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

/// Simulated GPU time per attempt: the outage begins while first attempts generate.
const GPU_MS: u64 = 1500;

/// Retries in flight during the outage.
const RETRIES: usize = 4;

fn policy() -> Value {
    json!({"enabled": true, "est_gpu_ms_per_attempt": 5000})
}

/// Retries of segments predicted to make at least two attempts, each started, with a budget.
struct Started {
    project: String,
    runs: Vec<(String, Vec<AttemptRecord>, retries::RetryHandle)>,
}

async fn start_retries(app: &TestApp, name: &str) -> Started {
    let project = format!("{}-{name}", app.tag);
    app.store
        .set_limit(&project, Some(100_000_000))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for i in 0..RETRIES {
        let (segment, predicted) =
            find_segment(&app.tag, &format!("{name}{i}"), &policy(), |a| a.len() >= 2);
        let handle = app.start(request(&segment, &project, Some(policy()))).await;
        runs.push((segment, predicted, handle));
    }
    for (segment, _, _) in &runs {
        app.wait_for(segment, "attempt 1 generating", |s| {
            s.running_attempt == Some(1)
        })
        .await;
    }
    Started { project, runs }
}

/// What a store step of the segment's workflow last failed with as `StoreUnavailable`, if one
/// did: store steps run as local activities, and one whose retry waits on a durable timer leaves
/// a marker with its failure in the history.
pub(crate) async fn store_failure_in_history(app: &TestApp, segment: &str) -> Option<String> {
    app.history(segment)
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e.attributes {
            Some(Attributes::MarkerRecordedEventAttributes(m)) => {
                m.failure.as_ref().and_then(store_unavailable)
            }
            _ => None,
        })
}

/// The message of the `StoreUnavailable` application failure in `f`'s cause chain.
fn store_unavailable(f: &Failure) -> Option<String> {
    match &f.failure_info {
        Some(FailureInfo::ApplicationFailureInfo(i)) if i.r#type == STORE_UNAVAILABLE => {
            Some(f.message.clone())
        }
        _ => f.cause.as_deref().and_then(store_unavailable),
    }
}

/// Wait (reading histories) until every retry has had a store step refused and is waiting to
/// retry it; returns what one of them failed with.
async fn wait_until_all_paused(app: &TestApp, started: &Started) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut message = String::new();
    for (segment, _, _) in &started.runs {
        loop {
            if let Some(m) = store_failure_in_history(app, segment).await {
                message = m;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "segment {segment} never retried a store step that failed as {STORE_UNAVAILABLE}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    message
}

/// Every retry finishes with the predicted attempts, one row each; the project is charged once
/// per attempt and holds nothing.
async fn assert_finished_as_predicted(app: &TestApp, started: Started) {
    let mut spent = 0;
    for (segment, predicted, handle) in &started.runs {
        let result: RetryResult =
            tokio::time::timeout(Duration::from_secs(60), retries::result(handle))
                .await
                .unwrap_or_else(|_| panic!("segment {segment} did not finish within 60 s"))
                .unwrap_or_else(|e| panic!("segment {segment} failed: {e:#}"));
        assert_eq!(
            comparable(&result.attempts),
            comparable(predicted),
            "segment {segment}: the attempts of an uninterrupted run"
        );
        let rows: Vec<AttemptRecord> = app
            .store
            .attempts(segment)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record)
            .collect();
        assert_eq!(
            rows, result.attempts,
            "segment {segment}: one row per attempt"
        );
        for a in &result.attempts {
            assert_eq!(a.gpu_ms, GPU_MS, "segment {segment} attempt {}", a.attempt);
        }
        spent += result.attempts.iter().map(|a| a.gpu_ms).sum::<u64>();
    }
    let b = app.store.budget(&started.project).await.unwrap().unwrap();
    assert_eq!(
        (b.reserved_ms, b.spent_ms),
        (0, spent),
        "charged once per attempt, nothing left reserved"
    );
}

#[tokio::test]
async fn retries_pause_while_postgres_refuses_connections_and_finish_once_it_is_back() {
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = TestApp::builder()
        .simulator(Simulator::new(GPU_MS))
        .database(db.url.clone())
        .spawn()
        .await;
    let started = start_retries(&app, "pgout").await;

    db.refuse_connections().await;
    let message = wait_until_all_paused(&app, &started).await;
    assert!(
        message.contains("not currently accepting connections"),
        "{message}"
    );
    db.allow_connections().await;

    assert_finished_as_predicted(&app, started).await;
}

/// Longer than every store-step limit the SDK would apply by default (a local activity gets
/// 100 s from its first schedule unless told otherwise): the retries must wait it out.
const LONG_OUTAGE: Duration = Duration::from_secs(125);

#[tokio::test]
async fn retries_wait_out_a_postgres_outage_longer_than_any_store_step_timeout() {
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = TestApp::builder()
        .simulator(Simulator::new(GPU_MS))
        .database(db.url.clone())
        .spawn()
        .await;
    let started = start_retries(&app, "pglong").await;

    db.refuse_connections().await;
    wait_until_all_paused(&app, &started).await;
    // A fixed duration on purpose: the outage itself is what is tested.
    tokio::time::sleep(LONG_OUTAGE).await;
    for (segment, _, handle) in &started.runs {
        let settled =
            tokio::time::timeout(Duration::from_millis(100), retries::result(handle)).await;
        assert!(
            settled.is_err(),
            "segment {segment} ended during the outage: {settled:?}"
        );
    }
    db.allow_connections().await;

    assert_finished_as_predicted(&app, started).await;
}

#[tokio::test]
async fn retries_pause_while_another_connection_locks_sqlite_and_finish_once_it_is_unlocked() {
    let app = TestApp::builder()
        .simulator(Simulator::new(GPU_MS))
        .spawn()
        .await;
    let started = start_retries(&app, "liteout").await;

    // The worker's writes wait the busy timeout (10 s), fail with SQLITE_BUSY, and are retried.
    let locker = StoreLock::take(&app).await;
    let message = wait_until_all_paused(&app, &started).await;
    assert!(message.contains("database is locked"), "{message}");
    locker.release().await;

    assert_finished_as_predicted(&app, started).await;
}

/// SQLite's files made immutable (`chattr +i`: even this process, as root, and its open
/// descriptors cannot write them) until [`Immutable::end`] or drop. Not the `-shm` file: SQLite
/// maps it into memory, and a write to a mapped page of an immutable file is a SIGBUS that
/// kills the worker, not an error it can report.
struct Immutable {
    paths: Vec<std::path::PathBuf>,
}

impl Immutable {
    /// The database file of `app` and its `-wal` file, those that exist; the reason
    /// when this machine cannot do it (no `chattr`, no `CAP_LINUX_IMMUTABLE`, a filesystem
    /// without the attribute).
    fn make(app: &TestApp) -> Result<Self, String> {
        let db = app
            .db_url
            .strip_prefix("sqlite://")
            .ok_or_else(|| format!("{} is not a SQLite URL", app.db_url))?;
        let mut made = Self { paths: Vec::new() };
        for suffix in ["", "-wal"] {
            let path = std::path::PathBuf::from(format!("{db}{suffix}"));
            if !path.exists() {
                continue;
            }
            let out = std::process::Command::new("chattr")
                .arg("+i")
                .arg(&path)
                .output()
                .map_err(|e| format!("chattr: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "chattr +i {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            made.paths.push(path.clone());
            if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
                return Err(format!(
                    "{} is still writable with chattr +i",
                    path.display()
                ));
            }
        }
        Ok(made)
    }

    fn end(mut self) {
        self.restore();
    }

    fn restore(&mut self) {
        for path in self.paths.drain(..) {
            let done = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&path)
                .status()
                .expect("chattr -i");
            assert!(done.success(), "chattr -i {}", path.display());
        }
    }
}

impl Drop for Immutable {
    /// Also on a failed test: an immutable file would outlive its temporary directory.
    fn drop(&mut self) {
        self.restore();
    }
}

#[tokio::test]
async fn retries_pause_while_the_sqlite_files_are_read_only_and_finish_once_writable_again() {
    let app = TestApp::builder()
        .simulator(Simulator::new(GPU_MS))
        .spawn()
        .await;
    let started = start_retries(&app, "literead").await;

    let frozen = match Immutable::make(&app) {
        Ok(frozen) => frozen,
        Err(why) => {
            eprintln!("skipped: cannot make the SQLite files read-only here: {why}");
            return;
        }
    };
    // Every retry has a store step refused (its first attempt's record, at least) and waits on a
    // durable timer to retry it: the outage outlasts several store steps.
    let message = wait_until_all_paused(&app, &started).await;
    let expected = [
        "readonly",
        "disk I/O error",
        "unable to open",
        "not permitted",
    ];
    assert!(expected.iter().any(|m| message.contains(m)), "{message}");
    frozen.end();

    assert_finished_as_predicted(&app, started).await;
}
