use super::*;
use crate::contract::{QaScores, Scores};
use serde_json::json;

fn request() -> RetryRequest {
    RetryRequest::parse(&json!({
        "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
        "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6},
        "failed_qa": {"scores": {"face": 0.42, "motion": 0.81}, "failures": ["face_melt"]}
    }))
    .unwrap()
}

fn policy(extra: serde_json::Value) -> RetryPolicy {
    let mut p = json!({"enabled": true, "parallelism": 3});
    for (k, v) in extra.as_object().unwrap() {
        p[k] = v.clone();
    }
    RetryPolicy::parse(&p).unwrap()
}

fn started(n: Next) -> AttemptPlan {
    match n {
        Next::Start(plan) => *plan,
        other => panic!("expected a start, got {other:?}"),
    }
}

fn scored(plan: AttemptPlan, policy: &RetryPolicy, face: f64) -> AttemptRecord {
    let qa = QaScores {
        scores: Scores::from([("face".into(), face), ("motion".into(), 0.9)]),
        ..Default::default()
    };
    plan.scored(policy, qa, 100, Some(format!("sim://{face}")))
}

#[test]
fn attempt_k_is_planned_the_same_whether_attempts_run_in_parallel_or_one_by_one() {
    let (req, p) = (request(), policy(json!({"max_attempts": 3})));
    let serial_1 = ladder::next(&req, &p, &[], 0).unwrap();
    let a1 = scored(serial_1.clone(), &p, 0.3);
    let serial_2 = ladder::next(&req, &p, std::slice::from_ref(&a1), 0).unwrap();

    let parallel_1 = started(next(&req, &p, &[], &[], 0));
    let parallel_2 = started(next(&req, &p, &[], &fly(&[], 1), 0));
    let parallel_3 = started(next(&req, &p, &[], &fly(&[], 2), 0));
    assert_eq!(parallel_1, serial_1);
    assert_eq!(
        (parallel_2.attempt, parallel_2.seed, &parallel_2.params),
        (2, serial_2.seed, &serial_2.params)
    );
    assert_eq!(parallel_2.jitter, serial_2.jitter);
    assert_eq!(parallel_3.attempt, 3);
    assert_ne!(parallel_3.seed, parallel_2.seed);
}

#[test]
fn no_slot_starts_more_than_max_attempts_and_the_last_finished_attempt_ends_the_round() {
    let (req, p) = (request(), policy(json!({"max_attempts": 2})));
    let a1 = started(next(&req, &p, &[], &[], 0));
    let a2 = started(next(&req, &p, &[], &fly(&[], 1), 0));
    assert_eq!(
        next(&req, &p, &[], &fly(&[], 2), 0),
        Next::Stop(Stop::AttemptsUsed)
    );
    let done = vec![scored(a1, &p, 0.3)];
    assert_eq!(
        next(&req, &p, &done, &fly(&done, 1), 0),
        Next::Stop(Stop::AttemptsUsed)
    );
    let done = vec![done[0].clone(), scored(a2, &p, 0.4)];
    assert!(
        matches!(
            next(&req, &p, &done, &[], 0),
            Next::Stop(Stop::UserIntervention { attempt: 3, .. })
        ),
        "with nothing in flight the round ends as a serial one would"
    );
}

#[test]
fn a_pass_out_of_order_ends_a_first_pass_round_but_not_a_best_of_n_one() {
    let (req, p) = (request(), policy(json!({"max_attempts": 5})));
    let a1 = started(next(&req, &p, &[], &[], 0));
    let a2 = started(next(&req, &p, &[], &fly(&[], 1), 0));
    // Attempt 2 passes while attempt 1 is still running.
    let done = vec![scored(a2.clone(), &p, 0.9)];
    assert_eq!(next(&req, &p, &done, &[1], 0), Next::Stop(Stop::Passed));
    // Attempt 1 then fails: the latest record is a failure, the round still passed.
    let done = vec![scored(a1.clone(), &p, 0.3), done[0].clone()];
    assert_eq!(next(&req, &p, &done, &[], 0), Next::Stop(Stop::Passed));

    let best = policy(json!({"max_attempts": 5, "selection": "best_of_n"}));
    let done = vec![scored(a2, &best, 0.9)];
    assert_eq!(started(next(&req, &best, &done, &[1], 0)).attempt, 3);
}

