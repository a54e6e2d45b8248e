//! One error type for every handler, mapped to a status code and a JSON body that never carries
//! internals.

use crate::auth::Role;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use retake_domain::ValidationError;
use serde_json::json;

/// What went wrong, as the caller may see it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No or an unknown bearer token: 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token's role is too low: 403.
    #[error("this needs the {} role", .0.as_str())]
    Forbidden(Role),
    /// Unknown segment, scene type or project: 404.
    #[error("{0}")]
    NotFound(String),
    /// Invalid input, with every offending field: 422.
    #[error("{0}")]
    Invalid(ValidationError),
    /// The body is over [`crate::BODY_LIMIT`]: 413.
    #[error("the request body is larger than {} bytes", crate::BODY_LIMIT)]
    TooLarge,
    /// A well-formed request the workflow refused (e.g. a decision outside review): 422.
    #[error("{0}")]
    Rejected(String),
    /// Temporal or the database cannot be reached: 503 with a retry hint.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    /// Anything else: 500; the details go to the log only.
    #[error("internal error")]
    Internal(String),
}

impl From<ValidationError> for AppError {
    fn from(e: ValidationError) -> Self {
        AppError::Invalid(e)
    }
}

impl From<retake_activities::ports::StoreError> for AppError {
    fn from(e: retake_activities::ports::StoreError) -> Self {
        use retake_activities::ports::StoreError;
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                AppError::Unavailable("the database")
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            AppError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, json!({"error": self.to_string()}))
            }
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, json!({"error": self.to_string()})),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            AppError::Invalid(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid input", "fields": e.errors}),
            ),
            AppError::Rejected(m) => (StatusCode::UNPROCESSABLE_ENTITY, json!({"error": m})),
            AppError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": self.to_string()}),
            ),
            AppError::Unavailable(what) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("{what} is unavailable; retry later"), "retry_after_secs": 5}),
            ),
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error"}),
                )
            }
        };
        let mut response = (status, axum::Json(body)).into_response();
        match self {
            AppError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
