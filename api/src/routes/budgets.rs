//! `GET|PUT /projects/{id}/budget`.

use crate::AppState;
use crate::auth::{Caller, need};
use crate::error::{AppError, ErrorBody};
use crate::extract::{Id, JsonBody};
use axum::Json;
use axum::extract::State;
use retake_activities::ports::Budget;
use retake_domain::ProjectId;
use retake_domain::budget::BudgetLimit;

/// A project's GPU budget: limit (null = none), reserved and spent milliseconds.
#[utoipa::path(get, path = "/projects/{id}/budget", operation_id = "get_budget", tag = "budgets",
    params(("id" = String, Path, description = "Project")),
    responses((status = 200, description = "The budget", body = Budget),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 404, description = "Nothing is known about the project", body = ErrorBody),
              (status = 422, description = "Invalid project id", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn show(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(project): Id<ProjectId>,
) -> Result<Json<Budget>, AppError> {
    let budget = s.store.budget(project.as_str()).await?;
    budget.map(Json).ok_or_else(|| {
        AppError::NotFound(format!(
            "project {project} has no budget and no recorded GPU time"
        ))
    })
}

/// Set (`{"limit_ms": 3600000}`) or remove (`{"limit_ms": null}`) a project's limit.
#[utoipa::path(put, path = "/projects/{id}/budget", operation_id = "set_budget", tag = "budgets",
    params(("id" = String, Path, description = "Project")),
    request_body(content = BudgetLimit),
    responses((status = 200, description = "The budget", body = Budget),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 403, description = "Needs the admin role", body = ErrorBody),
              (status = 408, description = "Body not received within the body timeout", body = ErrorBody),
              (status = 413, description = "Body too large (declared or sent)", body = ErrorBody),
              (status = 415, description = "Body not JSON", body = ErrorBody),
              (status = 422, description = "Invalid limit (e.g. not below 2^63)", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn set(
    _: Caller<need::Admin>,
    State(s): State<AppState>,
    Id(project): Id<ProjectId>,
    JsonBody(body): JsonBody,
) -> Result<Json<Budget>, AppError> {
    store_limit(&s, &project, &body).await.map(Json)
}

/// Validate and set a project's limit: the one path of `PUT` and the console's form.
pub(crate) async fn store_limit(
    s: &AppState,
    project: &ProjectId,
    body: &serde_json::Value,
) -> Result<Budget, AppError> {
    let limit = BudgetLimit::parse(body)?;
    Ok(s.store.set_limit(project.as_str(), limit.limit_ms).await?)
}
