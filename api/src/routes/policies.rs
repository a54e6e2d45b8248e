//! `GET|PUT /scene-types/{id}/retry-policy`.

use crate::AppState;
use crate::auth::{Caller, Who, need};
use crate::error::{AppError, ErrorBody};
use crate::extract::{Id, JsonBody};
use axum::Json;
use axum::extract::State;
use retake_activities::ports::PolicyChange;
use retake_domain::policy::PolicyInput;
use retake_domain::{RetryPolicy, SceneType};

/// The stored policy of a scene type.
#[utoipa::path(get, path = "/scene-types/{id}/retry-policy", operation_id = "get_retry_policy", tag = "policies",
    params(("id" = String, Path, description = "Scene type")),
    responses((status = 200, description = "The stored policy, every field filled in", body = RetryPolicy),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 404, description = "No policy stored: the default (disabled) one applies", body = ErrorBody),
              (status = 422, description = "Invalid scene type", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn show(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(scene): Id<SceneType>,
) -> Result<Json<RetryPolicy>, AppError> {
    let stored = s.store.policy(scene.as_str()).await?.ok_or_else(|| {
        AppError::NotFound(format!(
            "scene type {scene} has no stored policy (the default, disabled policy applies)"
        ))
    })?;
    Ok(Json(RetryPolicy::resolve(Some(&stored), None)?))
}

/// Store a scene type's policy (missing fields get their profile's defaults).
#[utoipa::path(put, path = "/scene-types/{id}/retry-policy", operation_id = "set_retry_policy", tag = "policies",
    params(("id" = String, Path, description = "Scene type")),
    request_body(content = PolicyInput, description = "A retry policy; missing fields get their defaults"),
    responses((status = 200, description = "The stored policy", body = RetryPolicy),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the admin role", body = ErrorBody),
              (status = 408, description = "Body not received within the body timeout", body = ErrorBody),
              (status = 413, description = "Body too large (declared or sent)", body = ErrorBody),
              (status = 415, description = "Body not JSON", body = ErrorBody),
              (status = 422, description = "Invalid policy, with the offending fields", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set(
    caller: Caller<need::Admin>,
    State(s): State<AppState>,
    Id(scene): Id<SceneType>,
    JsonBody(body): JsonBody,
) -> Result<Json<RetryPolicy>, AppError> {
    store_policy(&caller.who, &s, &scene, &body).await.map(Json)
}

/// Validate and store a scene type's policy, recording who changed it: the one path of `PUT`
/// and the console's forms.
pub(crate) async fn store_policy(
    who: &Who,
    s: &AppState,
    scene: &SceneType,
    body: &serde_json::Value,
) -> Result<RetryPolicy, AppError> {
    let policy = RetryPolicy::parse(body)?;
    let value = serde_json::to_value(&policy).map_err(|e| AppError::Internal(e.to_string()))?;
    let by = who.recorded(None)?;
    s.store.set_policy(scene.as_str(), &value, &by).await?;
    Ok(policy)
}

/// How many policy changes `GET .../retry-policy/changes` answers with, newest first.
pub(crate) const CHANGES_SHOWN: u32 = 50;

/// Who changed a scene type's policy, when, and to what.
#[utoipa::path(get, path = "/scene-types/{id}/retry-policy/changes", operation_id = "list_retry_policy_changes", tag = "policies",
    params(("id" = String, Path, description = "Scene type")),
    responses((status = 200, description = "The last 50 stored policies, newest first (empty when none was ever stored)", body = Vec<PolicyChange>),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 422, description = "Invalid scene type", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn changes(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(scene): Id<SceneType>,
) -> Result<Json<Vec<PolicyChange>>, AppError> {
    Ok(Json(
        s.store
            .policy_changes(scene.as_str(), CHANGES_SHOWN)
            .await?,
    ))
}
