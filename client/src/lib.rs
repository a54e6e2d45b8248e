//! Starting and steering retry workflows from Rust (the CLI, the HTTP API, the sweeper and the
//! tests): start, wait, signal, decide, query, describe. Every call returns a typed [`Error`] that
//! keeps its kind, so a caller can tell an unknown or finished retry from Temporal being down.

mod error;
mod versions;

pub use error::Error;
pub use versions::{BehaviourCounts, open_runs_by_behaviour};

use error::chain;
use retake_domain::contract::{RetryRequest, RetryResult};
use retake_domain::review::Phase;
use retake_domain::status::Status;
use retake_domain::{ProjectId, SceneType, SegmentId};
use retake_workflows::{SegmentRetryRun, SegmentRetryWorkflow};
use serde_json::{Value, json};
use temporalio_client::errors::{
    WorkflowGetResultError, WorkflowInteractionError, WorkflowQueryError, WorkflowStartError,
    WorkflowUpdateError,
};
use temporalio_client::{
    Client, NamespacedClient, WorkflowExecuteUpdateOptions, WorkflowGetResultOptions,
    WorkflowHandle, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowQueryOptions,
    WorkflowSignalOptions, WorkflowStartOptions, tonic,
};
use temporalio_protos::protos::temporal::api::common::v1::WorkflowExecution;
use temporalio_protos::protos::temporal::api::enums::v1::WorkflowExecutionStatus;
use temporalio_protos::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_protos::protos::temporal::api::workflowservice::v1::{
    CountWorkflowExecutionsRequest, DescribeWorkflowExecutionRequest, GetSystemInfoRequest,
    ListWorkflowExecutionsRequest,
};

/// Handle of a running retry.
pub type RetryHandle = WorkflowHandle<Client, SegmentRetryRun>;

/// Application failure type with which the server fails an accepted update whose workflow closed
/// before the update completed.
const UPDATE_OUTLIVED_WORKFLOW: &str = "AcceptedUpdateCompletedWorkflow";

/// A started retry, or the one that was already running for the segment.
pub struct Begun {
    pub handle: RetryHandle,
    pub run_id: String,
    /// `true` when this call started the run, `false` when it was already running. Of any number
    /// of concurrent calls for one segment exactly one gets `true`.
    pub new_run: bool,
}

impl std::fmt::Debug for Begun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Begun")
            .field("run_id", &self.run_id)
            .field("new_run", &self.new_run)
            .finish()
    }
}

/// Validate `input` locally (a clear error before anything starts), then start the workflow with
/// id `segment-retry-<segment_id>`. A segment already retrying gets its running workflow back
/// instead of a second one, and [`Begun::new_run`] says which happened; a finished segment may be
/// retried again.
///
/// The start asks Temporal to *fail* on a running workflow of the same id rather than to use it:
/// the "already started" answer carries the running run id, and only then can the caller tell a
/// new run from a joined one (the SDK's start call does not return the `started` flag).
pub async fn begin(client: &Client, task_queue: &str, input: Value) -> Result<Begun, Error> {
    let req = RetryRequest::parse(&input)?;
    let id = retake_domain::workflow_id(&req.segment_id);
    let options = WorkflowStartOptions::new(task_queue, id.clone())
        .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
        .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
        .static_summary(format!(
            "Retry segment {} ({}, project {})",
            req.segment_id, req.scene_type, req.project_id
        ))
        .build();
    match client
        .start_workflow(
            SegmentRetryWorkflow::run,
            retake_workflows::argument(&input),
            options,
        )
        .await
    {
        Ok(handle) => Ok(Begun {
            run_id: handle.run_id().unwrap_or_default().to_owned(),
            handle,
            new_run: true,
        }),
        Err(WorkflowStartError::AlreadyStarted { run_id, .. }) => {
            let run_id = match run_id.filter(|r| !r.is_empty()) {
                Some(run_id) => run_id,
                // Older servers leave the detail out: ask which run holds the id.
                None => describe_run(client, &id, None)
                    .await?
                    .map(|r| r.run_id)
                    .unwrap_or_default(),
            };
            Ok(Begun {
                handle: client.get_workflow_handle::<SegmentRetryRun>(id),
                run_id,
                new_run: false,
            })
        }
        Err(WorkflowStartError::Rpc(status)) => Err(Error::from_status(status, &id)),
        Err(other) => Err(Error::Internal(chain(&other))),
    }
}

