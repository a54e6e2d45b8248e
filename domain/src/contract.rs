//! The workflow contract: its JSON argument and result. Pipelines and other languages' clients
//! depend on these shapes; fields may be added, never renamed or removed.

use crate::adapt::Variation;
use crate::error::{Errors, ValidationError};
use crate::event::CreatorEvent;
use crate::ids::{ProjectId, SceneType, SegmentId};
use crate::null_as_default;
pub use crate::params::{MAX_PARAMS_DEPTH, ParamChange, Params};
use crate::scores::CategoryScore;
pub use crate::scores::{FailedQa, QaScores, Scores, validate_scores};
use crate::scores::{check_breakdown, check_scores};
use crate::strategy::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The validated workflow argument.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryRequest {
    pub segment_id: SegmentId,
    pub project_id: ProjectId,
    pub scene_type: SceneType,
    pub params: Params,
    pub failed_qa: FailedQa,
    /// Policy override, merged over the scene type's stored policy (see `RetryPolicy::resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::policy::PolicyInput>))]
    pub policy: Option<Value>,
}

impl RetryRequest {
    /// Validate the JSON argument, reporting every invalid field.
    pub fn parse(value: &Value) -> Result<Self, ValidationError> {
        let Value::Object(obj) = value else {
            return Err(ValidationError::single(
                "",
                "the workflow argument must be a JSON object",
            ));
        };
        let mut errs = Errors::default();
        let id = |errs: &mut Errors, field: &str| -> Option<String> {
            match obj.get(field) {
                Some(Value::String(s)) => Some(s.clone()),
                // Numbers are accepted as ids ("segment_id": 5) for convenience.
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    errs.push(field, format!("must be a string, got {other}"));
                    None
                }
                None => {
                    errs.push(field, "is required");
                    None
                }
            }
        };
        let segment =
            id(&mut errs, "segment_id").and_then(|s| keep(&mut errs, SegmentId::parse(s)));
        let project =
            id(&mut errs, "project_id").and_then(|s| keep(&mut errs, ProjectId::parse(s)));
        let scene = id(&mut errs, "scene_type").and_then(|s| keep(&mut errs, SceneType::parse(s)));
        let params = match obj.get("params") {
            Some(v) => keep(&mut errs, Params::parse(v)),
            None => {
                errs.push("params", "is required");
                None
            }
        };
        let failed_qa = parse_failed_qa(obj.get("failed_qa"), &mut errs);
        let policy = match obj.get("policy") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                errs.push("policy", format!("must be a JSON object, got {other}"));
                None
            }
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "segment_id" | "project_id" | "scene_type" | "params" | "failed_qa" | "policy"
            ) {
                errs.push(key.as_str(), "unknown field");
            }
        }
        match (segment, project, scene, params, failed_qa) {
            (
                Some(segment_id),
                Some(project_id),
                Some(scene_type),
                Some(params),
                Some(failed_qa),
            ) => errs.finish(Self {
                segment_id,
                project_id,
                scene_type,
                params,
                failed_qa,
                policy,
            }),
            _ => Err(errs
                .finish(())
                .expect_err("a missing part always records an error")),
        }
    }
}

fn keep<T>(errs: &mut Errors, r: Result<T, ValidationError>) -> Option<T> {
    r.map_err(|e| errs.extend(e)).ok()
}

fn parse_failed_qa(value: Option<&Value>, errs: &mut Errors) -> Option<FailedQa> {
    let value = value.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    let qa: FailedQa = match serde_path_to_error::deserialize(&value) {
        Ok(qa) => qa,
        Err(e) => {
            errs.push(format!("failed_qa.{}", e.path()), e.inner().to_string());
            return None;
        }
    };
    let before = errs.len();
    check_scores("failed_qa.scores", &qa.scores, errs);
    check_breakdown("failed_qa.breakdown", &qa.breakdown, errs);
    (errs.len() == before).then_some(qa)
}

