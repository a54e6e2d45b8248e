//! The retry plan: whether to retry at all, what each attempt generates with, when to stop and how
//! the workflow ends. The workflow executes these decisions; it makes none of its own.

use crate::adapt::Variation;
use crate::contract::{
    AttemptRecord, AttemptStatus, FailedQa, Outcome, Params, QaScores, RetryRequest, RetryResult,
};
use crate::event::CreatorEvent;
use crate::params::ParamChange;
use crate::policy::{RetryPolicy, Selection};
use crate::report;
use crate::select::{gate, select};
use crate::stop::Stop;
use crate::strategy::Strategy;

/// Why retrying is not even started, or `Ok(())` to start.
pub fn should_retry(policy: &RetryPolicy, failed: &FailedQa) -> Result<(), String> {
    if !policy.enabled {
        return Err("auto-retry is not enabled for this scene type (policies are opt-in)".into());
    }
    if failed.failures.is_empty() {
        return Err("the failed QA result lists no failure kinds".into());
    }
    if policy.retryable(&failed.failures).is_empty() {
        let listed: Vec<&str> = policy.retry_on.iter().map(String::as_str).collect();
        return Err(format!(
            "none of the failures ({}) is one the policy retries on ({})",
            failed.failures.join(", "),
            listed.join(", ")
        ));
    }
    let blocking = policy.blocking(&failed.failures);
    if !blocking.is_empty() {
        return Err(format!(
            "the failures include {}, which the policy does not retry on: if that failure is \
             systematic no new seed fixes it, so retrying would spend GPU time for nothing \
             (policy mixed_failures: stop; \"retry\" retries anyway)",
            blocking.join(", ")
        ));
    }
    Ok(())
}

/// What attempt `k` generates with.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptPlan {
    pub attempt: u32,
    pub seed: u64,
    pub params: Params,
    pub original_params: Params,
    pub jitter: Vec<ParamChange>,
    /// The ladder's strategy ([`crate::ladder::plan_attempt`] always sets it).
    pub strategy: Option<Strategy>,
    /// The prompt of a text strategy.
    pub prompt: Option<String>,
    /// The draft a text strategy revises: 0 = the failed generation, k = attempt k.
    pub revises: Option<u32>,
    /// Where that draft is.
    pub revise_uri: Option<String>,
    /// Why the attempt deviates from its strategy (recorded with it).
    pub note: Option<String>,
    /// What the attempt varies, as insights count it ([`crate::ladder::plan_attempt`] always
    /// sets it).
    pub variation: Option<Variation>,
    /// The quality (by the policy's measure) of the draft the attempt starts from, to record
    /// its gain.
    pub base_quality: f64,
}

impl AttemptPlan {
    /// The record of a generated and scored attempt; the policy's thresholds decide pass or fail.
    pub fn scored(
        self,
        policy: &RetryPolicy,
        qa: QaScores,
        gpu_ms: u64,
        output_uri: Option<String>,
    ) -> AttemptRecord {
        let mut qa = crate::quality::normalise(qa);
        let failures = gate(policy, &qa);
        let breakdown = std::mem::take(&mut qa.breakdown);
        let base = self.base_quality;
        let mut r = self.record(qa.scores, failures, gpu_ms, output_uri, None);
        if let Some(v) = &mut r.variation {
            let gain = crate::select::quality(policy, &r.scores) - base;
            v.gain = Some((gain * 10_000.0).round() / 10_000.0);
        }
        r.breakdown = breakdown;
        r
    }

    /// The record of an attempt whose generation or scoring failed for good: `error` is the
    /// root message, `error_type` its kind; `output_uri` is kept when generation succeeded.
    pub fn errored(
        self,
        gpu_ms: u64,
        error_type: &str,
        error: String,
        output_uri: Option<String>,
    ) -> AttemptRecord {
        let mut r = self.record(Default::default(), vec![], gpu_ms, output_uri, Some(error));
        r.error_type = Some(error_type.to_owned());
        r
    }

    /// The record of an attempt cancelled by a creator's abort, with the GPU time it used before
    /// it stopped and its output when generation had finished anyway.
    pub fn aborted(self, by: &str, gpu_ms: u64, output_uri: Option<String>) -> AttemptRecord {
        let mut r = self.record(
            Default::default(),
            vec![],
            gpu_ms,
            output_uri,
            Some(format!("aborted by {by}")),
        );
        r.status = AttemptStatus::Aborted;
        r
    }

