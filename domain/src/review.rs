//! Creator controls: the `abort`/`escalate` signals and the `decide` update of human review.

use crate::contract::{AttemptRecord, Params, RetryResult};
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

/// The most attempts one run may make over all its rounds: `retry_with` may extend a run up to
/// here and no further (three rounds of the largest `max_attempts`).
pub const MAX_RUN_ATTEMPTS: u32 = 30;

/// The largest workflow result a run may grow towards, in bytes of JSON: half of Temporal's 2 MiB
/// payload limit, which also bounds the `record_outcome` step's input and the `report` query's
/// answer (the result plus a phase). A result the server refuses (`TMPRL1103`) fails the workflow
/// task at completion, which is then retried forever.
pub const RESULT_BUDGET_BYTES: usize = 1024 * 1024;
const _: () = assert!(RESULT_BUDGET_BYTES * 2 <= 2 * 1024 * 1024);

/// Allowance per attempt, on top of the largest attempt so far and the new parameters, for what
/// a new attempt may carry that an earlier one did not (an error cut at 4,096 characters, a note,
/// a longer prompt).
const ATTEMPT_SLACK_BYTES: usize = 16 * 1024;

/// Whether a run whose result so far is `result` has room for another round as `retry` asks
/// (recorded as `event`): the attempts it may make stay within [`MAX_RUN_ATTEMPTS`], and the
/// result, grown by the decision and by each new attempt as large as the largest so far with the
/// new parameters added, stays within [`RESULT_BUDGET_BYTES`]. The reason, when not, says what the
/// reviewer can do instead. Asked when a decision arrives, so a run that would outgrow what
/// Temporal accepts is told so while a reviewer can still accept or reject.
pub fn room_for_round(
    result: &RetryResult,
    retry: &RetryWith,
    event: &CreatorEvent,
) -> Result<(), String> {
    let made = crate::plan::made(&result.attempts);
    let instead = "accept an attempt, reject, or start a new retry of the segment";
    if made.saturating_add(retry.attempts) > MAX_RUN_ATTEMPTS {
        return Err(format!(
            "this run has made {made} attempts and may make at most {MAX_RUN_ATTEMPTS}: {} more would pass that; {instead}",
            retry.attempts
        ));
    }
    let largest = result.attempts.iter().map(json_len).max().unwrap_or(0);
    let per_attempt = largest + json_len(&retry.params) + ATTEMPT_SLACK_BYTES;
    let now = json_len(result);
    let projected = now
        .saturating_add(json_len(event))
        .saturating_add(per_attempt.saturating_mul(retry.attempts as usize));
    if projected > RESULT_BUDGET_BYTES {
        return Err(format!(
            "this run's result is {} KiB and {} more attempts could take it to {} KiB, past the {} KiB a run may keep (Temporal refuses results over 2 MiB); {instead}",
            now / 1024,
            retry.attempts,
            projected / 1024,
            RESULT_BUDGET_BYTES / 1024
        ));
    }
    Ok(())
}

/// The length of a value's JSON, for [`room_for_round`].
fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX, |v| v.len())
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

    /// A run's result with `n` attempts whose parameters carry `notes_bytes` of text.
    fn result_with(n: u32, notes_bytes: usize) -> RetryResult {
        let p = policy();
        let attempts = (1..=n)
            .map(|k| {
                let mut a = crate::select::tests::attempt(k, 0.4, 0.4, &p);
                a.params
                    .0
                    .insert("notes".into(), json!("n".repeat(notes_bytes)));
                a.original_params = a.params.clone();
                a
            })
            .collect();
        serde_json::from_value(json!({
            "segment_id": "5", "project_id": "p", "scene_type": "s", "outcome": "escalated",
            "reason": "r", "selected_attempt": null, "attempts": [], "gpu_ms_total": 0,
            "report": "x", "decisions": []
        }))
        .map(|r: RetryResult| RetryResult { attempts, ..r })
        .unwrap()
    }

    fn retry(attempts: u32, notes_bytes: usize) -> (RetryWith, CreatorEvent) {
        let v = json!({"decision": "retry_with", "by": "mina", "attempts": attempts,
                       "params": {"notes": "m".repeat(notes_bytes)}});
        match Decision::parse(&v, &policy(), &[]).unwrap() {
            (Decision::RetryWith(r), e) => (r, e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_round_is_allowed_while_the_run_stays_small() {
        let (r, e) = retry(10, 100);
        assert_eq!(room_for_round(&result_with(20, 100), &r, &e), Ok(()));
    }

    #[test]
    fn a_retry_with_past_the_run_attempt_cap_is_refused_saying_what_to_do_instead() {
        let (r, e) = retry(4, 10);
        let err = room_for_round(&result_with(27, 10), &r, &e).unwrap_err();
        assert!(
            err.contains("has made 27 attempts and may make at most 30"),
            "{err}"
        );
        assert!(err.contains("accept an attempt, reject"), "{err}");
        let (r, e) = retry(3, 10);
        assert_eq!(room_for_round(&result_with(27, 10), &r, &e), Ok(()));
    }

    #[test]
    fn a_retry_with_that_could_outgrow_the_result_budget_is_refused() {
        // 60 KiB of notes per attempt, in params and original params: about 120 KiB an attempt.
        let big = 60 * 1024;
        let (r, e) = retry(1, big);
        assert_eq!(room_for_round(&result_with(2, big), &r, &e), Ok(()));
        let err = room_for_round(&result_with(7, big), &r, &e).unwrap_err();
        assert!(err.contains("past the 1024 KiB a run may keep"), "{err}");
        assert!(err.contains("Temporal refuses results over 2 MiB"), "{err}");
        // Asking for many attempts at once is measured as that many attempts.
        let (r, e) = retry(10, big);
        assert!(room_for_round(&result_with(1, big), &r, &e).is_err());
    }

    #[test]
    fn every_round_the_budget_admits_keeps_the_result_under_temporals_limit() {
        // Grow a run round by round, each new attempt as large as allowed, until refused: the
        // result never passed the budget, and the budget is half of Temporal's 2 MiB.
        let big = 50 * 1024;
        let mut result = result_with(1, big);
        let (r, e) = retry(1, big);
        let mut rounds = 0;
        while room_for_round(&result, &r, &e).is_ok() {
            let next = result.attempts.len() as u32 + 1;
            result
                .attempts
                .extend(result_with(next, big).attempts.pop());
            result.decisions.push(e.clone());
            rounds += 1;
            assert!(rounds < 100, "never refused");
        }
        let len = serde_json::to_vec(&result).unwrap().len();
        assert!(len <= RESULT_BUDGET_BYTES, "{len}");
    }
}
