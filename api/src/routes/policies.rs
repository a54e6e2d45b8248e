//! `GET|PUT /scene-types/{id}/retry-policy`.

use super::JsonBody;
use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::AppError;
use axum::Json;
use axum::extract::{Path, State};
use retake_domain::{RetryPolicy, SceneType};
use serde_json::Value;

/// The stored policy of a scene type.
#[utoipa::path(get, path = "/scene-types/{id}/retry-policy", tag = "policies",
    params(("id" = String, Path, description = "Scene type")),
    responses((status = 200, description = "The stored policy, every field filled in", body = Object),
              (status = 404, description = "No policy stored: the default (disabled) one applies")),
    security(("bearer" = [])))]
pub(crate) async fn show(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    caller.require(Role::Viewer)?;
    let scene = SceneType::parse(&id)?;
    let stored = s.store.policy(scene.as_str()).await?.ok_or_else(|| {
        AppError::NotFound(format!(
            "scene type {scene} has no stored policy (the default, disabled policy applies)"
        ))
    })?;
    let policy = RetryPolicy::resolve(Some(&stored), None)?;
    Ok(Json(
        serde_json::to_value(policy).map_err(|e| AppError::Internal(e.to_string()))?,
    ))
}

/// Store a scene type's policy (missing fields get their defaults).
#[utoipa::path(put, path = "/scene-types/{id}/retry-policy", tag = "policies",
    params(("id" = String, Path, description = "Scene type")),
    request_body(content = Object, description = "A retry policy (see the README)"),
    responses((status = 200, description = "The stored policy", body = Object),
              (status = 422, description = "Invalid policy, with the offending fields")),
    security(("bearer" = [])))]
pub(crate) async fn set(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AppError> {
    caller.require(Role::Admin)?;
    let scene = SceneType::parse(&id)?;
    let policy = RetryPolicy::parse(&body)?;
    let value = serde_json::to_value(&policy).map_err(|e| AppError::Internal(e.to_string()))?;
    s.store.set_policy(scene.as_str(), &value).await?;
    Ok(Json(value))
}