/// [`begin`], keeping only the handle.
pub async fn start(client: &Client, task_queue: &str, input: Value) -> Result<RetryHandle, Error> {
    begin(client, task_queue, input).await.map(|b| b.handle)
}

/// Wait for a started retry's result.
pub async fn result(handle: &RetryHandle) -> Result<RetryResult, Error> {
    let id = &handle.info().workflow_id;
    handle
        .get_result(WorkflowGetResultOptions::default())
        .await
        .map_err(|e| match e {
            e if e.is_workflow_outcome() => Error::Failed(format!("workflow {id}: {}", chain(&e))),
            WorkflowGetResultError::NotFound(_) => Error::NotFound(id.clone()),
            WorkflowGetResultError::Rpc(status) => Error::from_status(status, id),
            other => Error::Internal(chain(&other)),
        })
}

/// Start and wait.
pub async fn run(client: &Client, task_queue: &str, input: Value) -> Result<RetryResult, Error> {
    let handle = start(client, task_queue, input).await?;
    result(&handle).await
}

/// The running (or last) retry of a segment.
pub fn handle(client: &Client, segment: &SegmentId) -> RetryHandle {
    client.get_workflow_handle::<SegmentRetryRun>(retake_domain::workflow_id(segment))
}

/// A workflow run as Temporal describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    pub run_id: String,
    /// Still running (not completed, failed, terminated, cancelled, timed out or continued).
    pub running: bool,
}

/// Describe a run of `workflow_id` (`run_id` `None`: the latest); `None` when Temporal knows no
/// such workflow or run.
pub async fn describe_run(
    client: &Client,
    workflow_id: &str,
    run_id: Option<&str>,
) -> Result<Option<RunState>, Error> {
    let mut svc = client.connection().workflow_service();
    let answer = svc
        .describe_workflow_execution(tonic::Request::new(DescribeWorkflowExecutionRequest {
            namespace: client.namespace(),
            execution: Some(WorkflowExecution {
                workflow_id: workflow_id.to_owned(),
                run_id: run_id.unwrap_or_default().to_owned(),
            }),
        }))
        .await;
    match answer {
        Ok(r) => Ok(r.into_inner().workflow_execution_info.map(|i| RunState {
            run_id: i.execution.map(|e| e.run_id).unwrap_or_default(),
            running: i.status == WorkflowExecutionStatus::Running as i32,
        })),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(Error::from_status(status, workflow_id)),
    }
}

/// Whether Temporal answers at all (its cheapest call): for health checks.
pub async fn ping(client: &Client) -> Result<(), Error> {
    let mut svc = client.connection().workflow_service();
    svc.get_system_info(tonic::Request::new(GetSystemInfoRequest {}))
        .await
        .map(|_| ())
        // Whatever the code, a frontend that cannot answer this is not serving.
        .map_err(Error::Unavailable)
}

/// The segment's latest retry run, or `None` if it never had one.
pub async fn latest_run(client: &Client, segment: &SegmentId) -> Result<Option<RunState>, Error> {
    describe_run(client, &retake_domain::workflow_id(segment), None).await
}

/// Temporal answers `NotFound` both for a workflow that never existed and for one that already
/// completed (a signal or an update to a closed workflow, an update aborted by the closing
/// workflow). Ask which: a known, closed workflow is [`Error::AlreadyFinished`].
async fn refine_not_found(client: &Client, e: Error) -> Error {
    let Error::NotFound(id) = e else { return e };
    match describe_run(client, &id, None).await {
        Ok(Some(_)) => Error::AlreadyFinished(id),
        Ok(None) => Error::NotFound(id),
        Err(other) => other,
    }
}

