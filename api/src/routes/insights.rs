//! `GET /scene-types/{id}/retry-insights`.

use crate::AppState;
use crate::auth::{Caller, need};
use crate::error::{AppError, ErrorBody};
use crate::extract::{Id, QueryPairs};
use axum::Json;
use axum::extract::State;
use retake_domain::adapt::Insights;
use retake_domain::policy::ADAPTIVE_WINDOW_RANGE;
use retake_domain::{SceneType, ValidationError};

/// Which variations fixed which failures: the scene type's latest scored attempts counted per
/// failure kind and variation, with pass rates and their 95 % Wilson intervals (what `adaptive`
/// retries choose from).
#[utoipa::path(get, path = "/scene-types/{id}/retry-insights", operation_id = "retry_insights", tag = "policies",
    params(("id" = String, Path, description = "Scene type"),
           ("window" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "Latest scored attempts counted (default: the stored policy's adaptive.window, else 2000)"),
           ("scope" = Option<String>, Query, description = "Only attempts recorded under this scope (default: the stored policy's adaptive.scope)")),
    responses((status = 200, description = "Insights (an empty list before any attempt recorded a variation)", body = Insights),
              (status = 401, description = "No or an unknown token", body = ErrorBody),
              (status = 422, description = "Invalid scene type, window or scope", body = ErrorBody),
              (status = 503, description = "The database is unavailable", body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn show(
    _: Caller<need::Viewer>,
    State(s): State<AppState>,
    Id(scene): Id<SceneType>,
    query: QueryPairs,
) -> Result<Json<Insights>, AppError> {
    let window = query.positive("window")?;
    if window.is_some_and(|w| !ADAPTIVE_WINDOW_RANGE.contains(&w)) {
        return Err(ValidationError::single("window", "must be between 1 and 10000").into());
    }
    let scope = match query.0.iter().rev().find(|(k, _)| k == "scope") {
        Some((_, raw)) => Some(
            SceneType::parse(raw)
                .map_err(|_| {
                    ValidationError::single(
                        "scope",
                        "must be 1 to 128 ASCII letters, digits and - _ . :",
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let found = retake_activities::stats::insights(s.store.as_ref(), &scene, window, scope).await?;
    Ok(Json(found))
}
