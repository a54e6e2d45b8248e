//! Worker processes that tests kill with SIGKILL, and a view of the activities in flight.

use super::app::TestApp;
use retake_domain::SegmentId;
use std::process::Stdio;
use std::time::Duration;
use temporalio_client::WorkflowDescribeOptions;
use temporalio_protos::protos::temporal::api::workflow::v1::PendingActivityInfo;
use tokio::process::{Child, Command};

/// A `retake worker` child process on the app's queue and database.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    pub fn spawn(app: &TestApp, gpu_ms: u64, qa_ms: u64) -> Self {
        Self::spawn_with(app, gpu_ms, qa_ms, |c| {
            c.env("RUST_LOG", "error").stderr(Stdio::inherit());
        })
    }

    /// A worker logging as a user's would: the default filter, stderr to `log` (a file, so not a
    /// terminal), `RETAKE_LOG_FORMAT` as given.
    pub fn spawn_logging(app: &TestApp, gpu_ms: u64, log: &std::path::Path, format: &str) -> Self {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn_with(app, gpu_ms, 0, |c| {
            c.env_remove("RUST_LOG")
                .env("RETAKE_LOG_FORMAT", format)
                .stderr(file);
        })
    }

    fn spawn_with(app: &TestApp, gpu_ms: u64, qa_ms: u64, set: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_retake"));
        command
            .args([
                "worker",
                "--temporal-address",
                &app.address,
                "--task-queue",
                &app.task_queue,
            ])
            .env("RETAKE_DATABASE_URL", &app.db_url)
            .env("RETAKE_SIM_GPU_MS", gpu_ms.to_string())
            .env("RETAKE_SIM_QA_MS", qa_ms.to_string())
            .env_remove("TEMPORAL_ADDRESS")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        set(&mut command);
        let child = command.spawn().expect("start a retake worker process");
        Self { child }
    }

    /// SIGKILL, and reap it.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL the worker");
    }
}

/// The activities of the segment's workflow in flight now (none if it cannot be described).
pub async fn pending_activities(app: &TestApp, segment: &str) -> Vec<PendingActivityInfo> {
    let Ok(segment) = SegmentId::parse(segment) else {
        return Vec::new();
    };
    let handle = retake::retries::handle(&app.client, &segment);
    match handle.describe(WorkflowDescribeOptions::default()).await {
        Ok(d) => d.raw_description.pending_activities,
        Err(_) => Vec::new(),
    }
}

/// The pending activity `name` of the segment's workflow, if any.
async fn pending_activity(app: &TestApp, segment: &str, name: &str) -> Option<PendingActivityInfo> {
    pending_activities(app, segment)
        .await
        .into_iter()
        .find(|a| a.activity_type.as_ref().is_some_and(|t| t.name == name))
}

/// Wait (polling `describe`) until the pending activity `name` satisfies `want`.
pub async fn wait_for_activity(
    app: &TestApp,
    segment: &str,
    name: &str,
    want: impl Fn(&PendingActivityInfo) -> bool,
) -> PendingActivityInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(a) = pending_activity(app, segment, name).await
            && want(&a)
        {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "activity {name} of {segment} never got there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