fn interaction_error(e: WorkflowInteractionError, workflow_id: &str) -> Error {
    match e {
        WorkflowInteractionError::NotFound(_) => Error::NotFound(workflow_id.to_owned()),
        WorkflowInteractionError::Rpc(status) => Error::from_status(status, workflow_id),
        other => Error::Internal(chain(&other)),
    }
}

/// Send the `abort` or `escalate` signal with `{"reason", "by"}`.
pub async fn signal(
    client: &Client,
    segment: &SegmentId,
    action: Creator,
    reason: &str,
    by: &str,
) -> Result<(), Error> {
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
    match sent {
        Ok(()) => Ok(()),
        Err(e) => Err(refine_not_found(client, interaction_error(e, &h.info().workflow_id)).await),
    }
}

/// A creator's signal.
#[derive(Debug, Clone, Copy)]
pub enum Creator {
    Abort,
    Escalate,
}

/// Deliver a review decision through the `decide` update. A decision the workflow refuses is
/// [`Error::Rejected`] with its reason; one that arrives after the review ended (the workflow
/// closed before or while the update was delivered) is [`Error::AlreadyFinished`].
pub async fn decide(client: &Client, segment: &SegmentId, decision: Value) -> Result<Value, Error> {
    let h = handle(client, segment);
    let id = h.info().workflow_id.clone();
    let answer = h
        .execute_update(
            SegmentRetryWorkflow::decide,
            decision,
            WorkflowExecuteUpdateOptions::default(),
        )
        .await;
    let e = match answer {
        Ok(answer) => return Ok(answer),
        Err(WorkflowUpdateError::Failed(f)) => {
            let outlived = matches!(
                &f.failure_info,
                Some(FailureInfo::ApplicationFailureInfo(info)) if info.r#type == UPDATE_OUTLIVED_WORKFLOW
            );
            return Err(if outlived {
                Error::AlreadyFinished(id)
            } else {
                Error::Rejected(f.message)
            });
        }
        Err(WorkflowUpdateError::NotFound(_)) => Error::NotFound(id),
        Err(WorkflowUpdateError::Rpc(status)) => Error::from_status(status, &id),
        Err(other) => Error::Internal(chain(&other)),
    };
    Err(refine_not_found(client, e).await)
}

/// The live status (query `report`).
pub async fn status(client: &Client, segment: &SegmentId) -> Result<Status, Error> {
    let h = handle(client, segment);
    h.query(
        SegmentRetryWorkflow::report,
        (),
        WorkflowQueryOptions::default(),
    )
    .await
    .map_err(|e| {
        let id = &h.info().workflow_id;
        match e {
            WorkflowQueryError::NotFound(_) => Error::NotFound(id.clone()),
            WorkflowQueryError::Rpc(status) => Error::from_status(status, id),
            other => Error::Internal(chain(&other)),
        }
    })
}

/// Where a started retry settled: finished, or escalated and waiting for a creator's decision.
#[derive(Debug)]
pub enum Settled {
    Finished(RetryResult),
    AwaitingReview(Status),
}

/// Wait until the retry finishes or starts waiting for review (checked once a second through the
/// `report` query), whichever comes first: a review window may last a day.
pub async fn settled(handle: &RetryHandle) -> Result<Settled, Error> {
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

/// A retry waiting for a creator's decision, as Temporal's visibility lists it (the search
/// attributes the workflow keeps current).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingReview {
    pub segment_id: String,
    pub project_id: String,
    pub scene_type: String,
    pub run_id: String,
    /// When the run started, milliseconds since the Unix epoch (0 when visibility leaves it out).
    pub started_unix_ms: i64,
}

