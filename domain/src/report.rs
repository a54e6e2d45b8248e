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
        return match a.error_type.as_deref() {
            Some(kind) => format!("error on attempt {} ({kind}: {short})", a.attempt),
            None => format!("error on attempt {} ({short})", a.attempt),
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
