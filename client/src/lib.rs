//! Starting and steering retry workflows from Rust (the CLI, the HTTP API and the tests):
//! start, wait, signal, decide, query.

use anyhow::Context;
use retake_domain::SegmentId;
use retake_domain::contract::{RetryRequest, RetryResult};
use retake_domain::review::Phase;
use retake_domain::status::Status;
use retake_workflows::{SegmentRetryRun, SegmentRetryWorkflow};
use serde_json::{Value, json};
use temporalio_client::errors::WorkflowUpdateError;
use temporalio_client::{
    Client, WorkflowExecuteUpdateOptions, WorkflowGetResultOptions, WorkflowHandle,
    WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowQueryOptions, WorkflowSignalOptions,
    WorkflowStartOptions,
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
        .start_workflow(
            SegmentRetryWorkflow::run,
            retake_workflows::argument(&input),
            options,
        )
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

/// The running (or last) retry of a segment.
pub fn handle(client: &Client, segment: &SegmentId) -> RetryHandle {
    client.get_workflow_handle::<SegmentRetryRun>(retake_domain::workflow_id(segment))
}

/// Send the `abort` or `escalate` signal with `{"reason", "by"}`.
pub async fn signal(
    client: &Client,
    segment: &SegmentId,
    action: Creator,
    reason: &str,
    by: &str,
) -> anyhow::Result<()> {
    let payload = json!({"reason": reason, "by": by});
    let h = handle(client, segment);
    let sent = match action {
        Creator::Abort => {
            h.signal(
                SegmentRetryWorkflow::abort,
                payload,
                WorkflowSignalOptions::default(),
            )
            .await
        }
        Creator::Escalate => {
            h.signal(
                SegmentRetryWorkflow::escalate,
                payload,
                WorkflowSignalOptions::default(),
            )
            .await
        }
    };
    sent.map_err(|e| anyhow::anyhow!("{}", describe_failure(&e)))
        .with_context(|| {
            format!(
                "signalling {} to the retry of segment {segment}",
                action.name()
            )
        })
}

/// A creator's signal.
#[derive(Debug, Clone, Copy)]
pub enum Creator {
    Abort,
    Escalate,
}

impl Creator {
    fn name(self) -> &'static str {
        match self {
            Creator::Abort => "abort",
            Creator::Escalate => "escalate",
        }
    }
}

/// Why a decision did not take effect.
#[derive(Debug)]
pub enum DecideError {
    /// The workflow rejected it (invalid, or not awaiting review); the message says why.
    Rejected(String),
    /// Temporal could not be asked (unreachable, no such workflow, ...).
    Failed(anyhow::Error),
}

impl std::fmt::Display for DecideError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecideError::Rejected(m) => write!(f, "decision rejected: {m}"),
            DecideError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for DecideError {}

/// Deliver a review decision through the `decide` update.
pub async fn decide(
    client: &Client,
    segment: &SegmentId,
    decision: Value,
) -> Result<Value, DecideError> {
    handle(client, segment)
        .execute_update(
            SegmentRetryWorkflow::decide,
            decision,
            WorkflowExecuteUpdateOptions::default(),
        )
        .await
        .map_err(|e| match e {
            WorkflowUpdateError::Failed(f) => DecideError::Rejected(f.message),
            other => DecideError::Failed(anyhow::anyhow!("{}", describe_failure(&other))),
        })
}

/// The live status (query `report`).
pub async fn status(client: &Client, segment: &SegmentId) -> anyhow::Result<Status> {
    handle(client, segment)
        .query(
            SegmentRetryWorkflow::report,
            (),
            WorkflowQueryOptions::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe_failure(&e)))
        .with_context(|| format!("querying the retry of segment {segment}"))
}

/// Where a started retry settled: finished, or escalated and waiting for a creator's decision.
#[derive(Debug)]
pub enum Settled {
    Finished(RetryResult),
    AwaitingReview(Status),
}

/// Wait until the retry finishes or starts waiting for review (checked once a second through the
/// `report` query), whichever comes first: a review window may last a day.
pub async fn settled(handle: &RetryHandle) -> anyhow::Result<Settled> {
    let finished = result(handle);
    tokio::pin!(finished);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut finished => return r.map(Settled::Finished),
            _ = tick.tick() => {
                let s = handle.query(SegmentRetryWorkflow::report, (), WorkflowQueryOptions::default()).await;
                if let Ok(s) = s && s.phase == Phase::AwaitingReview {
                    return Ok(Settled::AwaitingReview(s));
                }
            }
        }
    }
}
