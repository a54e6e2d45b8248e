//! Starting retry workflows and waiting for their results, for the CLI and the tests.

use anyhow::Context;
use retake_domain::contract::{RetryRequest, RetryResult};
use retake_workflows::{SegmentRetryRun, SegmentRetryWorkflow};
use serde_json::Value;
use temporalio_client::{
    Client, WorkflowGetResultOptions, WorkflowHandle, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowStartOptions,
};

/// Handle of a running retry.
pub type RetryHandle = WorkflowHandle<Client, SegmentRetryRun>;

/// Validate `input` locally (a clear error before anything starts), then start the workflow with
/// id `segment-retry-<segment_id>`. A segment already retrying gets its running workflow back
/// instead of a second one; a finished segment may be retried again.
pub async fn start(client: &Client, task_queue: &str, input: Value) -> anyhow::Result<RetryHandle> {
    let req = RetryRequest::parse(&input)?;
    let id = retake_domain::workflow_id(&req.segment_id);
    let options = WorkflowStartOptions::new(task_queue, id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .static_summary(format!(
            "Retry segment {} ({}, project {})",
            req.segment_id, req.scene_type, req.project_id
        ))
        .build();
    client
        .start_workflow(SegmentRetryWorkflow::run, input, options)
        .await
        .with_context(|| format!("starting workflow {id}"))
}

/// Wait for a started retry's result.
pub async fn result(handle: &RetryHandle) -> anyhow::Result<RetryResult> {
    handle
        .get_result(WorkflowGetResultOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_failure(&e)))
        .with_context(|| format!("workflow {}", handle.info().workflow_id))
}

fn describe_failure(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Start and wait.
pub async fn run(client: &Client, task_queue: &str, input: Value) -> anyhow::Result<RetryResult> {
    let handle = start(client, task_queue, input).await?;
    result(&handle).await
}