#[test]
fn a_failure_the_policy_does_not_retry_on_stops_new_starts_whatever_its_position() {
    let (req, p) = (request(), policy(json!({"max_attempts": 5})));
    let a1 = started(next(&req, &p, &[], &[], 0));
    let a2 = started(next(&req, &p, &[], &fly(&[], 1), 0));
    let qa = QaScores {
        scores: Scores::from([("face".into(), 0.9), ("motion".into(), 0.1)]),
        ..Default::default()
    };
    let blocked = a1.scored(&p, qa, 100, None);
    let done = vec![blocked, scored(a2, &p, 0.3)];
    assert!(matches!(
        next(&req, &p, &done, &[], 0),
        Next::Stop(Stop::NotRetryable { attempt: 1, .. })
    ));
}

#[test]
fn the_slots_never_exceed_parallelism() {
    let (req, p) = (
        request(),
        policy(json!({"max_attempts": 10, "parallelism": 2})),
    );
    assert_eq!(next(&req, &p, &[], &fly(&[], 2), 0), Next::Wait);
}

#[test]
fn a_rung_that_revises_a_draft_waits_for_the_attempts_in_flight() {
    let req = RetryRequest::parse(&json!({
        "segment_id": "ch12", "project_id": "novel", "scene_type": "chapter",
        "params": {"seed": 42, "temperature": 0.8},
        "failed_qa": {"scores": {"overall": 0.5}, "failures": ["below_threshold"]}
    }))
    .unwrap();
    let p = RetryPolicy::parse(&json!({
        "enabled": true, "profile": "text", "max_attempts": 4, "parallelism": 3
    }))
    .unwrap();
    let first = started(next(&req, &p, &[], &[], 0));
    assert_eq!(first.strategy, Some(Strategy::Revise));
    assert_eq!(next(&req, &p, &[], &fly(&[], 1), 0), Next::Wait);
    let media = policy(json!({"max_attempts": 4, "ladder": ["reseed", "revise"]}));
    assert_eq!(
        started(next(&request(), &media, &[], &[], 0)).strategy,
        Some(Strategy::Reseed)
    );
    assert_eq!(next(&request(), &media, &[], &fly(&[], 1), 0), Next::Wait);
}

#[test]
fn a_round_after_review_counts_only_its_own_attempts() {
    let (req, p) = (request(), policy(json!({"max_attempts": 4})));
    let earlier = scored(started(next(&req, &p, &[], &[], 0)), &p, 0.9);
    assert_eq!(decided(&p, std::slice::from_ref(&earlier), 1), None);
    assert_eq!(started(next(&req, &p, &[earlier], &[], 1)).attempt, 2);
}

#[test]
fn the_same_refusal_twice_in_a_row_stops_the_round_but_a_different_one_does_not() {
    let (req, p) = (request(), policy(json!({"max_attempts": 5})));
    let refused = |k: u32, message: &str| {
        let mut plan = started(next(&req, &p, &[], &[], 0));
        plan.attempt = k;
        plan.errored(
            0,
            BACKEND_REJECTED,
            format!("generation failed: {message}"),
            None,
        )
    };
    let out_of_range = "cfg 31.2 is out of range";
    // A refusal the jitter may have caused is retried once.
    let a1 = refused(1, out_of_range);
    assert!(decided(&p, std::slice::from_ref(&a1), 0).is_none());
    // Another refusal: the jitter changed what was refused, keep going.
    let a2 = refused(2, "cfg 29.8 is out of range (GET http://farm/jobs/job-2)");
    assert!(decided(&p, &[a1.clone(), a2.clone()], 0).is_none());
    // The same refusal twice in a row: stop, saying so.
    let a3 = refused(3, "cfg 29.8 is out of range (GET http://farm/jobs/job-3)");
    let stop = decided(&p, &[a1, a2, a3.clone()], 0).expect("a stop");
    assert_eq!(
        stop,
        Stop::Rejected {
            attempts: vec![2, 3],
            message: "generation failed: cfg 29.8 is out of range".to_owned()
        }
    );
    let r = crate::plan::conclude(&req, &p, vec![a3], &stop);
    assert_eq!(r.outcome, crate::contract::Outcome::Escalated);
    assert!(
        r.reason
            .starts_with("the backend refused attempts 2 and 3 with the same error"),
        "{}",
        r.reason
    );
}

