//! `spawn_app` and `TestApp::builder()`: a fresh database, task queue and worker per test.

use super::server::dev_server;
use retake::{connect, retries, worker};
use retake_activities::backends::BackendsConfig;
use retake_activities::files::{DEFAULT_ROOT, FileRoots};
use retake_activities::ports::Store;
use retake_activities::sim::Simulator;
use retake_activities::urls::UrlRoots;
use retake_domain::SegmentId;
use retake_domain::contract::RetryResult;
use retake_domain::status::Status;
use retake_testkit::DevServer;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use temporalio_client::Client;

/// Simulated GPU time per attempt in tests: long enough to heartbeat, short enough to be quick.
pub const TEST_GPU_MS: u64 = 20;

/// Everything one test talks to.
pub struct TestApp {
    pub client: Client,
    pub task_queue: String,
    /// The test's own connection to the database the worker writes.
    pub store: Arc<dyn Store>,
    pub db_url: String,
    /// Prefix that makes this test's segment ids (and so workflow ids) unique on the shared server.
    pub tag: String,
    pub address: String,
    /// The folders the API the test serves may read: those the worker reads (its backends'
    /// `artifacts_dir` and `file_roots`), else the default.
    pub files: FileRoots,
    /// The URL prefixes the API the test serves admits a creator's `http(s)` draft under: the
    /// backends' `url_roots` (as an operator gives `retake api` `RETAKE_URL_ROOTS`), else none.
    pub urls: UrlRoots,
    // Dropped before `_dir`: the worker stops before its database file is deleted.
    _worker: Option<WorkerThread>,
    _dir: tempfile::TempDir,
}

/// A worker running on its own thread and runtime (the SDK's worker future is not `Send`).
struct WorkerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl WorkerThread {
    fn start(
        address: String,
        db_url: String,
        task_queue: String,
        sim: Simulator,
        backends: Option<BackendsConfig>,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = connect::temporal(Some(&address)).await?;
                let store = connect::store(&db_url).await?;
                let activities = worker::configured_activities(store, sim, backends.as_ref())?;
                worker::run(client, &task_queue, activities, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !std::thread::panicking() => panic!("worker failed: {e:#}"),
                Err(_) if !std::thread::panicking() => panic!("worker thread panicked"),
                _ => {}
            }
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A test app with the simulator at [`TEST_GPU_MS`] on the shared dev server: the common case.
pub async fn spawn_app() -> TestApp {
    TestApp::builder().spawn().await
}

/// How to set up a [`TestApp`]: every option has a default, and [`spawn_app`] takes them all.
#[must_use]
pub struct TestAppBuilder<'s> {
    server: Option<&'s DevServer>,
    with_worker: bool,
    sim: Simulator,
    backends: Option<BackendsConfig>,
    db_url: Option<String>,
}

impl TestApp {
    /// A test app to set up: `TestApp::builder().without_worker().spawn().await`.
    pub fn builder() -> TestAppBuilder<'static> {
        TestAppBuilder {
            server: None,
            with_worker: true,
            sim: Simulator::new(TEST_GPU_MS),
            backends: None,
            db_url: None,
        }
    }
}

impl<'s> TestAppBuilder<'s> {
    /// What the in-process worker simulates with. Default: `Simulator::new(TEST_GPU_MS)`.
    pub fn simulator(mut self, sim: Simulator) -> Self {
        self.sim = sim;
        self
    }

    /// The in-process worker routes scene types to the backends of `config`, the rest to the
    /// simulator. Default: everything simulated.
    pub fn backends(mut self, config: BackendsConfig) -> Self {
        self.backends = Some(config);
        self
    }