/// `error_type` of an attempt the budget stopped: it needed more GPU time than was reserved and
/// the project's limit refused more, so it was cancelled (and billed what it used).
pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";

/// The largest retry request, as JSON: the API's body limit and the workflow's argument limit.
/// The request's parameters are copied into every attempt (`params`, `original_params`) and the
/// result carries every attempt, so an unbounded request builds a result beyond Temporal's 2 MiB
/// payload limit, which the server refuses, and the workflow task then retries forever.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The most of an error's text an attempt records (characters); longer texts are cut with a
/// note of how much was left out. A backend's error page can be megabytes.
pub const MAX_ERROR_CHARS: usize = 4 * 1024;

/// `text`, or its first [`MAX_ERROR_CHARS`] characters and how many more there were.
pub fn bounded_error(text: String) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        None => text,
        Some((cut, _)) => {
            let more = text[cut..].chars().count();
            format!("{}… ({more} more characters)", &text[..cut])
        }
    }
}

/// Failure type (`error_type`) of a generation that failed because of the machine, not the
/// request: CUDA out of memory, a lost device, NaN or empty output. Re-run on another worker
/// (policy `placement`).
pub const INFRASTRUCTURE_FAILURE: &str = "InfrastructureFailure";

/// Failure type (`error_type`) of a request the backend refused (a validation error, a
/// parameter out of range): not retried as it is; see [`crate::stop::Stop::Rejected`].
pub const BACKEND_REJECTED: &str = "BackendRejected";

/// How a retry workflow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An attempt passed QA and was selected.
    Passed,
    /// Every attempt failed: flagged for human review with all attempts attached.
    Escalated,
    /// A creator aborted the retry.
    Aborted,
    /// The project budget refused the next attempt before any attempt passed.
    BudgetExhausted,
    /// The policy is disabled or none of the failures is one it retries on.
    NotRetried,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Escalated => "escalated",
            Outcome::Aborted => "aborted",
            Outcome::BudgetExhausted => "budget_exhausted",
            Outcome::NotRetried => "not_retried",
        }
    }
}

/// Status of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Generated and scored; passed every threshold.
    Passed,
    /// Generated and scored; failed at least one threshold.
    Failed,
    /// Generation or scoring failed for good (after Temporal's retries); see `error`.
    Error,
    /// A creator aborted while the attempt ran; it was cancelled and its reservation released.
    Aborted,
    /// Cancelled while it ran because it was no longer needed: another attempt running beside it
    /// passed first (`first_pass`), or a creator escalated; billed the GPU time it used. See
    /// `error` for why.
    Cancelled,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Passed => "passed",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Error => "error",
            AttemptStatus::Aborted => "aborted",
            AttemptStatus::Cancelled => "cancelled",
        }
    }
}

/// One attempt, exactly as recorded in `retry_attempts` and returned in the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    /// 1-based attempt number.
    pub attempt: u32,
    pub seed: u64,
    /// Parameters the attempt generated with (seed replaced, jitter applied).
    pub params: Params,
    /// Parameters of the failed generation, as the request gave them.
    pub original_params: Params,
    /// Every jittered parameter: original and new value.
    #[serde(default, deserialize_with = "null_as_default")]
    pub jitter: Vec<ParamChange>,
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, f64>))]
    pub scores: Scores,
    pub passed: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub failures: Vec<String>,
    pub gpu_ms: u64,
    pub status: AttemptStatus,
    /// Where the backend put the output (a reference, never the bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_uri: Option<String>,
    /// What failed, for status `error`: the stage and the root message the backend (or
    /// Temporal, for a timeout) gave, e.g. `generation failed: Prompt outputs failed validation…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The kind of that failure: the activity's failure type (`BackendRejected`,
    /// `BackendTransient`, `BudgetExhausted`, …), `Timeout` or `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Why the attempt did not do exactly what its strategy says, e.g. a partial rewrite that had
    /// no category breakdown to target and used the revise prompt instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The ladder's strategy for this attempt (the workflow always records it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The prompt sent to the generator (text strategies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Which draft the attempt revised: 0 for the failed generation the retry started from, else
    /// an earlier attempt (text strategies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revises: Option<u32>,
    /// The scorer's breakdown by category, with feedback.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub breakdown: Vec<CategoryScore>,
    /// What the attempt varied and why, as insights count it (the workflow always records it;
    /// absent in a record written without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<Variation>,
    /// The worker that generated it (`retake worker --worker-id`, by default `<pid>@<host>`), as
    /// the worker itself or Temporal reported it; absent for attempts that never reached a
    /// worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

