//! Worker processes that tests kill with SIGKILL, and a view of the activities in flight.

use super::app::TestApp;
use retake_domain::SegmentId;
use retake_testkit::{WorkerProcess, WorkerProcessBuilder};
use std::time::Duration;
use temporalio_client::WorkflowDescribeOptions;
use temporalio_protos::protos::temporal::api::workflow::v1::PendingActivityInfo;

impl TestApp {
    /// A `retake worker` process on this app's server, queue and database, to adjust before
    /// `spawn` (e.g. its log).
    pub fn worker_process(&self) -> WorkerProcessBuilder {
        WorkerProcess::builder(
            env!("CARGO_BIN_EXE_retake"),
            &self.address,
            &self.task_queue,
            &self.db_url,
        )
    }

    /// A `retake worker` process on this app's queue and database, simulating `gpu_ms` per
    /// attempt and `qa_ms` per scoring, logging errors only.
    pub fn spawn_worker(&self, gpu_ms: u64, qa_ms: u64) -> WorkerProcess {
        self.worker_process()
            .sim_gpu_ms(gpu_ms)
            .sim_qa_ms(qa_ms)
            .spawn()
            .expect("start a retake worker process")
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
