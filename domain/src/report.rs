//! The transparent, one-line report of a retry: every attempt, in order, with the scores that
//! matter, so no retry is ever silent.
//!
//! `Segment 5: failed attempt 1 (face 0.42), failed attempt 2 (face 0.55), passed attempt 3 (face 0.87)`

use crate::adapt::ChosenBy;
use crate::contract::{AttemptRecord, AttemptStatus, Outcome};
use crate::policy::{RetryPolicy, Selection};
use crate::stop::Stop;

/// Report of a segment that was not retried.
pub fn not_retried(segment_id: &str, reason: &str) -> String {
    format!("Segment {segment_id}: not retried ({reason})")
}

/// Report of a retry still running: the attempts so far and the one in flight.
pub fn progress(
    segment_id: &str,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    running: &[u32],
) -> String {
    let mut parts: Vec<String> = attempts.iter().map(|a| attempt_part(policy, a)).collect();
    for k in running {
        parts.push(format!("attempt {k} running"));
    }
    if parts.is_empty() {
        format!("Segment {segment_id}: starting")
    } else {
        format!("Segment {segment_id}: {}", parts.join(", "))
    }
}

/// `report` with `; suffix` appended (a review decision after the fact).
pub fn with_suffix(report: &str, suffix: &str) -> String {
    format!("{report}; {suffix}")
}

/// Report of a finished retry.
pub fn summary(
    segment_id: &str,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    outcome: Outcome,
    selected: Option<u32>,
    stop: &Stop,
) -> String {
    let mut line = format!("Segment {segment_id}: ");
    if attempts.is_empty() {
        line.push_str("no attempts");
    } else {
        let parts: Vec<String> = attempts.iter().map(|a| attempt_part(policy, a)).collect();
        line.push_str(&parts.join(", "));
    }
    match (outcome, stop) {
        (Outcome::Passed, _) => {
            let passing = attempts.iter().filter(|a| a.passed).count();
            if let (Some(k), Selection::BestOfN) = (selected, policy.selection) {
                line.push_str(&format!(
                    "; selected attempt {k} (best of {passing} passing)"
                ));
            }
            // With parallel attempts the budget may refuse one slot's reservation while another
            // attempt passes: that attempt never started, and nothing else would say so.
            match stop {
                Stop::BudgetRefused { attempt, .. } => {
                    line.push_str(&format!("; the project budget refused attempt {attempt}"));
                }
                Stop::BudgetExceeded { attempt, .. } => {
                    line.push_str(&format!("; the project budget stopped attempt {attempt}"));
                }
                _ => {}
            }
        }
        (Outcome::Escalated, _) => line.push_str("; escalated for human review"),
        (_, Stop::BudgetRefused { attempt, .. }) => {
            line.push_str(&format!("; budget exhausted before attempt {attempt}"));
        }
        (_, Stop::BudgetExceeded { attempt, .. }) => {
            line.push_str(&format!("; budget exhausted during attempt {attempt}"));
        }
        (Outcome::Aborted, Stop::Aborted { by, .. }) => {
            line.push_str(&format!("; aborted by {by}"))
        }
        _ => {}
    }
    line
}

/// What an attempt's `note` says when its generation was re-run after an infrastructure failure
/// (see [`rerun_note`]). Not "on another worker": with no other worker alive the re-run goes to
/// the shared queue and may land on the same one; the report says where it ran.
const RERUN: &str = "re-run after ";

/// The note of an attempt whose generation failed on each of `failed` (worker, why) and was
/// re-run, after the plan's own note if any: `re-run after InfrastructureFailure: CUDA out of
/// memory on 41@gpu-a`.
pub fn rerun_note(note: Option<String>, failed: &[(String, String)]) -> Option<String> {
    let told: Vec<String> = failed
        .iter()
        .map(|(worker, why)| format!("{RERUN}{why} on {worker}"))
        .collect();
    match (note, told.is_empty()) {
        (note, true) => note,
        (None, false) => Some(told.join("; ")),
        (Some(note), false) => Some(format!("{note}; {}", told.join("; "))),
    }
}

/// How much of an attempt's error the one-line report quotes (the record keeps all of it).
const ERROR_CHARS: usize = 120;