    /// The store is the database at `url` (e.g. a fresh Postgres database). Default: a fresh
    /// SQLite file in the app's temporary directory.
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.db_url = Some(url.into());
        self
    }

    /// No in-process worker: the test runs worker processes itself (`TestApp::spawn_worker`).
    /// Default: a worker on its own thread.
    pub fn without_worker(mut self) -> Self {
        self.with_worker = false;
        self
    }

    /// On `server` (e.g. one the test restarts or stops). Default: the shared [`dev_server`].
    pub fn on<'t>(self, server: &'t DevServer) -> TestAppBuilder<'t> {
        TestAppBuilder {
            server: Some(server),
            with_worker: self.with_worker,
            sim: self.sim,
            backends: self.backends,
            db_url: self.db_url,
        }
    }

    /// A fresh task queue and tag, the store (created and migrated), a client and, unless
    /// [`without_worker`](Self::without_worker), the worker.
    pub async fn spawn(self) -> TestApp {
        let server = match self.server {
            Some(server) => server,
            None => dev_server(),
        };
        let address = server.address().to_owned();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("t{}x{n}", std::process::id());
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = self
            .db_url
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("retake.db").display()));
        let task_queue = format!("segment-retry-{tag}");
        let store = connect::store(&db_url).await.expect("store");
        let client = connect::temporal(Some(&address)).await.expect("client");
        let files = match &self.backends {
            Some(b) => FileRoots::new(b.file_roots.iter().cloned())
                .with(b.artifacts_dir.clone().unwrap_or(DEFAULT_ROOT.into())),
            None => FileRoots::default(),
        };
        let urls = self
            .backends
            .as_ref()
            .map(|b| UrlRoots::new(b.url_roots.iter().cloned()))
            .unwrap_or_default();
        let worker = self.with_worker.then(|| {
            WorkerThread::start(
                address.clone(),
                db_url.clone(),
                task_queue.clone(),
                self.sim,
                self.backends,
            )
        });
        TestApp {
            client,
            task_queue,
            store,
            db_url,
            tag,
            address,
            files,
            urls,
            _worker: worker,
            _dir: dir,
        }
    }
}

impl TestApp {
    /// Wait (polling the `report` query) until the retry of `segment` satisfies `want`; panics
    /// after 60 s with the last status seen.
    pub async fn wait_for(
        &self,
        segment: &str,
        what: &str,
        want: impl Fn(&Status) -> bool,
    ) -> Status {
        let segment = SegmentId::parse(segment).expect("segment id");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Ok(s) = retries::status(&self.client, &segment).await {
                if want(&s) {
                    return s;
                }
                last = Some(s);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("segment {segment} never reached: {what}; last status: {last:#?}");
    }

    /// Once attempt 1 of `segment` generates, abort it (by `mina`), and wait for the result.
    pub async fn abort_first_attempt(
        &self,
        segment: &str,
        handle: &retries::RetryHandle,
    ) -> RetryResult {
        self.wait_for(segment, "attempt 1 generating", |s| {
            s.running_attempt == Some(1)
        })
        .await;
        let id = SegmentId::parse(segment).expect("segment id");
        retries::signal(
            &self.client,
            &id,
            retries::Creator::Abort,
            "wrong shot",
            "mina",
        )
        .await
        .expect("send abort");
        retries::result(handle)
            .await
            .expect("the aborted retry's result")
    }

    /// The history events of the segment's latest run (empty when there is none yet).
    pub async fn history(
        &self,
        segment: &str,
    ) -> Vec<temporalio_protos::protos::temporal::api::history::v1::HistoryEvent> {
        let handle = retries::handle(
            &self.client,
            &SegmentId::parse(segment).expect("segment id"),
        );
        handle
            .fetch_history(temporalio_client::WorkflowFetchHistoryOptions::default())
            .into_events()
            .await
            .unwrap_or_default()
    }

    /// Start a retry (without waiting).
    pub async fn start(&self, input: Value) -> retries::RetryHandle {
        retries::start(&self.client, &self.task_queue, input)
            .await
            .expect("start the retry workflow")
    }

    /// Start a retry and wait for its result.
    pub async fn retry(&self, input: Value) -> RetryResult {
        retries::run(&self.client, &self.task_queue, input)
            .await
            .expect("retry workflow result")
    }
}

/// Another SQLite connection holding the database's write lock (`BEGIN EXCLUSIVE`): in WAL mode
/// every other writer waits the busy timeout (10 s) and fails with SQLITE_BUSY, readers go on.
/// [`StoreLock::release`] rolls it back.
pub struct StoreLock(sqlx::SqliteConnection);

impl StoreLock {
    pub async fn take(app: &TestApp) -> Self {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .unwrap();
        Self(conn)
    }

    pub async fn release(mut self) {
        use sqlx::Connection;
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
        self.0.close().await.unwrap();
    }
}
