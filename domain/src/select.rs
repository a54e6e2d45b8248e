//! Quality gate and best-of-N selection.

use crate::contract::{AttemptRecord, QaScores, Scores};
use crate::policy::{RetryPolicy, Selection};

/// Apply the policy's thresholds to a scorer's result: the failure kinds of every metric below its
/// threshold (a missing score counts as below), plus the scorer's own failures, sorted and
/// deduplicated. The attempt passes when the list is empty.
pub fn gate(policy: &RetryPolicy, qa: &QaScores) -> Vec<String> {
    let mut failures: Vec<String> = qa.failures.clone();
    for (metric, t) in &policy.thresholds {
        let ok = qa.scores.get(metric).is_some_and(|s| *s >= t.min);
        if !ok {
            failures.push(t.failure.clone());
        }
    }
    failures.sort();
    failures.dedup();
    failures
}

/// One number to rank attempts by: the mean of the scores of the thresholded metrics (all scores
/// when the policy has no thresholds; 0 when there are none).
pub fn quality(policy: &RetryPolicy, scores: &Scores) -> f64 {
    let ranked: Vec<f64> = if policy.thresholds.is_empty() {
        scores.values().copied().collect()
    } else {
        policy
            .thresholds
            .keys()
            .map(|m| scores.get(m).copied().unwrap_or(0.0))
            .collect()
    };
    if ranked.is_empty() {
        0.0
    } else {
        ranked.iter().sum::<f64>() / ranked.len() as f64
    }
}

/// The attempt to keep: for `first_pass` the first passing one; for `best_of_n` the passing one of
/// highest [`quality`], ties going to the earlier attempt (it cost no more GPU time). `None` when no
/// attempt passed.
pub fn select(policy: &RetryPolicy, attempts: &[AttemptRecord]) -> Option<u32> {
    let mut passing = attempts.iter().filter(|a| a.passed);
    match policy.selection {
        Selection::FirstPass => passing.next().map(|a| a.attempt),
        Selection::BestOfN => passing
            .max_by(|a, b| {
                quality(policy, &a.scores)
                    .total_cmp(&quality(policy, &b.scores))
                    .then_with(|| b.attempt.cmp(&a.attempt))
            })
            .map(|a| a.attempt),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::{AttemptStatus, Params};
    use serde_json::json;

    pub(crate) fn attempt(k: u32, face: f64, motion: f64, policy: &RetryPolicy) -> AttemptRecord {
        let scores = Scores::from([("face".into(), face), ("motion".into(), motion)]);
        let failures = gate(
            policy,
            &QaScores {
                scores: scores.clone(),
                failures: vec![],
                ..Default::default()
            },
        );
        let passed = failures.is_empty();
        let params = Params::parse(&json!({"seed": k})).unwrap();
        AttemptRecord {
            attempt: k,
            seed: u64::from(k),
            params: params.clone(),
            original_params: params,
            jitter: vec![],
            scores,
            passed,
            failures,
            gpu_ms: 10,
            status: if passed {
                AttemptStatus::Passed
            } else {
                AttemptStatus::Failed
            },
            output_uri: Some(format!("sim://{k}.mp4")),
            error: None,
            strategy: None,
            prompt: None,
            revises: None,
            breakdown: vec![],
            error_type: None,
            note: None,
            variation: None,
            worker: None,
        }
    }

    #[test]
    fn a_score_below_its_threshold_reports_that_metrics_failure_kind() {
        let p = RetryPolicy::default();
        let qa = QaScores {
            scores: Scores::from([("face".into(), 0.42), ("motion".into(), 0.81)]),
            failures: vec![],
            ..Default::default()
        };
        assert_eq!(gate(&p, &qa), ["face_melt"]);
    }

    #[test]
    fn a_missing_score_counts_as_failing_and_scorer_failures_are_kept() {
        let p = RetryPolicy::default();
        let qa = QaScores {
            scores: Scores::from([("face".into(), 0.9)]),
            failures: vec!["nsfw".into()],
            ..Default::default()
        };
        assert_eq!(gate(&p, &qa), ["motion_score", "nsfw"]);
    }

    #[test]
    fn first_pass_selects_the_first_passing_attempt() {
        let p = RetryPolicy::default();
        let a = [
            attempt(1, 0.3, 0.9, &p),
            attempt(2, 0.7, 0.9, &p),
            attempt(3, 0.95, 0.9, &p),
        ];
        assert_eq!(select(&p, &a), Some(2));
    }

    #[test]
    fn best_of_n_selects_the_highest_scoring_passing_attempt() {
        let p = RetryPolicy {
            selection: Selection::BestOfN,
            ..RetryPolicy::default()
        };
        let a = [
            attempt(1, 0.99, 0.1, &p),
            attempt(2, 0.7, 0.9, &p),
            attempt(3, 0.95, 0.9, &p),
        ];
        assert_eq!(
            select(&p, &a),
            Some(3),
            "attempt 1 scores high but fails motion"
        );
    }

    #[test]
    fn best_of_n_breaks_ties_towards_the_earlier_attempt() {
        let p = RetryPolicy {
            selection: Selection::BestOfN,
            ..RetryPolicy::default()
        };
        let a = [
            attempt(1, 0.2, 0.9, &p),
            attempt(2, 0.8, 0.9, &p),
            attempt(3, 0.8, 0.9, &p),
        ];
        assert_eq!(select(&p, &a), Some(2));
    }

    #[test]
    fn nothing_is_selected_when_no_attempt_passes() {
        let p = RetryPolicy::default();
        let a = [attempt(1, 0.2, 0.9, &p), attempt(2, 0.3, 0.9, &p)];
        assert_eq!(select(&p, &a), None);
    }
}