/// Attempts 1..=n, each refused by the backend with the same error (the job URL aside).
fn refused_in_a_row(p: &RetryPolicy, n: u32) -> Vec<AttemptRecord> {
    (1..=n)
        .map(|k| {
            let mut plan = started(next(&request(), p, &[], &[], 0));
            plan.attempt = k;
            plan.errored(
                0,
                BACKEND_REJECTED,
                format!("generation failed: denoise 1.2 is out of range (GET http://c/job-{k})"),
                None,
            )
        })
        .collect()
}

#[test]
fn with_stop_after_same_refusals_0_the_same_refusal_never_stops_the_round() {
    let p = policy(json!({"max_attempts": 10, "stop_after_same_refusals": 0}));
    let attempts = refused_in_a_row(&p, 9);
    assert_eq!(decided(&p, &attempts, 0), None);
    // The round goes on to its last attempt, and ends because they are used up.
    assert_eq!(started(next(&request(), &p, &attempts, &[], 0)).attempt, 10);
    let all = refused_in_a_row(&p, 10);
    assert_eq!(decided(&p, &all, 0), None);
    assert!(
        matches!(
            next(&request(), &p, &all, &[], 0),
            Next::Stop(Stop::UserIntervention { attempt: 11, .. })
        ),
        "attempts used up"
    );
}

#[test]
fn with_stop_after_same_refusals_1_the_first_refusal_stops_the_round_saying_so() {
    let p = policy(json!({"max_attempts": 5, "stop_after_same_refusals": 1}));
    let attempts = refused_in_a_row(&p, 1);
    let stop = decided(&p, &attempts, 0).expect("a stop");
    assert_eq!(
        stop,
        Stop::Rejected {
            attempts: vec![1],
            message: "generation failed: denoise 1.2 is out of range".to_owned()
        }
    );
    let r = crate::plan::conclude(&request(), &p, attempts, &stop);
    assert_eq!(r.outcome, crate::contract::Outcome::Escalated);
    assert_eq!(
        r.reason,
        "the backend refused attempt 1 (generation failed: denoise 1.2 is out of range), and the \
         policy stops at the first refusal (stop_after_same_refusals: 1); flagged for human review"
    );
}

#[test]
fn by_default_the_second_same_refusal_in_a_row_stops_the_round() {
    let p = policy(json!({"max_attempts": 5}));
    assert_eq!(p.stop_after_same_refusals, 2);
    assert_eq!(decided(&p, &refused_in_a_row(&p, 1), 0), None);
    let attempts = refused_in_a_row(&p, 2);
    let stop = decided(&p, &attempts, 0).expect("a stop");
    let r = crate::plan::conclude(&request(), &p, attempts, &stop);
    assert_eq!(
        r.reason,
        "the backend refused attempts 1 and 2 with the same error, which other seeds and jitter \
         do not change (generation failed: denoise 1.2 is out of range); flagged for human review"
    );
}

#[test]
fn with_stop_after_same_refusals_3_three_in_a_row_are_named() {
    let p = policy(json!({"max_attempts": 5, "stop_after_same_refusals": 3}));
    assert_eq!(decided(&p, &refused_in_a_row(&p, 2), 0), None);
    let attempts = refused_in_a_row(&p, 3);
    let stop = decided(&p, &attempts, 0).expect("a stop");
    let r = crate::plan::conclude(&request(), &p, attempts, &stop);
    assert!(
        r.reason
            .starts_with("the backend refused attempts 1, 2 and 3 with the same error"),
        "{}",
        r.reason
    );
}

#[test]
fn numbering_goes_on_above_the_highest_attempt_recorded_not_the_count() {
    // Attempts 1 and 2 were claimed, then released (an escalation came before they started);
    // 3 and 4 ran and were recorded. A reviewer's next round must not plan a second attempt 3.
    let (req, p) = (
        request(),
        policy(json!({"max_attempts": 6, "parallelism": 2})),
    );
    let a3 = ladder::plan_attempt(&req, &p, &[], 3, crate::strategy::Strategy::Reseed);
    let a4 = ladder::plan_attempt(&req, &p, &[], 4, crate::strategy::Strategy::Reseed);
    let done = vec![scored(a3, &p, 0.3), scored(a4, &p, 0.3)];
    assert_eq!(started(next(&req, &p, &done, &[], 4)).attempt, 5);
    assert_eq!(started(next(&req, &p, &done, &[5], 4)).attempt, 6);
}

/// `n` attempts in flight after `done`: the numbers right above it.
fn fly(done: &[AttemptRecord], n: u32) -> Vec<u32> {
    let made = crate::plan::made(done);
    (made + 1..=made + n).collect()
}
