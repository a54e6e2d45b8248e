//! What creators did to a retry (signals and review decisions), as the result and the store
//! record it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a creator did, as recorded in the result and the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatorEvent {
    /// `abort`, `escalate`, `retry_with`, `accept` or `reject`.
    pub action: String,
    pub by: String,
    #[serde(default)]
    pub reason: String,
    /// The decision's details (new params, attempt accepted, ...).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub detail: Value,
}

impl CreatorEvent {
    /// From a signal's `{"reason": "...", "by": "..."}`. Signals cannot be rejected, so anything
    /// else is taken as leniently as possible (a bare string is the reason).
    pub fn from_signal(action: &str, payload: &Value) -> Self {
        let text = |key: &str| {
            payload
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_owned()
        };
        let (reason, by) = match payload {
            Value::String(s) => (s.clone(), String::new()),
            _ => (text("reason"), text("by")),
        };
        Self {
            action: action.to_owned(),
            by: if by.is_empty() {
                "unknown".to_owned()
            } else {
                by
            },
            reason,
            detail: Value::Null,
        }
    }
}
