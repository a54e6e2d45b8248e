//! The endpoints.

pub(crate) mod budgets;
pub(crate) mod ops;
pub(crate) mod policies;
pub(crate) mod segments;

use crate::AppState;
use crate::error::AppError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use retake_domain::ValidationError;
use serde_json::Value;

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
            "/projects/{id}/budget",
            get(budgets::show).put(budgets::set),
        )
        .route("/segments/{id}/retry-history", get(segments::history))
        .route("/segments/{id}/retries", post(segments::start))
        .route("/segments/{id}/retries/status", get(segments::status))
        .route("/segments/{id}/retries/abort", post(segments::abort))
        .route("/segments/{id}/retries/escalate", post(segments::escalate))
        .route("/segments/{id}/retries/decision", post(segments::decide))
}

/// A JSON request body, any shape; malformed JSON is a 422 naming the body.
pub(crate) struct JsonBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                AppError::TooLarge
            } else {
                AppError::Invalid(ValidationError::single("body", e.body_text()))
            }
        })?;
        if bytes.is_empty() {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            AppError::Invalid(ValidationError::single(
                "body",
                format!("not valid JSON: {e}"),
            ))
        })
    }
}