/// `failed attempt 1 (face 0.42)`: the metrics a retry is about (thresholded metrics whose failure
/// kind is retried on) plus any metric the attempt failed.
fn attempt_part(policy: &RetryPolicy, a: &AttemptRecord) -> String {
    if a.status == AttemptStatus::Aborted {
        return format!("aborted attempt {}", a.attempt);
    }
    if a.status == AttemptStatus::Cancelled {
        return format!("cancelled attempt {}", a.attempt);
    }
    if a.status == AttemptStatus::Error {
        let err = a.error.as_deref().unwrap_or("unknown error");
        let mut short: String = err.chars().take(ERROR_CHARS).collect();
        if err.chars().nth(ERROR_CHARS).is_some() {
            short.push('…');
        }
        return match (a.error_type.as_deref(), &a.worker) {
            // The machine failed: which one is what a reader needs.
            (Some(kind @ crate::contract::INFRASTRUCTURE_FAILURE), Some(worker)) => {
                format!(
                    "error on attempt {} ({kind} on {worker}: {short})",
                    a.attempt
                )
            }
            (Some(kind), _) => format!("error on attempt {} ({kind}: {short})", a.attempt),
            (None, _) => format!("error on attempt {} ({short})", a.attempt),
        };
    }
    let shown: Vec<String> = policy
        .thresholds
        .iter()
        .filter(|(_, t)| policy.retry_on.contains(&t.failure) || a.failures.contains(&t.failure))
        .filter_map(|(metric, _)| a.scores.get(metric).map(|s| format!("{metric} {s:.2}")))
        .collect();
    let shown = if shown.is_empty() {
        a.scores
            .iter()
            .map(|(m, s)| format!("{m} {s:.2}"))
            .collect()
    } else {
        shown
    };
    let verdict = if a.passed { "passed" } else { "failed" };
    // The strategy is shown when the ladder chose one other than plain reseeding.
    // An adaptive attempt shows the move it chose from the evidence.
    let how = match (a.strategy, &a.variation) {
        (Some(s), _) if s.revises() => format!(" [{s}]"),
        (_, Some(v)) if v.chosen_by == ChosenBy::Adaptive => format!(" [adaptive: {}]", v.words()),
        (_, Some(v)) if v.chosen_by == ChosenBy::ColdStart => " [adaptive: cold start]".to_owned(),
        _ => String::new(),
    };
    // Generated after its first worker's machine failed: said, with where it finally ran.
    let how = match (&a.note, &a.worker) {
        (Some(note), Some(worker)) if note.contains(RERUN) => format!("{how} [re-run on {worker}]"),
        _ => how,
    };
    if shown.is_empty() {
        format!("{verdict} attempt {}{how}", a.attempt)
    } else {
        format!(
            "{verdict} attempt {}{how} ({})",
            a.attempt,
            shown.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{INFRASTRUCTURE_FAILURE, RetryRequest};
    use serde_json::json;

    fn plan(k: u32) -> crate::plan::AttemptPlan {
        let req = RetryRequest::parse(&json!({
            "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
            "params": {"seed": 1}, "failed_qa": {"failures": ["face_melt"]}
        }))
        .unwrap();
        let policy = RetryPolicy::default();
        crate::ladder::plan_attempt(
            &req,
            &policy,
            &[],
            k,
            crate::strategy::Strategy::ReseedJitter,
        )
    }

    #[test]
    fn a_machine_failure_names_the_worker_and_a_re_run_says_where_it_ran() {
        let policy = RetryPolicy::default();
        let mut broken = plan(1).errored(
            60,
            INFRASTRUCTURE_FAILURE,
            "generation failed: CUDA out of memory".to_owned(),
            None,
        );
        broken.worker = Some("gpu-a".to_owned());
        let failed = [(
            "gpu-a".to_owned(),
            format!("{INFRASTRUCTURE_FAILURE}: CUDA out of memory"),
        )];
        let mut rerun = plan(2).scored(
            &policy,
            crate::contract::QaScores {
                scores: [("face".to_owned(), 0.9), ("motion".to_owned(), 0.9)].into(),
                ..Default::default()
            },
            1560,
            None,
        );
        rerun.note = rerun_note(None, &failed);
        rerun.worker = Some("gpu-b".to_owned());
        assert_eq!(
            rerun.note.as_deref(),
            Some("re-run after InfrastructureFailure: CUDA out of memory on gpu-a")
        );
        assert_eq!(
            progress("5", &policy, &[broken, rerun], &[3]),
            "Segment 5: error on attempt 1 (InfrastructureFailure on gpu-a: generation failed: \
             CUDA out of memory), passed attempt 2 [re-run on gpu-b] (face 0.90), attempt 3 running"
        );
        assert_eq!(
            rerun_note(Some("used the revise prompt".to_owned()), &failed[..0]),
            Some("used the revise prompt".to_owned())
        );
    }
}
