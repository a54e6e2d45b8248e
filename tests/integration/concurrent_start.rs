//! Several `retake worker` processes and `retake api` started at the same moment on a brand-new
//! SQLite file that nobody created or migrated: they contend for creating it, turning it to WAL
//! and migrating it. All of them come up and stay up, the migrations are applied once, and
//! retries then run to completion, recorded and charged once.

use crate::api::ADMIN;
use crate::harness::{TestApp, find_segment, request};
use retake::{connect, retries};
use retake_domain::contract::AttemptRecord;
use retake_testkit::{WorkerProcess, free_ports};
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

/// Worker processes started at once (besides the API).
const WORKERS: usize = 3;

/// Retries run once they are up.
const RETRIES: usize = 6;

/// The migration versions shipped for SQLite (`activities/migrations/sqlite/<version>_*.sql`).
fn shipped_migrations() -> Vec<i64> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../activities/migrations/sqlite");
    let mut versions: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let version = name.split('_').next()?.parse().ok()?;
            name.ends_with(".sql").then_some(version)
        })
        .collect();
    versions.sort_unstable();
    versions
}

#[tokio::test]
async fn workers_and_the_api_started_at_once_on_a_new_sqlite_file_all_come_up_and_migrate_it_once()
{
    // The app's own store is another file: nothing in this test opens the new one before the
    // processes do.
    let app = TestApp::builder().without_worker().spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fresh.db");
    let db_url = format!("sqlite://{}", file.display());
    assert!(!file.exists());
    let logs: Vec<_> = (0..=WORKERS)
        .map(|i| dir.path().join(format!("process-{i}.log")))
        .collect();
    let log = |i: usize| Stdio::from(std::fs::File::create(&logs[i]).unwrap());
    let [port] = free_ports::<1>().unwrap();

    // At the same moment: nothing waits for one to be ready before starting the next.
    let mut workers: Vec<WorkerProcess> = (0..WORKERS)
        .map(|i| {
            WorkerProcess::builder(
                env!("CARGO_BIN_EXE_retake"),
                &app.address,
                &app.task_queue,
                &db_url,
            )
            .sim_gpu_ms(50)
            .sim_qa_ms(0)
            .stderr(log(i))
            .spawn()
            .expect("start a retake worker process")
        })
        .collect();
    let mut api = tokio::process::Command::new(env!("CARGO_BIN_EXE_retake"))
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--temporal-address", &app.address])
        .env("RETAKE_API_TOKENS", format!("admin={ADMIN}"))
        .env("RETAKE_DATABASE_URL", &db_url)
        .env("RUST_LOG", "error")
        .env_remove("TEMPORAL_ADDRESS")
        .stdout(Stdio::null())
        .stderr(log(WORKERS))
        .kill_on_drop(true)
        .spawn()
        .expect("start retake api");
    let said = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    let still_up = |workers: &mut Vec<WorkerProcess>, api: &mut tokio::process::Child| {
        for (i, w) in workers.iter_mut().enumerate() {
            if let Some(status) = w.exited().unwrap() {
                panic!("worker {i} exited ({status}): {}", said(i));
            }
        }
        if let Some(status) = api.try_wait().unwrap() {
            panic!("retake api exited ({status}): {}", said(WORKERS));
        }
    };

    // Up: the API answers its health check (it reads the store), every worker has announced
    // itself in the store.
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let store = loop {
        still_up(&mut workers, &mut api);
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all up within 90 s: {}",
            (0..=WORKERS).map(said).collect::<Vec<_>>().join("\n")
        );
        let healthy = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy && let Ok(store) = connect::store(&db_url).await {
            let announced = store.workers(&app.task_queue).await.unwrap_or_default();
            if announced.len() == WORKERS {
                break store;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let migrations: Vec<(i64, bool)> = {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&db_url).await.unwrap();
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };
    let shipped = shipped_migrations();
    assert_eq!(
        migrations,
        shipped.iter().map(|v| (*v, true)).collect::<Vec<_>>(),
        "each migration applied once, successfully"
    );

    let project = format!("{}-fresh", app.tag);
    store
        .set_limit(&project, Some(1_000_000_000))
        .await
        .unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 5000});
    let mut runs = Vec::new();
    for i in 0..RETRIES {
        let (segment, _) = find_segment(&app.tag, &format!("fresh{i}"), &policy, |a| a.len() >= 2);
        let handle = app
            .start(request(&segment, &project, Some(policy.clone())))
            .await;
        runs.push((segment, handle));
    }
    let mut spent = 0;
    for (segment, handle) in &runs {
        let result = tokio::time::timeout(Duration::from_secs(120), retries::result(handle))
            .await
            .unwrap_or_else(|_| panic!("{segment} did not finish within 120 s"))
            .unwrap_or_else(|e| panic!("{segment} failed: {e:#}"));
        let rows: Vec<AttemptRecord> = store
            .attempts(segment)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record)
            .collect();
        assert_eq!(
            rows, result.attempts,
            "{segment}: the rows are the attempts"
        );
        let attempt_ms: u64 = result.attempts.iter().map(|a| a.gpu_ms).sum();
        assert_eq!(result.gpu_ms_total, attempt_ms, "{segment}");
        spent += attempt_ms;
    }
    let b = store.budget(&project).await.unwrap().unwrap();
    assert_eq!(
        (b.reserved_ms, b.spent_ms),
        (0, spent),
        "spent is the sum of the attempts' GPU time, nothing reserved"
    );
    still_up(&mut workers, &mut api);
    for i in 0..=WORKERS {
        let log = said(i);
        assert!(
            !log.contains("panicked") && !log.contains("duplicate column"),
            "process {i}: {log}"
        );
    }
}
