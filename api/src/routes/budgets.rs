//! `GET|PUT /projects/{id}/budget`.

use super::JsonBody;
use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::AppError;
use axum::Json;
use axum::extract::{Path, State};
use retake_activities::ports::Budget;
use retake_domain::{ProjectId, ValidationError};
use serde_json::Value;

/// A project's GPU budget: limit (null = none), reserved and spent milliseconds.
#[utoipa::path(get, path = "/projects/{id}/budget", tag = "budgets",
    params(("id" = String, Path, description = "Project")),
    responses((status = 200, description = "The budget", body = Object),
              (status = 404, description = "Nothing is known about the project")),
    security(("bearer" = [])))]
pub(crate) async fn show(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Budget>, AppError> {
    caller.require(Role::Viewer)?;
    let project = ProjectId::parse(&id)?;
    let budget = s.store.budget(project.as_str()).await?;
    budget.map(Json).ok_or_else(|| {
        AppError::NotFound(format!(
            "project {project} has no budget and no recorded GPU time"
        ))
    })
}

/// Set (`{"limit_ms": 3600000}`) or remove (`{"limit_ms": null}`) a project's limit.
#[utoipa::path(put, path = "/projects/{id}/budget", tag = "budgets",
    params(("id" = String, Path, description = "Project")),
    request_body(content = Object, description = r#"{"limit_ms": <GPU milliseconds or null>}"#),
    responses((status = 200, description = "The budget", body = Object),
              (status = 422, description = "Invalid limit")),
    security(("bearer" = [])))]
pub(crate) async fn set(
    caller: Caller,
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Budget>, AppError> {
    caller.require(Role::Admin)?;
    let project = ProjectId::parse(&id)?;
    let limit = match body.get("limit_ms") {
        None => {
            return Err(ValidationError::single(
                "limit_ms",
                "is required (a number of GPU milliseconds, or null for no limit)",
            )
            .into());
        }
        Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ValidationError::single(
                "limit_ms",
                format!("must be a non-negative integer or null, got {v}"),
            )
        })?),
    };
    Ok(Json(s.store.set_limit(project.as_str(), limit).await?))
}
