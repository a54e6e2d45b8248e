//! Retries of a segment: start, steer, watch, and the recorded history.

use crate::AppState;
use crate::auth::{Caller, Who, need};
use crate::error::{AppError, ErrorBody};
use crate::extract::{Id, JsonBody, QueryPairs, from_json};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use retake_activities::ports::{StoredAttempt, StoredOutcome};
use retake_client::{Creator, RunState};
use retake_domain::policy::JitterSpec;
use retake_domain::review::Phase;
use retake_domain::status::Status;
use retake_domain::{RetryPolicy, RetryRequest, SegmentId, ValidationError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Whether a start call started the retry or found it running.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StartStatus {
    /// This call started a new run (202).
    Started,
    /// The segment was already retrying; this is that run (200).
    Running,
}

/// The answer to starting a retry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RetryStarted {
    status: StartStatus,
    /// `segment-retry-<segment_id>`.
    workflow_id: String,
    run_id: String,
}

/// The segment's latest run, which must still be running to be steered: 404 if it never had
/// one, 409 if it has finished (`what` says what the caller wanted, for the message).
async fn running_run(s: &AppState, segment: &SegmentId, what: &str) -> Result<String, AppError> {
    match retake_client::latest_run(&s.temporal, segment).await? {
        Some(RunState {
            run_id,
            running: true,
        }) => Ok(run_id),
        Some(_) => Err(AppError::Finished(format!(
            "the retry of segment {segment} has already finished: {what}"
        ))),
        None => Err(AppError::NotFound(format!(
            "segment {segment} has no retry"
        ))),
    }
}

/// A creator's `params.output_uri` (the draft a text retry revises, which the worker reads and
/// the console shows) may name a local file only under the configured roots, and an `http(s)`
/// URL only under the configured URL roots: anything else is a 422, before the worker or the
/// console could open or request it. Other schemes (`sim://`, `s3://`) are never read and pass.
fn check_output_uri(
    s: &AppState,
    params: Option<&Map<String, Value>>,
    field: &str,
) -> Result<(), ValidationError> {
    let Some(Value::String(uri)) = params.and_then(|p| p.get("output_uri")) else {
        return Ok(());
    };
    let scheme = url::Url::parse(uri).map(|u| u.scheme().to_owned());
    let refused = match scheme.as_deref() {
        Ok("file") => s.files.admits_uri(uri).err().map(|e| e.to_string()),
        Ok("http" | "https") => s.urls.admits_uri(uri).err().map(|e| e.to_string()),
        _ => None,
    };
    match refused {
        Some(message) => Err(ValidationError::single(field, message)),
        None => Ok(()),
    }
}

