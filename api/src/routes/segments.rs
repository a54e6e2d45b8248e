//! Retries of a segment: start, steer, watch, and the recorded history.

use super::JsonBody;
use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::AppError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use retake_client::{Creator, DecideError};
use retake_domain::{RetryRequest, SegmentId, ValidationError};
use serde::Deserialize;
use serde_json::{Value, json};
use temporalio_client::{NamespacedClient, tonic};
use temporalio_protos::protos::temporal::api::common::v1::WorkflowExecution;
use temporalio_protos::protos::temporal::api::enums::v1::WorkflowExecutionStatus;
use temporalio_protos::protos::temporal::api::workflowservice::v1::DescribeWorkflowExecutionRequest;

fn temporal_down(e: impl std::fmt::Display) -> AppError {
    tracing::warn!(error = %e, "Temporal call failed");
    AppError::Unavailable("Temporal")
}

/// The segment's latest retry run: `(run id, still running)`, or `None` if it never had one.
async fn latest_run(s: &AppState, segment: &SegmentId) -> Result<Option<(String, bool)>, AppError> {
    let mut svc = s.temporal.connection().workflow_service();
    let answer = svc
        .describe_workflow_execution(tonic::Request::new(DescribeWorkflowExecutionRequest {
            namespace: s.temporal.namespace(),
            execution: Some(WorkflowExecution {
                workflow_id: retake_domain::workflow_id(segment),
                run_id: String::new(),
            }),
        }))
        .await;
    match answer {
        Ok(r) => Ok(r.into_inner().workflow_execution_info.map(|i| {
            let run = i.execution.map(|e| e.run_id).unwrap_or_default();
            (run, i.status == WorkflowExecutionStatus::Running as i32)
        })),
        Err(st) if st.code() == tonic::Code::NotFound => Ok(None),
        Err(st) => Err(temporal_down(st.message())),
    }
}

async fn running_run(s: &AppState, segment: &SegmentId) -> Result<String, AppError> {
    match latest_run(s, segment).await? {
        Some((run, true)) => Ok(run),
        _ => Err(AppError::NotFound(format!(
            "segment {segment} has no running retry"
        ))),
    }
}

/// Start a retry of a failed segment. The body is the workflow argument (see the README); its
/// `segment_id` may be left out. Idempotent: while the segment is retrying, the running retry is
/// returned (200) instead of a second one started (202).
#[utoipa::path(post, path = "/segments/{id}/retries", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = Object, description = "The workflow argument: project_id, scene_type, params, failed_qa, optional policy"),
    responses((status = 202, description = "Started", body = Object),
              (status = 200, description = "Already retrying: the running retry", body = Object),
              (status = 422, description = "Invalid request, with the offending fields"),
              (status = 503, description = "Temporal unavailable")),
    security(("bearer" = [])))]
pub(crate) async fn start(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> Result<(StatusCode, Json<Value>), AppError> {
    caller.require(Role::Creator)?;
    let segment = SegmentId::parse(&id)?;
    let Value::Object(obj) = &mut body else {
        return Err(ValidationError::single("body", "must be a JSON object").into());
    };
    match obj.get("segment_id") {
        Some(given) if given.as_str() != Some(segment.as_str()) => {
            return Err(ValidationError::single(
                "segment_id",
                "differs from the segment in the path",
            )
            .into());
        }
        _ => {
            obj.insert("segment_id".into(), json!(segment.as_str()));
        }
    }
    RetryRequest::parse(&body)?;
    let workflow_id = retake_domain::workflow_id(&segment);
    if let Some((run_id, true)) = latest_run(&s, &segment).await? {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "running", "workflow_id": workflow_id, "run_id": run_id})),
        ));
    }
    let handle = retake_client::start(&s.temporal, &s.task_queue, body)
        .await
        .map_err(temporal_down)?;
    let run_id = handle.run_id().map(str::to_owned).unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "started", "workflow_id": workflow_id, "run_id": run_id})),
    ))
}

/// The live status of the segment's retry (query `report`): attempts so far, phase, report.
#[utoipa::path(get, path = "/segments/{id}/retries/status", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    responses((status = 200, description = "Status", body = Object), (status = 404, description = "No retry")),
    security(("bearer" = [])))]