impl AttemptRecord {
    /// Whether a creator may accept it as the segment's result: only an attempt with an output
    /// (a cancelled or failed-to-generate one has none, and accepting it would finish the
    /// segment "passed" with nothing to use). The one rule the workflow and the console share.
    pub fn acceptable(&self) -> bool {
        self.output_uri.as_deref().is_some_and(|u| !u.is_empty())
    }
}

/// The workflow result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryResult {
    pub segment_id: SegmentId,
    pub project_id: ProjectId,
    pub scene_type: SceneType,
    pub outcome: Outcome,
    /// Why the workflow ended the way it did, in words (e.g. why it was not retried).
    pub reason: String,
    pub selected_attempt: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub attempts: Vec<AttemptRecord>,
    pub gpu_ms_total: u64,
    /// `Segment 5: failed attempt 1 (face 0.42), passed attempt 3 (face 0.87)`.
    pub report: String,
    /// Creator signals and review decisions, in order, with who made them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub decisions: Vec<CreatorEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_error_is_cut_saying_how_much_was_left_out() {
        let short = "CUDA out of memory".to_owned();
        assert_eq!(bounded_error(short.clone()), short);
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let cut = bounded_error(long);
        assert!(
            cut.ends_with("… (10 more characters)"),
            "{}",
            &cut[cut.len() - 40..]
        );
        assert_eq!(cut.chars().filter(|c| *c == 'é').count(), MAX_ERROR_CHARS);
    }
    use serde_json::json;

    #[test]
    fn a_result_with_null_lists_from_a_go_client_is_read_as_empty() {
        let r: RetryResult = serde_json::from_value(json!({
            "segment_id": "5", "project_id": "p", "scene_type": "s", "outcome": "not_retried",
            "reason": "r", "selected_attempt": null, "attempts": null, "gpu_ms_total": 0,
            "report": "x", "decisions": null
        }))
        .unwrap();
        assert!(r.attempts.is_empty() && r.decisions.is_empty());
    }

    #[test]
    fn a_request_reports_every_missing_field() {
        let err = RetryRequest::parse(&json!({"segment_id": "5"})).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["project_id", "scene_type", "params"]);
    }

    #[test]
    fn a_numeric_segment_id_is_accepted_as_text() {
        let r = RetryRequest::parse(&json!({
            "segment_id": 5, "project_id": "p1", "scene_type": "dialogue",
            "params": {"seed": 1}, "failed_qa": {"failures": ["face_melt"]}
        }))
        .unwrap();
        assert_eq!(r.segment_id.as_str(), "5");
    }

    #[test]
    fn params_nested_deeper_than_the_limit_are_rejected_naming_the_entry() {
        let mut deep = json!(1);
        for _ in 0..MAX_PARAMS_DEPTH {
            deep = json!({"x": deep});
        }
        let err = Params::parse(&json!({"seed": 1, "lora": deep})).unwrap_err();
        assert_eq!(err.first_field(), "params.lora");
        let ok = Params::parse(&json!({"seed": 1, "lora": {"a": [1, {"b": 2}]}}));
        assert!(ok.is_ok());
    }

    #[test]
    fn unknown_top_level_fields_are_rejected() {
        let err = RetryRequest::parse(&json!({
            "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
            "params": {"seed": 1}, "failed_qa": {}, "polcy": {}
        }))
        .unwrap_err();
        assert_eq!(err.first_field(), "polcy");
    }
}
