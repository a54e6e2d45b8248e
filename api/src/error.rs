//! One error type for every handler and extractor, mapped to a status code and one documented
//! JSON body ([`ErrorBody`]) that never carries internals. Nothing else answers an error: axum's
//! own plain-text rejections are mapped in `extract`, unknown routes in `lib`.

use crate::auth::Role;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use retake_domain::{FieldError, ValidationError};
use serde::Serialize;

/// Seconds a client should wait before retrying after a 503 (also the `Retry-After` header).
pub const RETRY_AFTER_SECS: u64 = 5;

/// A dependency the API needs to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dependency {
    /// The SQL store (policies, budgets, recorded attempts).
    Database,
    /// The Temporal frontend (starting and steering retries).
    Temporal,
}

impl Dependency {
    fn words(self) -> &'static str {
        match self {
            Dependency::Database => "the database",
            Dependency::Temporal => "Temporal",
        }
    }
}

/// Every error response's body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in words (never internals such as SQL or stack traces).
    pub error: String,
    /// 422 for invalid input: every offending field (a dotted path such as
    /// `policy.vary.cfg_scale.range`, or `body`, `page`, `segment_id`) and what is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
    /// 503: seconds to wait before trying again (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// 503: which dependencies are down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Vec<Dependency>>,
}

/// What went wrong, as the caller may see it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No or an unknown bearer token: 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token's role is too low: 403. Checked before the body is read.
    #[error("this needs the {} role", .0.as_str())]
    Forbidden(Role),
    /// Unknown segment, scene type, project or endpoint: 404.
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not for this method: 405.
    #[error("this endpoint does not take {0}")]
    MethodNotAllowed(String),
    /// The retry has already finished, so it cannot be steered or decided any more: 409.
    #[error("{0}")]
    Finished(String),
    /// The body did not arrive within [`crate::ServeOptions::body_timeout`]: 408, and the
    /// connection closes.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The body is over [`crate::BODY_LIMIT`] (declared or sent): 413.
    #[error("the request body is larger than {} bytes", crate::BODY_LIMIT)]
    TooLarge,
    /// A body that is not declared as JSON: 415.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// Invalid input (body, path or query), with every offending field: 422.
    #[error("{0}")]
    Invalid(ValidationError),
    /// A well-formed request the workflow refused (e.g. a decision outside review): 422.
    #[error("{0}")]
    Rejected(String),
    /// A dependency cannot be reached: 503 with a retry hint.
    #[error("{} unavailable", join(.0))]
    Unavailable(Vec<Dependency>),
    /// Anything else: 500; the details go to the log only.
    #[error("internal error")]
    Internal(String),
}

fn join(down: &[Dependency]) -> String {
    let words: Vec<&str> = down.iter().map(|d| d.words()).collect();
    match words.as_slice() {
        [one] => format!("{one} is"),
        _ => format!("{} are", words.join(" and ")),
    }
}

impl AppError {
    pub(crate) fn unavailable(what: Dependency) -> Self {
        AppError::Unavailable(vec![what])
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Finished(_) => StatusCode::CONFLICT,
            AppError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Invalid(_) | AppError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
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
                AppError::unavailable(Dependency::Database)
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<retake_client::Error> for AppError {
    fn from(e: retake_client::Error) -> Self {
        use retake_client::Error as E;
        match e {
            E::Invalid(v) => AppError::Invalid(v),
            E::NotFound(id) => AppError::NotFound(format!("there is no retry workflow {id}")),
            E::AlreadyFinished(id) => {
                AppError::Finished(format!("the retry workflow {id} has already finished"))
            }
            E::Rejected(m) => AppError::Rejected(m),
            E::Unavailable(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "Temporal call failed");
                AppError::unavailable(Dependency::Temporal)
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = ErrorBody {
            error: self.to_string(),
            fields: None,
            retry_after_secs: None,
            unavailable: None,
        };
        match &self {
            AppError::Invalid(e) => {
                body.error = "invalid input".to_owned();
                body.fields = Some(e.errors.clone());
            }
            AppError::Unavailable(down) => {
                body.error = format!("{self}; retry later");
                body.retry_after_secs = Some(RETRY_AFTER_SECS);
                body.unavailable = Some(down.clone());
            }
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            _ => {}
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            AppError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AppError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dependencies_down_are_named_in_one_sentence() {
        let e = AppError::Unavailable(vec![Dependency::Database, Dependency::Temporal]);
        assert_eq!(e.to_string(), "the database and Temporal are unavailable");
    }
}