/// Which retries [`awaiting_review`] lists: those of one task queue, optionally of one project
/// and one scene type.
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter<'a> {
    pub task_queue: &'a str,
    pub project: Option<&'a ProjectId>,
    pub scene_type: Option<&'a SceneType>,
    /// List the runs still making attempts (`RetryOutcome = running`) instead of those
    /// awaiting review.
    pub retrying: bool,
}

impl ReviewFilter<'_> {
    /// The visibility query: running runs whose `RetryOutcome` is `awaiting_review` (or
    /// `running`, see [`ReviewFilter::retrying`]). Ids are validated (letters, digits, `-_.:`),
    /// so only the task queue needs its quotes escaped.
    pub fn query(&self) -> String {
        let quoted = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut q = format!(
            "WorkflowType = '{}' AND ExecutionStatus = 'Running' AND RetryOutcome = '{}' AND TaskQueue = {}",
            retake_domain::WORKFLOW_TYPE,
            if self.retrying {
                "running"
            } else {
                "awaiting_review"
            },
            quoted(self.task_queue)
        );
        if let Some(p) = self.project {
            q.push_str(&format!(" AND ProjectId = {}", quoted(p.as_str())));
        }
        if let Some(t) = self.scene_type {
            q.push_str(&format!(" AND SceneType = {}", quoted(t.as_str())));
        }
        q
    }
}

/// One page of the retries awaiting review, and the token of the next (empty on the last).
#[derive(Debug, Clone, Default)]
pub struct ReviewPage {
    pub runs: Vec<AwaitingReview>,
    /// Opaque: pass it back to [`awaiting_review`] for the page after this one.
    pub next: Vec<u8>,
}

/// Up to `limit` retries awaiting review after the page `token` names (empty: the first page),
/// newest start first, as Temporal's visibility pages them. Visibility is eventually
/// consistent: a retry escalated a moment ago may be missing for a second.
pub async fn awaiting_review(
    client: &Client,
    filter: &ReviewFilter<'_>,
    limit: i32,
    token: Vec<u8>,
) -> Result<ReviewPage, Error> {
    let mut svc = client.connection().workflow_service();
    let answer = svc
        .list_workflow_executions(tonic::Request::new(ListWorkflowExecutionsRequest {
            namespace: client.namespace(),
            page_size: limit,
            next_page_token: token,
            query: filter.query(),
        }))
        .await
        .map_err(|status| Error::from_status(status, "the review queue"))?
        .into_inner();
    let runs = answer
        .executions
        .into_iter()
        .map(|info| {
            let attr = |name: &str| -> String {
                info.search_attributes
                    .as_ref()
                    .and_then(|sa| sa.indexed_fields.get(name))
                    .and_then(|p| serde_json::from_slice::<String>(&p.data).ok())
                    .unwrap_or_default()
            };
            AwaitingReview {
                segment_id: attr("SegmentId"),
                project_id: attr("ProjectId"),
                scene_type: attr("SceneType"),
                run_id: info
                    .execution
                    .as_ref()
                    .map(|e| e.run_id.clone())
                    .unwrap_or_default(),
                started_unix_ms: info
                    .start_time
                    .as_ref()
                    .map(|t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
                    .unwrap_or(0),
            }
        })
        .collect();
    Ok(ReviewPage {
        runs,
        next: answer.next_page_token,
    })
}

/// How many retries await review (visibility's count of [`ReviewFilter::query`]).
pub async fn count_awaiting_review(
    client: &Client,
    filter: &ReviewFilter<'_>,
) -> Result<u64, Error> {
    let mut svc = client.connection().workflow_service();
    let answer = svc
        .count_workflow_executions(tonic::Request::new(CountWorkflowExecutionsRequest {
            namespace: client.namespace(),
            query: filter.query(),
        }))
        .await
        .map_err(|status| Error::from_status(status, "the review queue"))?;
    Ok(u64::try_from(answer.into_inner().count).unwrap_or(0))
}