/// Start a retry of a failed segment. The body is the workflow argument; its `segment_id` may be
/// left out, and if given must name the segment of the path. The policy override is merged over
/// the scene type's stored policy and checked before anything starts. Idempotent: while the
/// segment is retrying, the running retry is returned (200) instead of a second one started (202);
/// of concurrent starts exactly one gets 202.
#[utoipa::path(post, path = "/segments/{id}/retries", operation_id = "start_retry", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = RetryRequest, description = "The workflow argument (segment_id optional)"),
    responses((status = 202, description = "Started", body = RetryStarted),
              (status = 200, description = "Already retrying: the running retry", body = RetryStarted),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the creator role", body = ErrorBody),
              (status = 408, description = "Body not received within the body timeout", body = ErrorBody),
              (status = 413, description = "Body too large (declared or sent)", body = ErrorBody),
              (status = 415, description = "Body not JSON", body = ErrorBody),
              (status = 422, description = "Invalid request or policy, with the offending fields", body = ErrorBody),
              (status = 503, description = "Temporal or the database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn start(
    _: Caller<need::Creator>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
    JsonBody(mut body): JsonBody,
) -> Result<(StatusCode, Json<RetryStarted>), AppError> {
    let Value::Object(obj) = &mut body else {
        return Err(ValidationError::single("body", "must be a JSON object").into());
    };
    obj.entry("segment_id")
        .or_insert_with(|| json!(segment.as_str()));
    let req = RetryRequest::parse(&body)?;
    check_output_uri(&s, Some(&req.params.0), "params.output_uri")?;
    // Compared as parsed: `"segment_id": 77` names segment `77`, as the workflow reads it.
    if req.segment_id != segment {
        return Err(ValidationError::single(
            "segment_id",
            format!(
                "{} differs from the segment in the path ({segment})",
                req.segment_id
            ),
        )
        .into());
    }
    if let Value::Object(obj) = &mut body {
        obj.insert("segment_id".into(), json!(segment.as_str()));
    }
    // The same merge the workflow makes after loading the policy, so an invalid override is a
    // 422 now rather than a workflow that fails later.
    let stored = s.store.policy(req.scene_type.as_str()).await?;
    RetryPolicy::resolve(stored.as_ref(), req.policy.as_ref())?;
    let begun = retake_client::begin(&s.temporal, &s.task_queue, body).await?;
    let (code, status) = if begun.new_run {
        (StatusCode::ACCEPTED, StartStatus::Started)
    } else {
        (StatusCode::OK, StartStatus::Running)
    };
    Ok((
        code,
        Json(RetryStarted {
            status,
            workflow_id: retake_domain::workflow_id(&segment),
            run_id: begun.run_id,
        }),
    ))
}

/// The live status of the segment's retry (query `report`): attempts so far, phase, report.
#[utoipa::path(get, path = "/segments/{id}/retries/status", operation_id = "retry_status", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    responses((status = 200, description = "Status", body = Status),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 404, description = "No retry", body = ErrorBody),
              (status = 503, description = "Temporal is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn status(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
) -> Result<Json<Status>, AppError> {
    match retake_client::status(&s.temporal, &segment).await {
        Ok(status) => Ok(Json(status)),
        Err(retake_client::Error::NotFound(_)) => Err(AppError::NotFound(format!(
            "segment {segment} has no retry"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The body of `abort` and `escalate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalRequest {
    /// Why, in words (recorded with the event).
    #[serde(default)]
    reason: String,
    /// Who; default `api:<role>`.
    #[serde(default)]
    by: Option<String>,
}

/// The answer to `abort` and `escalate`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SignalSent {
    /// Always `sent`: the workflow acts on it at its next step.
    status: &'static str,
    run_id: String,
    by: String,
}

/// Send `abort` or `escalate` for `who`: the one path of the JSON endpoints and the console's
/// buttons, so both validate the body, record `by` ([`Who::recorded`]) and answer a finished
/// retry alike.
pub(crate) async fn signal(
    who: &Who,
    s: &AppState,
    segment: &SegmentId,
    body: Value,
    action: Creator,
) -> Result<SignalSent, AppError> {
    let body: SignalRequest = from_json(body)?;
    let by = who.recorded(body.by.as_deref())?;
    let what = match action {
        Creator::Abort => "there is nothing to abort",
        Creator::Escalate => "there is nothing to escalate",
    };
    let run_id = running_run(s, segment, what).await?;
    // The workflow ignores an escalation of a run already in review (there is nothing more to
    // stop); answering 202 for it would say something happened that did not.
    if matches!(action, Creator::Escalate)
        && retake_client::status(&s.temporal, segment).await?.phase == Phase::AwaitingReview
    {
        return Err(AppError::Finished(format!(
            "segment {segment} is already awaiting review: decide it (accept, reject or \
             retry_with) instead"
        )));
    }
    match retake_client::signal(&s.temporal, segment, action, &body.reason, &by).await {
        Ok(()) => {}
        Err(retake_client::Error::AlreadyFinished(_)) => {
            return Err(AppError::Finished(format!(
                "the retry of segment {segment} has already finished: {what}"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(SignalSent {
        status: "sent",
        run_id,
        by,
    })
}

/// Abort the running retry: the attempt in flight is cancelled and its reservation released.
#[utoipa::path(post, path = "/segments/{id}/retries/abort", operation_id = "abort_retry", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = SignalRequest),
    responses((status = 202, description = "Signal sent", body = SignalSent),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the creator role", body = ErrorBody),
              (status = 404, description = "The segment never had a retry", body = ErrorBody),
              (status = 409, description = "The retry has already finished", body = ErrorBody),
              (status = 422, description = "Invalid body", body = ErrorBody),
              (status = 503, description = "Temporal is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn abort(
    caller: Caller<need::Creator>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<SignalSent>), AppError> {
    let sent = signal(&caller.who, &s, &segment, body, Creator::Abort).await?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

/// Stop retrying and go to human review.
#[utoipa::path(post, path = "/segments/{id}/retries/escalate", operation_id = "escalate_retry", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = SignalRequest),
    responses((status = 202, description = "Signal sent", body = SignalSent),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the creator role", body = ErrorBody),
              (status = 404, description = "The segment never had a retry", body = ErrorBody),
              (status = 409, description = "The retry has already finished, or is already awaiting review", body = ErrorBody),
              (status = 422, description = "Invalid body", body = ErrorBody),
              (status = 503, description = "Temporal is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn escalate(
    caller: Caller<need::Creator>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<SignalSent>), AppError> {
    let sent = signal(&caller.who, &s, &segment, body, Creator::Escalate).await?;
    Ok((StatusCode::ACCEPTED, Json(sent)))
}

/// A review decision.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DecisionKind {
    /// Retry more, with new `params`, a wider `vary` and/or more `attempts`.
    RetryWith,
    /// Take recorded `attempt` as final, whatever its scores.
    Accept,
    /// Give up on the segment.
    Reject,
}

/// The body of a review decision (the workflow's `decide` update argument, `by` optional).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionRequest {
    decision: DecisionKind,
    /// Who decides; default `api:<role>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<String>,
    /// Why, in words.
    #[serde(default)]
    reason: String,
    /// `retry_with`: values merged over the current parameters (e.g. a new `cfg_scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    params: Option<Map<String, Value>>,
    /// `retry_with`: jitter specs merged over the policy's `vary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vary: Option<BTreeMap<String, JitterSpec>>,
    /// `retry_with`: how many more attempts, 1..=10 (default: the policy's `max_attempts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempts: Option<u32>,
    /// `accept`: the attempt to accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
}

/// The workflow took the decision.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct DecisionAccepted {
    /// The decision taken (`retry_with`, `accept`, `reject`).
    pub(crate) accepted: String,
    pub(crate) by: String,
}

/// A review decision (`retry_with`, `accept`, `reject`) for a segment awaiting review.
#[utoipa::path(post, path = "/segments/{id}/retries/decision", operation_id = "decide_review", tag = "retries",
    params(("id" = String, Path, description = "Segment")),
    request_body(content = DecisionRequest),
    responses((status = 200, description = "Decision accepted", body = DecisionAccepted),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the creator role", body = ErrorBody),
              (status = 404, description = "The segment never had a retry", body = ErrorBody),
              (status = 409, description = "The retry has finished: its review is over", body = ErrorBody),
              (status = 422, description = "Invalid or rejected decision, with the reason", body = ErrorBody),
              (status = 503, description = "Temporal is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn decide(
    caller: Caller<need::Creator>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
    JsonBody(body): JsonBody,
) -> Result<Json<DecisionAccepted>, AppError> {
    decide_as(&caller.who, &s, &segment, body).await.map(Json)
}

/// Deliver a decision for `who`: the one path of the JSON endpoint and the console's forms, so
/// both read the body into the same [`DecisionRequest`] (same field errors), record `by`
/// ([`Who::recorded`]) and map the workflow's refusal the same way.
pub(crate) async fn decide_as(
    who: &Who,
    s: &AppState,
    segment: &SegmentId,
    body: Value,
) -> Result<DecisionAccepted, AppError> {
    let mut decision: DecisionRequest = from_json(body)?;
    check_output_uri(s, decision.params.as_ref(), "params.output_uri")?;
    decision.by = Some(who.recorded(decision.by.as_deref())?);
    let over = "its review is over";
    running_run(s, segment, over).await?;
    let argument =
        serde_json::to_value(&decision).map_err(|e| AppError::Internal(e.to_string()))?;
    match retake_client::decide(&s.temporal, segment, argument).await {
        Ok(answer) => {
            Ok(serde_json::from_value(answer).map_err(|e| AppError::Internal(e.to_string()))?)
        }
        Err(retake_client::Error::Rejected(m)) => {
            Err(AppError::Rejected(format!("decision rejected: {m}")))
        }
        Err(retake_client::Error::AlreadyFinished(_)) => Err(AppError::Finished(format!(
            "the retry of segment {segment} has already finished: {over}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One page of a segment's recorded history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct HistoryPage {
    segment_id: String,
    /// Every run's outcome and decisions, oldest first (not paginated).
    runs: Vec<StoredOutcome>,
    /// This page of attempts, oldest run first, then by attempt number.
    attempts: Vec<StoredAttempt>,
    page: u32,
    per_page: u32,
    total_attempts: usize,
}

/// Every recorded attempt of a segment (seed, original and jittered params, scores, failures,
/// status, GPU ms, selected) and every run's outcome and decisions, attempts paginated.
#[utoipa::path(get, path = "/segments/{id}/retry-history", operation_id = "retry_history", tag = "retries",
    params(("id" = String, Path, description = "Segment"),
           ("page" = Option<u32>, Query, minimum = 1, description = "1-based page of attempts (default 1)"),
           ("per_page" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Attempts per page, 1-500 (default 100)")),
    responses((status = 200, description = "History", body = HistoryPage),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 404, description = "Nothing recorded", body = ErrorBody),
              (status = 422, description = "Invalid segment id, page or per_page", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn history(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(segment): Id<SegmentId>,
    query: QueryPairs,
) -> Result<Json<HistoryPage>, AppError> {
    let page = query.positive("page")?.unwrap_or(1);
    let per_page = query.positive("per_page")?.unwrap_or(100);
    if per_page > 500 {
        return Err(ValidationError::single("per_page", "must be between 1 and 500").into());
    }
    let runs = s.store.outcomes(segment.as_str()).await?;
    let attempts = s.store.attempts(segment.as_str()).await?;
    if runs.is_empty() && attempts.is_empty() {
        return Err(AppError::NotFound(format!(
            "segment {segment} has no recorded retries"
        )));
    }
    let total_attempts = attempts.len();
    let skip = usize::try_from(u64::from(page - 1) * u64::from(per_page)).unwrap_or(usize::MAX);
    let attempts = attempts
        .into_iter()
        .skip(skip)
        .take(per_page as usize)
        .collect();
    Ok(Json(HistoryPage {
        segment_id: segment.to_string(),
        runs,
        attempts,
        page,
        per_page,
        total_attempts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_decider_always_carries_the_tokens_role() {
        use crate::auth::Role;
        let who = |role| Who { role, name: None };
        let by = |role, said: Option<&str>| who(role).recorded(said).unwrap();
        assert_eq!(by(Role::Creator, None), "api:creator");
        assert_eq!(by(Role::Creator, Some("  ")), "api:creator");
        assert_eq!(by(Role::Creator, Some("mina")), "api:creator mina");
        assert_eq!(
            by(Role::Creator, Some("api:admin")),
            "api:creator api:admin",
            "a creator never passes for an admin"
        );
        assert_eq!(by(Role::Admin, Some("api:admin")), "api:admin");
    }
}