    /// The record of an attempt cancelled because it was no longer needed (`why`: another
    /// attempt passed first, a creator escalated), with the GPU time it used and its output when
    /// generation had finished.
    pub fn cancelled(self, why: String, gpu_ms: u64, output_uri: Option<String>) -> AttemptRecord {
        let mut r = self.record(Default::default(), vec![], gpu_ms, output_uri, Some(why));
        r.status = AttemptStatus::Cancelled;
        r
    }

    fn record(
        self,
        scores: crate::contract::Scores,
        failures: Vec<String>,
        gpu_ms: u64,
        output_uri: Option<String>,
        error: Option<String>,
    ) -> AttemptRecord {
        let status = match (&error, failures.is_empty()) {
            (Some(_), _) => AttemptStatus::Error,
            (None, true) => AttemptStatus::Passed,
            (None, false) => AttemptStatus::Failed,
        };
        AttemptRecord {
            attempt: self.attempt,
            seed: self.seed,
            params: self.params,
            original_params: self.original_params,
            jitter: self.jitter,
            scores,
            passed: status == AttemptStatus::Passed,
            failures,
            gpu_ms,
            status,
            output_uri,
            error: error.map(crate::contract::bounded_error),
            strategy: self.strategy,
            prompt: self.prompt,
            revises: self.revises,
            breakdown: vec![],
            error_type: None,
            note: self.note,
            variation: self.variation,
            worker: None,
        }
    }
}

/// After the attempts so far: the next attempt number, or why to stop. `round_start` is the
/// number of attempts made before the current round (0, or more after a creator's `retry_with`):
/// the last attempt of an earlier round does not stop a new one.
pub fn next(
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    round_start: u32,
) -> Result<u32, Stop> {
    if let Some(last) = attempts.last().filter(|l| l.attempt > round_start) {
        if last.passed && policy.selection == Selection::FirstPass {
            return Err(Stop::Passed);
        }
        let blocking = policy.blocking(&last.failures);
        if last.status == AttemptStatus::Failed && !blocking.is_empty() {
            return Err(Stop::NotRetryable {
                attempt: last.attempt,
                failures: blocking.into_iter().map(str::to_owned).collect(),
            });
        }
        if last.error_type.as_deref() == Some(crate::contract::BUDGET_EXHAUSTED) {
            return Err(Stop::BudgetExceeded {
                attempt: last.attempt,
                detail: last.error.clone().unwrap_or_default(),
            });
        }
    }
    let done = made(attempts);
    if done >= policy.max_attempts {
        return Err(Stop::AttemptsUsed);
    }
    Ok(done + 1)
}

/// The highest attempt number recorded: where numbering goes on. Not the count: an attempt
/// given a number and then refused by the budget, or stopped before it started, is not recorded,
/// and when one numbered above it was, counting would give its number out twice (found by the
/// simulator: a `retry_with` after an escalation released attempts 1 and 2 while 3 and 4 were
/// recorded, and planned a second attempt 3).
pub fn made(attempts: &[AttemptRecord]) -> u32 {
    attempts.iter().map(|a| a.attempt).max().unwrap_or(0)
}

/// The result of a workflow that was not retried.
pub fn not_retried(req: &RetryRequest, reason: String) -> RetryResult {
    let report = report::not_retried(req.segment_id.as_str(), &reason);
    RetryResult {
        segment_id: req.segment_id.clone(),
        project_id: req.project_id.clone(),
        scene_type: req.scene_type.clone(),
        outcome: Outcome::NotRetried,
        reason,
        selected_attempt: None,
        attempts: vec![],
        gpu_ms_total: 0,
        report,
        decisions: vec![],
    }
}

