//! Quality scores as scorers report them and requests carry them (the functions over them are in
//! [`crate::quality`]).

use crate::error::{Errors, ValidationError};
use crate::null_as_default;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// QA scores by metric, each within 0..=1.
pub type Scores = BTreeMap<String, f64>;

/// One category of a scorer's breakdown, e.g. `character_consistency` 0.58 "the mentor's voice
/// changes between scenes".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CategoryScore {
    pub category: String,
    /// 0..=1.
    pub score: f64,
    #[serde(default)]
    pub feedback: String,
}

/// QA result of the generation that failed: scores by metric and the failure kinds found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailedQa {
    #[serde(default, deserialize_with = "null_as_default")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, f64>))]
    pub scores: Scores,
    #[serde(default, deserialize_with = "null_as_default")]
    pub failures: Vec<String>,
    /// Scores by category with feedback (text and LLM-judge scorers); each category also counts
    /// as a metric of its own (see `quality::normalise`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub breakdown: Vec<CategoryScore>,
}

/// What a scorer says about one output: scores by metric, plus failure kinds it found on its own
/// (e.g. a detector with no score). Thresholds from the policy are applied on top.
pub type QaScores = FailedQa;

/// Scores must be finite and within 0..=1.
pub(crate) fn check_scores(field: &str, scores: &Scores, errs: &mut Errors) {
    for (metric, score) in scores {
        if !(score.is_finite() && (0.0..=1.0).contains(score)) {
            errs.push(
                format!("{field}.{metric}"),
                format!("must be within 0..=1, got {score}"),
            );
        }
    }
}

/// Categories must be named like metrics and score within 0..=1.
pub(crate) fn check_breakdown(field: &str, breakdown: &[CategoryScore], errs: &mut Errors) {
    for (i, c) in breakdown.iter().enumerate() {
        let valid_name = !c.category.is_empty()
            && c.category.len() <= 64
            && c.category
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid_name {
            errs.push(
                format!("{field}[{i}].category"),
                format!("must be letters, digits and _, got {:?}", c.category),
            );
        }
        if !(c.score.is_finite() && (0.0..=1.0).contains(&c.score)) {
            errs.push(
                format!("{field}[{i}].score"),
                format!("must be within 0..=1, got {}", c.score),
            );
        }
    }
}

/// Check a scorer's answer: scores and breakdown within range, names valid.
pub fn validate_scores(qa: &QaScores) -> Result<(), ValidationError> {
    let mut errs = Errors::default();
    check_scores("scores", &qa.scores, &mut errs);
    check_breakdown("breakdown", &qa.breakdown, &mut errs);
    errs.finish(())
}
