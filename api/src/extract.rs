//! Extractors whose every rejection is an [`AppError`], so no plain-text axum rejection reaches a
//! client: the JSON body, typed ids from the path, and the query string.

use crate::error::AppError;
use crate::json::JsonError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use retake_domain::{ProjectId, SceneType, SegmentId, ValidationError};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A JSON request body, any shape. An empty body is `{}` (so `POST .../abort` needs none); a
/// non-empty one must be declared JSON (415) and parse (422 naming `body`) with no key twice in
/// one object (422 naming the key's path, see [`crate::json`]).
pub(crate) struct JsonBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let declared_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        if !declared_json {
            return Err(AppError::UnsupportedMediaType);
        }
        match crate::json::parse_unique(&bytes) {
            Ok(value) => Ok(JsonBody(value)),
            Err(JsonError::DuplicateKey { path }) => {
                Err(ValidationError::single(path, crate::json::DUPLICATE).into())
            }
            Err(e @ JsonError::Syntax(_)) => {
                Err(ValidationError::single("body", e.to_string()).into())
            }
        }
    }
}

/// When the request's body must have arrived, stamped on each request by [`crate::serve_with`]
/// as its headers arrive ([`crate::ServeOptions::body_timeout`] later). Without it (a router
/// driven in-process) bodies are awaited as long as they take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyDeadline(pub(crate) tokio::time::Instant);

/// The whole body of `req`, up to [`crate::BODY_LIMIT`], or why not. Every handler that reads a
/// body reads it here, after its role check, so that:
/// - a declared `Content-Length` over the limit is 413 before a byte is read (awaiting a body of
///   10^12 bytes, even only to count them, would hold the connection for as long as the client
///   likes);
/// - a body still incomplete at its [`BodyDeadline`] is 408 (a client sending half a body would
///   otherwise hold the connection and its task forever);
/// - a body that turns out longer than the limit is 413.
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > crate::BODY_LIMIT as u64) {
        return Err(AppError::TooLarge);
    }
    let deadline = req.extensions().get::<BodyDeadline>().copied();
    let read = Bytes::from_request(req, state);
    let read = match deadline {
        Some(BodyDeadline(at)) => tokio::time::timeout_at(at, read)
            .await
            .map_err(|_| AppError::BodyTimeout)?,
        None => read.await,
    };
    read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge
        } else {
            AppError::Invalid(ValidationError::single("body", e.body_text()))
        }
    })
}

/// `application/json`, with or without parameters, or any `application/*+json`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Read a JSON value into `T`, naming the offending field (`reason`, `vary.cfg_scale.range`).
pub(crate) fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ValidationError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ValidationError::single(field, e.inner().to_string())
    })
}

/// An id type that can be taken from the path.
pub(crate) trait PathId: Sized {
    /// The field its errors name.
    const FIELD: &'static str;
    fn parse(raw: &str) -> Result<Self, ValidationError>;
}

macro_rules! path_id {
    ($ty:ty, $field:literal) => {
        impl PathId for $ty {
            const FIELD: &'static str = $field;
            fn parse(raw: &str) -> Result<Self, ValidationError> {
                <$ty>::parse(raw)
            }
        }
    };
}

path_id!(SegmentId, "segment_id");
path_id!(SceneType, "scene_type");
path_id!(ProjectId, "project_id");

/// The `{id}` of the path, validated as `T`: 422 naming the id's field when it does not decode
/// (`%FF`) or is not a valid id.
pub(crate) struct Id<T>(pub(crate) T);

impl<S: Send + Sync, T: PathId> FromRequestParts<S> for Id<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ValidationError::single(
                    T::FIELD,
                    "is not valid UTF-8 once percent-decoded; ids are ASCII letters, digits and - _ . :",
                )
            })?;
        T::parse(&raw).map(Id).map_err(AppError::Invalid)
    }
}

/// The query string as name/value pairs, percent-decoded (invalid UTF-8 replaced, so this never
/// fails); handlers validate the values they read and name them in errors.
pub(crate) struct QueryPairs(pub(crate) Vec<(String, String)>);

impl QueryPairs {
    /// The last value of `name` parsed as a positive integer, or `None` when absent.
    pub(crate) fn positive(&self, name: &str) -> Result<Option<u32>, ValidationError> {
        let Some((_, raw)) = self.0.iter().rev().find(|(k, _)| k == name) else {
            return Ok(None);
        };
        match raw.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ValidationError::single(
                name,
                format!("must be a whole number from 1 up, got {raw:?}"),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        Ok(QueryPairs(
            raw.as_deref().map(form_pairs).unwrap_or_default(),
        ))
    }
}

/// `a=1&b=x+y` (a query string or an `application/x-www-form-urlencoded` body) as decoded
/// name/value pairs, in order; never fails.
pub(crate) fn form_pairs(encoded: &str) -> Vec<(String, String)> {
    encoded
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte; invalid UTF-8 and stray `%` are kept lossily.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn query_values_are_decoded_and_bad_numbers_named() {
        assert_eq!(decode("a+b%21"), "a b!");
        assert_eq!(decode("%FF"), "\u{FFFD}");
        assert_eq!(decode("100%"), "100%");
        let q = QueryPairs(vec![("page".into(), "-1".into())]);
        assert_eq!(q.positive("page").unwrap_err().first_field(), "page");
        let q = QueryPairs(vec![("page".into(), "0".into())]);
        assert!(q.positive("page").is_err());
        let q = QueryPairs(vec![("page".into(), "3".into())]);
        assert_eq!(q.positive("page").unwrap(), Some(3));
        assert_eq!(q.positive("per_page").unwrap(), None);
    }
}