/// The result once the attempt loop stopped: outcome, selected attempt, reason and report.
pub fn conclude(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: Vec<AttemptRecord>,
    stop: &Stop,
) -> RetryResult {
    let selected = select(policy, &attempts);
    let (outcome, reason) = match (stop, selected) {
        (Stop::Aborted { by, reason }, _) => (Outcome::Aborted, said("aborted", by, reason)),
        (_, Some(k)) => (
            Outcome::Passed,
            match policy.selection {
                Selection::FirstPass => format!("attempt {k} passed QA"),
                Selection::BestOfN => format!(
                    "attempt {k} scored highest of the {} passing attempts",
                    attempts.iter().filter(|a| a.passed).count()
                ),
            },
        ),
        (Stop::BudgetRefused { attempt, detail }, None) => (
            Outcome::BudgetExhausted,
            format!("the project budget refused attempt {attempt}: {detail}"),
        ),
        (Stop::BudgetExceeded { attempt, detail }, None) => (
            Outcome::BudgetExhausted,
            format!("the project budget stopped attempt {attempt} mid-generation: {detail}"),
        ),
        (Stop::Escalated { by, reason }, None) => (
            Outcome::Escalated,
            format!(
                "{}; flagged for human review",
                said("escalated", by, reason)
            ),
        ),
        (Stop::UserIntervention { message, .. }, None) => (Outcome::Escalated, message.clone()),
        (Stop::Rejected { attempts, message }, None) => {
            (Outcome::Escalated, refused_words(attempts, message))
        }
        (
            Stop::NotWorthIt {
                attempt,
                chance,
                cost_ms,
                saving_ms,
            },
            None,
        ) => (
            Outcome::Escalated,
            format!(
                "stopped before attempt {attempt} by the cost rule: it would fix the segment with \
                 chance {chance:.2}, saving {saving_ms:.0} GPU ms of review against {cost_ms} GPU ms \
                 per attempt; flagged for human review"
            ),
        ),
        (Stop::NotRetryable { attempt, failures }, None) => (
            Outcome::Escalated,
            format!(
                "attempt {attempt} failed on {}, which the policy does not retry on; \
                 flagged for human review",
                failures.join(", ")
            ),
        ),
        (_, None) => (
            Outcome::Escalated,
            format!(
                "all {} attempts failed QA; flagged for human review",
                attempts.len()
            ),
        ),
    };
    let report = report::summary(
        req.segment_id.as_str(),
        policy,
        &attempts,
        outcome,
        selected,
        stop,
    );
    RetryResult {
        segment_id: req.segment_id.clone(),
        project_id: req.project_id.clone(),
        scene_type: req.scene_type.clone(),
        outcome,
        reason,
        selected_attempt: selected,
        gpu_ms_total: attempts.iter().map(|a| a.gpu_ms).sum(),
        attempts,
        report,
        decisions: vec![],
    }
}

/// Why refusals ended the round: "the backend refused attempts 1 and 2 with the same error, …"
/// (one refusal, with `stop_after_same_refusals: 1`, says that the policy stops at the first).
fn refused_words(attempts: &[u32], message: &str) -> String {
    match attempts {
        [only] => format!(
            "the backend refused attempt {only} ({message}), and the policy stops at the first \
             refusal (stop_after_same_refusals: 1); flagged for human review"
        ),
        [before @ .., last] => {
            let before: Vec<String> = before.iter().map(u32::to_string).collect();
            format!(
                "the backend refused attempts {} and {last} with the same error, which other \
                 seeds and jitter do not change ({message}); flagged for human review",
                before.join(", ")
            )
        }
        [] => format!("the backend refused the request ({message}); flagged for human review"),
    }
}

/// The result after a reviewer accepted attempt `k`: it is selected and the segment passes.
pub fn accepted(mut result: RetryResult, k: u32, event: &CreatorEvent) -> RetryResult {
    result.outcome = Outcome::Passed;
    result.selected_attempt = Some(k);
    result.reason = format!("attempt {k} accepted by {} in review", event.by);
    if !event.reason.is_empty() {
        result.reason.push_str(&format!(": {}", event.reason));
    }
    result.report = report::with_suffix(
        &result.report,
        &format!("attempt {k} accepted by {}", event.by),
    );
    result
}

/// The result after a reviewer rejected the segment: it stays escalated, review closed.
pub fn rejected(mut result: RetryResult, event: &CreatorEvent) -> RetryResult {
    result.outcome = Outcome::Escalated;
    result.selected_attempt = None;
    result.reason = format!("rejected by {} in review", event.by);
    if !event.reason.is_empty() {
        result.reason.push_str(&format!(": {}", event.reason));
    }
    result.report = report::with_suffix(&result.report, &format!("rejected by {}", event.by));
    result
}

/// The result when the review window ended without a decision.
pub fn review_expired(mut result: RetryResult, window_secs: u64) -> RetryResult {
    if window_secs > 0 {
        result.reason.push_str(&format!(
            " (no decision within the {window_secs} s review window)"
        ));
    }
    result
}

