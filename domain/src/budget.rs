//! A project's GPU budget limit, as a caller sets it. The ledger itself lives in the store; this
//! is the one value a person types in, so it is checked here, where every edge can share it.

use crate::error::{Errors, ValidationError};
use serde::Serialize;
use serde_json::Value;

/// Largest limit the store can keep: it holds GPU milliseconds as signed 64-bit integers
/// (`2^63 - 1`, about 292 million years).
pub const MAX_LIMIT_MS: u64 = i64::MAX as u64;

/// The body that sets a project's limit: `{"limit_ms": 3600000}`, or `{"limit_ms": null}` for no
/// limit (GPU time is still tracked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BudgetLimit {
    /// GPU milliseconds the project may reserve and spend, `0..=2^63 - 1`; `null` removes the
    /// limit. Required: leaving it out is more likely a typo than a wish to remove the limit.
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 0))]
    pub limit_ms: Option<u64>,
}

impl BudgetLimit {
    /// Validate the JSON body. Errors name `limit_ms` (or the unknown field) and say why.
    pub fn parse(value: &Value) -> Result<Self, ValidationError> {
        let Value::Object(obj) = value else {
            return Err(ValidationError::single(
                "",
                "the budget must be a JSON object like {\"limit_ms\": 3600000}",
            ));
        };
        let mut errs = Errors::default();
        for key in obj.keys().filter(|k| k.as_str() != "limit_ms") {
            errs.push(key.as_str(), "unknown field (the only field is limit_ms)");
        }
        let limit_ms = match obj.get("limit_ms") {
            None => {
                errs.push(
                    "limit_ms",
                    "is required (a number of GPU milliseconds, or null for no limit)",
                );
                None
            }
            Some(Value::Null) => None,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(ms), _) if ms <= MAX_LIMIT_MS => Some(ms),
                // serde_json reads integers from 2^64 on as floats.
                (Some(_), _) | (None, Some(_)) if n.as_f64() >= Some(MAX_LIMIT_MS as f64) => {
                    errs.push(
                        "limit_ms",
                        format!(
                            "must be below 2^63 ({MAX_LIMIT_MS} at most: the store keeps GPU \
                             milliseconds as signed 64-bit integers), got {n}"
                        ),
                    );
                    None
                }
                _ => {
                    errs.push(
                        "limit_ms",
                        format!("must be a non-negative integer or null, got {n}"),
                    );
                    None
                }
            },
            Some(other) => {
                errs.push(
                    "limit_ms",
                    format!("must be a non-negative integer or null, got {other}"),
                );
                None
            }
        };
        errs.finish(Self { limit_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_limit_and_no_limit_are_accepted() {
        assert_eq!(
            BudgetLimit::parse(&json!({"limit_ms": 3_600_000})).unwrap(),
            BudgetLimit {
                limit_ms: Some(3_600_000)
            }
        );
        assert_eq!(
            BudgetLimit::parse(&json!({"limit_ms": null})).unwrap(),
            BudgetLimit { limit_ms: None }
        );
        assert_eq!(
            BudgetLimit::parse(&json!({"limit_ms": MAX_LIMIT_MS}))
                .unwrap()
                .limit_ms,
            Some(MAX_LIMIT_MS)
        );
    }

    #[test]
    fn a_limit_the_store_cannot_hold_is_rejected_saying_why() {
        let huge: Value = serde_json::from_str(r#"{"limit_ms": 18446744073709551616}"#).unwrap();
        for body in [
            json!({"limit_ms": 9_223_372_036_854_775_808_u64}),
            json!({"limit_ms": u64::MAX}),
            huge,
        ] {
            let err = BudgetLimit::parse(&body).unwrap_err();
            assert_eq!(err.first_field(), "limit_ms");
            assert!(err.to_string().contains("below 2^63"), "{err}");
        }
    }

    #[test]
    fn a_negative_fractional_or_textual_limit_is_rejected() {
        for bad in [json!(-4), json!(1.5), json!("100"), json!(-1e30)] {
            let err = BudgetLimit::parse(&json!({ "limit_ms": bad })).unwrap_err();
            assert_eq!(err.first_field(), "limit_ms");
            assert!(err.to_string().contains("non-negative integer"), "{err}");
        }
    }

    #[test]
    fn a_missing_limit_and_an_unknown_field_are_both_named() {
        let err = BudgetLimit::parse(&json!({"limitms": 5})).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["limitms", "limit_ms"]);
    }
}
