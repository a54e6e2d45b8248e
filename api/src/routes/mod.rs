//! The endpoints.

pub(crate) mod budgets;
pub(crate) mod insights;
pub(crate) mod ops;
pub(crate) mod policies;
pub(crate) mod segments;

use crate::AppState;
use crate::error::AppError;
use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route(
            "/scene-types/{id}/retry-policy",
            get(policies::show).put(policies::set),
        )
        .route(
            "/scene-types/{id}/retry-policy/changes",
            get(policies::changes),
        )
        .route("/scene-types/{id}/retry-insights", get(insights::show))
        .route(
            "/projects/{id}/budget",
            get(budgets::show).put(budgets::set),
        )
        .route("/segments/{id}/retry-history", get(segments::history))
        .route("/segments/{id}/retries", post(segments::start))
        .route("/segments/{id}/retries/status", get(segments::status))
        .route("/segments/{id}/retries/abort", post(segments::abort))
        .route("/segments/{id}/retries/escalate", post(segments::escalate))
        .route("/segments/{id}/retries/decision", post(segments::decide))
        .merge(crate::console::router())
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(wrong_method)
}

/// Unknown paths answer the documented error body too, not an empty 404.
async fn no_such_endpoint(uri: Uri) -> AppError {
    AppError::NotFound(format!("no endpoint {}", uri.path()))
}

async fn wrong_method(method: Method) -> AppError {
    AppError::MethodNotAllowed(method.to_string())
}