/// `escalated by mina: looks off`, or `escalated by mina` when no reason was given (not
/// `escalated by mina: ;`).
fn said(what: &str, by: &str, reason: &str) -> String {
    match reason.trim() {
        "" => format!("{what} by {by}"),
        reason => format!("{what} by {by}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Scores;
    use serde_json::json;

    /// Attempt `k` on the ladder's `reseed_jitter` rung: a derived seed and jittered parameters.
    fn reseeded(req: &RetryRequest, policy: &RetryPolicy, k: u32) -> AttemptPlan {
        crate::ladder::plan_attempt(req, policy, &[], k, Strategy::ReseedJitter)
    }

    fn request() -> RetryRequest {
        RetryRequest::parse(&json!({
            "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
            "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6},
            "failed_qa": {"scores": {"face": 0.42, "motion": 0.81}, "failures": ["face_melt"]}
        }))
        .unwrap()
    }

    fn enabled() -> RetryPolicy {
        RetryPolicy {
            enabled: true,
            ..RetryPolicy::default()
        }
    }

    fn scored(policy: &RetryPolicy, k: u32, face: f64, motion: f64) -> AttemptRecord {
        let qa = QaScores {
            scores: Scores::from([("face".into(), face), ("motion".into(), motion)]),
            failures: vec![],
            ..Default::default()
        };
        reseeded(&request(), policy, k).scored(policy, qa, 100, None)
    }

    #[test]
    fn a_disabled_policy_does_not_retry_and_says_why() {
        let why = should_retry(&RetryPolicy::default(), &request().failed_qa).unwrap_err();
        assert!(why.contains("not enabled"), "{why}");
    }

    #[test]
    fn a_failure_kind_not_in_retry_on_is_not_retried() {
        let failed = FailedQa {
            scores: Scores::new(),
            failures: vec!["motion_score".into()],
            ..Default::default()
        };
        let why = should_retry(&enabled(), &failed).unwrap_err();
        assert!(why.contains("motion_score"), "{why}");
        assert!(should_retry(&enabled(), &request().failed_qa).is_ok());
    }

    #[test]
    fn each_attempt_uses_its_derived_seed_and_records_the_original_params() {
        let p = enabled();
        let a1 = reseeded(&request(), &p, 1);
        assert_eq!(a1.seed, 5_760_749_790_915_036);
        assert_eq!(a1.params.seed(), a1.seed);
        assert_eq!(a1.original_params.seed(), 1234);
        assert_eq!(a1.jitter.len(), 2);
        assert_ne!(reseeded(&request(), &p, 2).seed, a1.seed);
    }

    #[test]
    fn first_pass_stops_at_the_first_passing_attempt() {
        let p = enabled();
        let a = vec![scored(&p, 1, 0.4, 0.9), scored(&p, 2, 0.8, 0.9)];
        assert_eq!(next(&p, &a[..1], 0), Ok(2));
        assert_eq!(next(&p, &a, 0), Err(Stop::Passed));
        let r = conclude(&request(), &p, a, &Stop::Passed);
        assert_eq!(r.outcome, Outcome::Passed);
        assert_eq!(r.selected_attempt, Some(2));
        assert_eq!(r.gpu_ms_total, 200);
        assert_eq!(
            r.report,
            "Segment 5: failed attempt 1 (face 0.40), passed attempt 2 (face 0.80)"
        );
    }

    #[test]
    fn best_of_n_keeps_going_after_a_pass_and_picks_the_best() {
        let p = RetryPolicy {
            selection: Selection::BestOfN,
            ..enabled()
        };
        let a = vec![
            scored(&p, 1, 0.7, 0.9),
            scored(&p, 2, 0.3, 0.9),
            scored(&p, 3, 0.9, 0.9),
        ];
        assert_eq!(next(&p, &a[..1], 0), Ok(2));
        assert_eq!(next(&p, &a, 0), Err(Stop::AttemptsUsed));
        let r = conclude(&request(), &p, a, &Stop::AttemptsUsed);
        assert_eq!(r.selected_attempt, Some(3));
        assert!(
            r.report
                .ends_with("; selected attempt 3 (best of 2 passing)"),
            "{}",
            r.report
        );
    }

    #[test]
    fn all_attempts_failing_escalates_with_every_attempt_in_the_report() {
        let p = enabled();
        let a = vec![
            scored(&p, 1, 0.1, 0.9),
            scored(&p, 2, 0.2, 0.9),
            scored(&p, 3, 0.3, 0.9),
        ];
        assert_eq!(next(&p, &a, 0), Err(Stop::AttemptsUsed));
        let r = conclude(&request(), &p, a, &Stop::AttemptsUsed);
        assert_eq!(r.outcome, Outcome::Escalated);
        assert_eq!(r.selected_attempt, None);
        assert_eq!(
            r.report,
            "Segment 5: failed attempt 1 (face 0.10), failed attempt 2 (face 0.20), \
             failed attempt 3 (face 0.30); escalated for human review"
        );
    }

    #[test]
    fn an_attempt_failing_only_on_a_kind_not_retried_on_stops_early() {
        let p = enabled();
        let a = vec![scored(&p, 1, 0.9, 0.1)];
        let stop = next(&p, &a, 0).unwrap_err();
        assert_eq!(
            stop,
            Stop::NotRetryable {
                attempt: 1,
                failures: vec!["motion_score".into()]
            }
        );
        let r = conclude(&request(), &p, a, &stop);
        assert_eq!(r.outcome, Outcome::Escalated);
        assert!(
            r.report
                .contains("failed attempt 1 (face 0.90, motion 0.10)"),
            "{}",
            r.report
        );
    }

    #[test]
    fn a_budget_refusal_without_a_pass_is_budget_exhausted() {
        let p = enabled();
        let stop = Stop::BudgetRefused {
            attempt: 2,
            detail: "limit 100 ms".into(),
        };
        let r = conclude(&request(), &p, vec![scored(&p, 1, 0.1, 0.9)], &stop);
        assert_eq!(r.outcome, Outcome::BudgetExhausted);
        assert!(
            r.report.ends_with("; budget exhausted before attempt 2"),
            "{}",
            r.report
        );
    }

    #[test]
    fn a_reservation_refused_beside_a_passing_attempt_stays_in_the_report() {
        // Parallel slots: attempt 1's reservation refused, attempt 2 ran and passed.
        let p = enabled();
        let stop = Stop::BudgetRefused {
            attempt: 1,
            detail: "limit 8000 ms".into(),
        };
        let r = conclude(&request(), &p, vec![scored(&p, 2, 0.9, 0.9)], &stop);
        assert_eq!((r.outcome, r.selected_attempt), (Outcome::Passed, Some(2)));
        assert!(
            r.report.ends_with("; the project budget refused attempt 1"),
            "{}",
            r.report
        );
    }

    #[test]
    fn an_attempt_that_errored_counts_and_retrying_continues() {
        let p = enabled();
        let a = vec![reseeded(&request(), &p, 1).errored(
            0,
            "BackendTransient",
            "GPU lost".into(),
            None,
        )];
        assert_eq!(a[0].status, AttemptStatus::Error);
        assert_eq!(next(&p, &a, 0), Ok(2));
        let r = conclude(&request(), &p, a, &Stop::AttemptsUsed);
        assert!(
            r.report
                .contains("error on attempt 1 (BackendTransient: GPU lost)"),
            "{}",
            r.report
        );
    }

    #[test]
    fn a_long_error_is_quoted_whole_in_the_record_and_shortened_in_the_report() {
        let p = enabled();
        let long = format!("Prompt outputs failed validation; {}", "x".repeat(200));
        let a = vec![reseeded(&request(), &p, 1).errored(0, "BackendRejected", long.clone(), None)];
        assert_eq!(a[0].error.as_deref(), Some(long.as_str()));
        let r = conclude(&request(), &p, a, &Stop::AttemptsUsed);
        assert!(
            r.report.contains(
                "error on attempt 1 (BackendRejected: Prompt outputs failed validation; xx"
            ),
            "{}",
            r.report
        );
        assert!(r.report.contains("x…)"), "{}", r.report);
    }

    #[test]
    fn a_failed_qa_with_a_kind_not_retried_on_is_not_retried_by_default() {
        let p = enabled();
        let failed = FailedQa {
            failures: vec!["face_melt".into(), "motion_score".into()],
            ..Default::default()
        };
        let reason = should_retry(&p, &failed).unwrap_err();
        assert!(reason.contains("motion_score"), "{reason}");
        assert!(reason.contains("mixed_failures"), "{reason}");

        let p = RetryPolicy {
            mixed_failures: crate::policy::MixedFailures::Retry,
            ..p
        };
        assert_eq!(should_retry(&p, &failed), Ok(()));
    }

    #[test]
    fn an_attempt_failing_a_kind_not_retried_on_stops_unless_the_policy_retries_mixed() {
        let p = enabled();
        let mut a = reseeded(&request(), &p, 1).scored(
            &p,
            QaScores {
                scores: [("face".into(), 0.3), ("motion".into(), 0.2)].into(),
                ..Default::default()
            },
            10,
            None,
        );
        a.failures.sort();
        assert_eq!(a.failures, ["face_melt", "motion_score"]);
        let attempts = vec![a];
        assert_eq!(
            next(&p, &attempts, 0),
            Err(Stop::NotRetryable {
                attempt: 1,
                failures: vec!["motion_score".into()]
            })
        );
        let retry = RetryPolicy {
            mixed_failures: crate::policy::MixedFailures::Retry,
            ..p
        };
        assert_eq!(next(&retry, &attempts, 0), Ok(2));
    }

    #[test]
    fn an_attempt_the_budget_stopped_ends_the_retry_as_budget_exhausted() {
        let p = enabled();
        let a = vec![reseeded(&request(), &p, 1).errored(
            1500,
            crate::contract::BUDGET_EXHAUSTED,
            "needed more than the 1000 GPU ms reserved".into(),
            None,
        )];
        let stop = next(&p, &a, 0).unwrap_err();
        assert!(
            matches!(stop, Stop::BudgetExceeded { attempt: 1, .. }),
            "{stop:?}"
        );
        let r = conclude(&request(), &p, a, &stop);
        assert_eq!(r.outcome, Outcome::BudgetExhausted);
        assert_eq!(r.gpu_ms_total, 1500, "the partial GPU time is billed");
        assert!(
            r.report.ends_with("; budget exhausted during attempt 1"),
            "{}",
            r.report
        );
    }

    #[test]
    fn a_new_round_is_not_stopped_by_the_last_attempt_of_the_previous_one() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..enabled()
        };
        let a = vec![scored(&p, 1, 0.9, 0.1)];
        assert!(
            next(&p, &a, 0).is_err(),
            "motion-only failure stops round one"
        );
        assert_eq!(next(&p, &a, 1), Ok(2), "a retry_with round starts anyway");
    }

    #[test]
    fn a_reviewer_accepting_an_attempt_makes_it_the_selected_pass() {
        let p = enabled();
        let a = vec![scored(&p, 1, 0.5, 0.9)];
        let r = conclude(&request(), &p, a, &Stop::AttemptsUsed);
        let who = CreatorEvent {
            action: "accept".into(),
            by: "mina".into(),
            reason: "good enough".into(),
            detail: json!(null),
        };
        let r = accepted(r, 1, &who);
        assert_eq!((r.outcome, r.selected_attempt), (Outcome::Passed, Some(1)));
        assert_eq!(
            r.reason,
            "attempt 1 accepted by mina in review: good enough"
        );
        assert!(
            r.report
                .ends_with("; escalated for human review; attempt 1 accepted by mina"),
            "{}",
            r.report
        );
    }

    #[test]
    fn a_creator_escalation_is_escalated_with_who_and_why() {
        let p = enabled();
        let stop = Stop::Escalated {
            by: "mina".into(),
            reason: "looks off".into(),
        };
        let r = conclude(&request(), &p, vec![scored(&p, 1, 0.5, 0.9)], &stop);
        assert_eq!(r.outcome, Outcome::Escalated);
        assert!(
            r.reason.starts_with("escalated by mina: looks off"),
            "{}",
            r.reason
        );
        let silent = Stop::Escalated {
            by: "mina".into(),
            reason: " ".into(),
        };
        let r = conclude(&request(), &p, vec![scored(&p, 1, 0.5, 0.9)], &silent);
        assert_eq!(r.reason, "escalated by mina; flagged for human review");
    }

    #[test]
    fn not_retried_reports_the_reason() {
        let r = not_retried(&request(), "auto-retry is not enabled".into());
        assert_eq!(r.outcome, Outcome::NotRetried);
        assert_eq!(
            r.report,
            "Segment 5: not retried (auto-retry is not enabled)"
        );
    }
}