pub(crate) async fn status(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    caller.require(Role::Viewer)?;
    let segment = SegmentId::parse(&id)?;
    if latest_run(&s, &segment).await?.is_none() {
        return Err(AppError::NotFound(format!(
            "segment {segment} has no retry"
        )));
    }
    let status = retake_client::status(&s.temporal, &segment)
        .await
        .map_err(temporal_down)?;
    Ok(Json(
        serde_json::to_value(status).map_err(|e| AppError::Internal(e.to_string()))?,
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct SignalBody {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    by: Option<String>,
}

async fn signal(
    caller: Caller,
    s: AppState,
    id: String,
    body: Value,
    action: Creator,
) -> Result<(StatusCode, Json<Value>), AppError> {
    caller.require(Role::Creator)?;
    let segment = SegmentId::parse(&id)?;
    let body: SignalBody = serde_json::from_value(body).map_err(|e| {
        ValidationError::single(
            "body",
            format!("expected {{\"reason\": \"...\", \"by\": \"...\"}}: {e}"),
        )
    })?;
    let by = body
        .by
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| format!("api:{}", caller.0.as_str()));
    let run_id = running_run(&s, &segment).await?;
    retake_client::signal(&s.temporal, &segment, action, &body.reason, &by)
        .await
        .map_err(temporal_down)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"status": "sent", "run_id": run_id, "by": by})),
    ))
}

/// Abort the running retry: the attempt in flight is cancelled and its reservation released.
#[utoipa::path(post, path = "/segments/{id}/retries/abort", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = Object, description = r#"{"reason": "...", "by": "..."}"#),
    responses((status = 202, description = "Signal sent", body = Object), (status = 404, description = "No running retry")),
    security(("bearer" = [])))]
pub(crate) async fn abort(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), AppError> {
    signal(caller, s, id, body, Creator::Abort).await
}

/// Stop retrying and go to human review.
#[utoipa::path(post, path = "/segments/{id}/retries/escalate", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = Object, description = r#"{"reason": "...", "by": "..."}"#),
    responses((status = 202, description = "Signal sent", body = Object), (status = 404, description = "No running retry")),
    security(("bearer" = [])))]
pub(crate) async fn escalate(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), AppError> {
    signal(caller, s, id, body, Creator::Escalate).await
}

/// A review decision (`retry_with`, `accept`, `reject`) for a segment awaiting review.
#[utoipa::path(post, path = "/segments/{id}/retries/decision", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = Object, description = r#"{"decision": "accept", "attempt": 2, "by": "..."}"#),
    responses((status = 200, description = "Decision accepted", body = Object),
              (status = 404, description = "No running retry"),
              (status = 422, description = "Decision rejected, with the reason")),
    security(("bearer" = [])))]
pub(crate) async fn decide(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> Result<Json<Value>, AppError> {
    caller.require(Role::Creator)?;
    let segment = SegmentId::parse(&id)?;
    if let Value::Object(obj) = &mut body
        && !obj.contains_key("by")
    {
        obj.insert("by".into(), json!(format!("api:{}", caller.0.as_str())));
    }
    running_run(&s, &segment).await?;
    match retake_client::decide(&s.temporal, &segment, body).await {
        Ok(answer) => Ok(Json(answer)),
        Err(DecideError::Rejected(m)) => Err(AppError::Rejected(format!("decision rejected: {m}"))),
        Err(DecideError::Failed(e)) => Err(temporal_down(e)),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    page: Option<usize>,
    per_page: Option<usize>,
}

/// Every recorded attempt of a segment (seed, original and jittered params, scores, failures,
/// status, GPU ms, selected) and every run's outcome and decisions, attempts paginated.
#[utoipa::path(get, path = "/segments/{id}/retry-history", tag = "retries",
    params(("id" = String, Path, description = "Segment"),
           ("page" = Option<usize>, Query, description = "1-based page of attempts (default 1)"),
           ("per_page" = Option<usize>, Query, description = "Attempts per page, 1-500 (default 100)")),
    responses((status = 200, description = "History", body = Object), (status = 404, description = "Nothing recorded")),
    security(("bearer" = [])))]
pub(crate) async fn history(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(p): Query<Page>,
) -> Result<Json<Value>, AppError> {
    caller.require(Role::Viewer)?;
    let segment = SegmentId::parse(&id)?;
    let page = p.page.unwrap_or(1);
    let per_page = p.per_page.unwrap_or(100);
    if page == 0 {
        return Err(ValidationError::single("page", "pages start at 1").into());
    }
    if !(1..=500).contains(&per_page) {
        return Err(ValidationError::single("per_page", "must be between 1 and 500").into());
    }
    let runs = s.store.outcomes(segment.as_str()).await?;
    let attempts = s.store.attempts(segment.as_str()).await?;
    if runs.is_empty() && attempts.is_empty() {
        return Err(AppError::NotFound(format!(
            "segment {segment} has no recorded retries"
        )));
    }
    let total = attempts.len();
    let slice: Vec<_> = attempts
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    Ok(Json(json!({
        "segment_id": segment.as_str(),
        "runs": runs,
        "attempts": slice,
        "page": page,
        "per_page": per_page,
        "total_attempts": total,
    })))
}
