//! Creator controls: the `abort`/`escalate` signals and the `decide` update of human review.

use crate::contract::{AttemptRecord, Params};
use crate::error::{Errors, ValidationError};
use crate::event::CreatorEvent;
use crate::policy::{JitterSpec, MAX_ATTEMPTS_RANGE, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Where a retry stands (shown by the `report` query and `retake status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Validating the request and loading the policy.
    #[default]
    Starting,
    /// Making attempts.
    Retrying,
    /// Escalated: waiting for a creator's `decide` (or the end of the review window).
    AwaitingReview,
    /// Done; the result is final.
    Finished,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Retrying => "retrying",
            Phase::AwaitingReview => "awaiting_review",
            Phase::Finished => "finished",
        }
    }
}

/// Human review state of a run, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    /// No review needed.
    #[default]
    None,
    /// Escalated: waiting for (or, after the review window, still needing) a human decision.
    Pending,
    /// A reviewer accepted an attempt.
    Accepted,
    /// A reviewer rejected the segment.
    Rejected,
    /// A reviewer asked for more attempts with new parameters; they are running.
    Retrying,
}

impl Review {
    pub fn as_str(self) -> &'static str {
        match self {
            Review::None => "none",
            Review::Pending => "pending",
            Review::Accepted => "accepted",
            Review::Rejected => "rejected",
            Review::Retrying => "retrying",
        }
    }
}

/// A validated `decide` update.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Retry more with new parameter values and/or wider jitter.
    RetryWith(RetryWith),
    /// Take a recorded attempt as final, whatever its scores.
    Accept { attempt: u32 },
    /// Give up on the segment.
    Reject,
}

/// A reviewer's `retry_with`: another round of attempts with adjusted parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryWith {
    /// Values merged over the current base parameters (e.g. a new `cfg_scale` or `seed`).
    pub params: Map<String, Value>,
    /// Jitter specs merged over the policy's `vary`.
    pub vary: BTreeMap<String, JitterSpec>,
    /// How many more attempts, 1..=10. Default: the policy's `max_attempts`.
    pub attempts: u32,
}

impl RetryWith {
    /// The base parameters and policy of the new round, after `made` attempts: new values over
    /// the current ones, wider jitter over `vary`, `max_attempts` extended by `attempts` beyond
    /// the ones made.
    pub fn apply(&self, params: &Params, policy: &RetryPolicy, made: u32) -> (Params, RetryPolicy) {
        let mut p = params.clone();
        for (k, v) in &self.params {
            p.0.insert(k.clone(), v.clone());
        }
        let mut policy = policy.clone();
        policy.vary.extend(self.vary.clone());
        policy.max_attempts = made + self.attempts;
        (p, policy)
    }
}

/// The `decide` argument: `{"decision": "retry_with" | "accept" | "reject", "by": "...",
/// "reason": "...", "params": {...}, "vary": {...}, "attempts": n, "attempt": k}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecision {
    decision: String,
    by: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    params: Option<Map<String, Value>>,
    #[serde(default)]
    vary: Option<BTreeMap<String, JitterSpec>>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    attempt: Option<u32>,
}

/// Whether parameter `k` is a number the generator expects as one: the policy jitters it, or the
/// attempts so far had it as a number. A word there ("nine" for `cfg_scale`) would reach the
/// generator, be billed and become the next pre-fill.
fn numeric(k: &str, policy: &RetryPolicy, attempts: &[AttemptRecord]) -> bool {
    policy.vary.contains_key(k)
        || attempts
            .iter()
            .any(|a| a.original_params.0.get(k).is_some_and(Value::is_number))
}

impl Decision {
    /// Validate a `decide` argument against the attempts recorded so far. Returns the decision
    /// and the event to record.
    pub fn parse(
        value: &Value,
        policy: &RetryPolicy,
        attempts: &[AttemptRecord],
    ) -> Result<(Self, CreatorEvent), ValidationError> {
        let raw: RawDecision = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ValidationError::single(
                if path == "." { String::new() } else { path },
                e.inner().to_string(),
            )
        })?;
        let mut errs = Errors::default();
        if raw.by.trim().is_empty() {
            errs.push("by", "say who decides");
        }
        let decision = match raw.decision.as_str() {
            "retry_with" => {
                if raw.attempt.is_some() {
                    errs.push("attempt", "only `accept` takes an attempt");
                }
                let params = raw.params.clone().unwrap_or_default();
                if let Some(seed) = params.get("seed")
                    && seed.as_u64().is_none()
                {
                    errs.push("params.seed", "must be a non-negative integer");
                }
                let vary = raw.vary.clone().unwrap_or_default();
                let mut merged = policy.clone();
                merged.vary.extend(vary.clone());
                for (k, v) in &params {
                    if v.is_null() {
                        errs.push(format!("params.{k}"), "must not be null");
                    } else if !v.is_number() && numeric(k, &merged, attempts) {
                        errs.push(format!("params.{k}"), format!("must be a number, got {v}"));
                    }
                }
                if let Err(e) = merged.validate() {
                    for fe in e
                        .errors
                        .into_iter()
                        .filter(|fe| fe.field.starts_with("vary"))
                    {
                        errs.push(fe.field, fe.message);
                    }
                }
                let n = raw.attempts.unwrap_or(policy.max_attempts);
                if !MAX_ATTEMPTS_RANGE.contains(&n) {
                    errs.push("attempts", format!("must be between 1 and 10, got {n}"));
                }
                if params.is_empty() && vary.is_empty() && raw.attempts.is_none() {
                    errs.push(
                        "params",
                        "retry_with needs new params, a wider vary or more attempts",
                    );
                }
                Decision::RetryWith(RetryWith {
                    params,
                    vary,
                    attempts: n,
                })
            }
            "accept" => match raw.attempt {
                Some(k) => match attempts.iter().find(|a| a.attempt == k) {
                    Some(a) if a.acceptable() => Decision::Accept { attempt: k },
                    Some(a) => {
                        errs.push(
                            "attempt",
                            format!(
                                "attempt {k} was {} and has no output to accept",
                                a.status.as_str()
                            ),
                        );
                        Decision::Reject
                    }
                    None => {
                        errs.push("attempt", format!("no generated attempt {k} to accept"));
                        Decision::Reject
                    }
                },
                None => {
                    errs.push("attempt", "accept needs the attempt to accept");
                    Decision::Reject
                }
            },
            "reject" => Decision::Reject,
            other => {
                errs.push(
                    "decision",
                    format!("{other:?} is not one of retry_with, accept, reject"),
                );
                Decision::Reject
            }
        };
        let mut detail = value.clone();
        if let Value::Object(m) = &mut detail {
            for k in ["decision", "by", "reason"] {
                m.remove(k);
            }
        }
        let event = CreatorEvent {
            action: raw.decision,
            by: raw.by.trim().to_owned(),
            reason: raw.reason,
            detail: if detail.as_object().is_some_and(Map::is_empty) {
                Value::Null
            } else {
                detail
            },
        };
        errs.finish((decision, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            enabled: true,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn a_signal_payload_is_read_leniently() {
        let e =
            CreatorEvent::from_signal("abort", &json!({"reason": "wrong prompt", "by": "mina"}));
        assert_eq!((e.by.as_str(), e.reason.as_str()), ("mina", "wrong prompt"));
        let e = CreatorEvent::from_signal("escalate", &json!(42));
        assert_eq!(e.by, "unknown");
    }

    #[test]
    fn retry_with_new_params_and_more_attempts_is_accepted() {
        let v = json!({"decision": "retry_with", "by": "mina", "params": {"cfg_scale": 9.0}, "attempts": 2});
        let (d, e) = Decision::parse(&v, &policy(), &[]).unwrap();
        assert_eq!(
            d,
            Decision::RetryWith(RetryWith {
                params: json!({"cfg_scale": 9.0}).as_object().unwrap().clone(),
                vary: BTreeMap::new(),
                attempts: 2
            })
        );
        assert_eq!(e.action, "retry_with");
        assert_eq!(
            e.detail,
            json!({"params": {"cfg_scale": 9.0}, "attempts": 2})
        );
    }

    #[test]
    fn a_decision_without_who_or_with_an_unknown_kind_is_rejected() {
        let err =
            Decision::parse(&json!({"decision": "maybe", "by": " "}), &policy(), &[]).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["by", "decision"]);
    }

    #[test]
    fn accepting_an_attempt_that_does_not_exist_is_rejected() {
        let err = Decision::parse(
            &json!({"decision": "accept", "by": "x", "attempt": 7}),
            &policy(),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.first_field(), "attempt");
    }

    #[test]
    fn accepting_an_attempt_without_an_output_is_rejected() {
        let p = policy();
        let mut cancelled = crate::select::tests::attempt(3, 0.0, 0.0, &p);
        cancelled.status = crate::contract::AttemptStatus::Cancelled;
        cancelled.output_uri = None;
        let passed = crate::select::tests::attempt(2, 0.9, 0.9, &p);
        let attempts = [passed, cancelled];
        let accept = |k: u32| json!({"decision": "accept", "by": "x", "attempt": k});
        let err = Decision::parse(&accept(3), &p, &attempts).unwrap_err();
        assert_eq!(err.first_field(), "attempt");
        assert_eq!(
            err.errors[0].message,
            "attempt 3 was cancelled and has no output to accept"
        );
        assert!(Decision::parse(&accept(2), &p, &attempts).is_ok());
    }

    #[test]
    fn a_word_where_a_jittered_or_numeric_parameter_goes_is_rejected() {
        let p = policy();
        let mut a = crate::select::tests::attempt(1, 0.4, 0.9, &p);
        a.original_params =
            Params::parse(&json!({"seed": 1, "steps": 30, "sampler": "euler"})).unwrap();
        let attempts = [a];
        let retry = |params: Value| json!({"decision": "retry_with", "by": "x", "params": params});
        // Jittered by the policy (`cfg_scale`), or a number in the run so far (`steps`).
        for (field, params) in [
            ("params.cfg_scale", json!({"cfg_scale": "nine"})),
            ("params.steps", json!({"steps": "30"})),
            ("params.steps", json!({"steps": true})),
        ] {
            let err = Decision::parse(&retry(params.clone()), &p, &attempts).unwrap_err();
            assert_eq!(err.first_field(), field, "{params}");
        }
        // A jitter added by the decision itself counts too.
        let v = json!({"decision": "retry_with", "by": "x", "params": {"eta": "high"},
                       "vary": {"eta": {"range": 0.1}}});
        assert_eq!(
            Decision::parse(&v, &p, &attempts)
                .unwrap_err()
                .first_field(),
            "params.eta"
        );
        // Words stay words; numbers stay numbers.
        let ok = json!({"cfg_scale": 9, "steps": 40, "sampler": "dpm", "prompt": "a cat"});
        assert!(Decision::parse(&retry(ok), &p, &attempts).is_ok());
    }

    #[test]
    fn a_negative_jitter_range_in_retry_with_is_rejected() {
        let v =
            json!({"decision": "retry_with", "by": "x", "vary": {"cfg_scale": {"range": -2.0}}});
        let err = Decision::parse(&v, &policy(), &[]).unwrap_err();
        assert_eq!(err.first_field(), "vary.cfg_scale.range");
    }

    #[test]
    fn retry_with_extends_the_attempts_beyond_those_made() {
        let params = Params::parse(&json!({"seed": 1, "cfg_scale": 7.0})).unwrap();
        let retry = RetryWith {
            params: json!({"cfg_scale": 9.0}).as_object().unwrap().clone(),
            vary: BTreeMap::from([(
                "cfg_scale".to_owned(),
                JitterSpec {
                    range: 2.0,
                    min: None,
                    max: None,
                },
            )]),
            attempts: 2,
        };
        let (p, pol) = retry.apply(&params, &policy(), 3);
        assert_eq!(p.number("cfg_scale"), Some(9.0));
        assert_eq!(pol.max_attempts, 5);
        assert_eq!(pol.vary["cfg_scale"].range, 2.0);
        assert!(pol.vary.contains_key("denoise_strength"));
    }
}
