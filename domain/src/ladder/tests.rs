use super::*;
use crate::contract::{AttemptStatus, QaScores};
use crate::stop::Stop;
use serde_json::json;

fn chapter_request() -> RetryRequest {
    RetryRequest::parse(&json!({
        "segment_id": "novel-7-ch12", "project_id": "novel-7", "scene_type": "chapter",
        "params": {"seed": 42, "chapter": 12, "temperature": 0.8,
                   "output_uri": "file:///drafts/ch12.md"},
        "failed_qa": {
            "failures": ["below_threshold"],
            "breakdown": [
                {"category": "narrative_quality", "score": 0.70, "feedback": "전개가 느립니다"},
                {"category": "character_consistency", "score": 0.54, "feedback": "말투가 바뀝니다"}
            ]
        }
    }))
    .unwrap()
}

fn text_policy() -> RetryPolicy {
    RetryPolicy::parse(&json!({"enabled": true, "profile": "text", "max_attempts": 4})).unwrap()
}

/// A scored attempt with the given category scores.
fn scored_attempt(plan: AttemptPlan, policy: &RetryPolicy, cats: &[(&str, f64)]) -> AttemptRecord {
    let k = plan.attempt;
    plan.scored(
        policy,
        QaScores {
            breakdown: cats
                .iter()
                .map(|(c, s)| CategoryScore {
                    category: (*c).into(),
                    score: *s,
                    feedback: format!("{c} feedback {k}"),
                })
                .collect(),
            ..Default::default()
        },
        0,
        Some(format!("file:///drafts/ch12-{k}.md")),
    )
}

#[test]
fn the_first_text_attempt_revises_the_failed_draft_with_a_korean_prompt() {
    let (req, policy) = (chapter_request(), text_policy());
    let plan = next(&req, &policy, &[], 0).unwrap();
    assert_eq!(plan.strategy, Some(Strategy::Revise));
    assert_eq!(plan.revises, Some(0));
    assert_eq!(plan.revise_uri.as_deref(), Some("file:///drafts/ch12.md"));
    let prompt = plan.prompt.unwrap();
    assert!(
        prompt
            .starts_with("12화를 수정해 주세요. 현재 점수는 62점으로 기준 점수 75점에 미달합니다."),
        "{prompt}"
    );
}

#[test]
fn the_text_ladder_walks_to_user_intervention_with_feedback_and_a_target() {
    let (req, policy) = (chapter_request(), text_policy());
    let mut attempts = vec![];
    let p1 = next(&req, &policy, &attempts, 0).unwrap();
    attempts.push(scored_attempt(
        p1,
        &policy,
        &[("narrative_quality", 0.72), ("plot_consistency", 0.66)],
    ));
    assert_eq!(attempts[0].status, AttemptStatus::Failed);
    assert!((attempts[0].scores["overall"] - 0.69).abs() < 1e-9);

    let p2 = next(&req, &policy, &attempts, 0).unwrap();
    assert_eq!(p2.strategy, Some(Strategy::ReviseWithFeedback));
    assert_eq!(
        p2.revises,
        Some(1),
        "attempt 1 (69) beats the failed draft (62)"
    );
    let prompt = p2.prompt.clone().unwrap();
    assert!(
        prompt.contains("- 플롯 일관성 66점: plot_consistency feedback 1"),
        "{prompt}"
    );
    attempts.push(scored_attempt(
        p2,
        &policy,
        &[("narrative_quality", 0.60), ("setting_adherence", 0.64)],
    ));

    let p3 = next(&req, &policy, &attempts, 0).unwrap();
    assert_eq!(p3.strategy, Some(Strategy::PartialRewrite));
    assert_eq!(
        p3.revises,
        Some(1),
        "attempt 2 (62) is worse than attempt 1"
    );
    assert!(p3.prompt.as_deref().unwrap().contains("플롯 일관성(66점)"));
    attempts.push(scored_attempt(
        p3,
        &policy,
        &[("narrative_quality", 0.70), ("plot_consistency", 0.70)],
    ));

    match next(&req, &policy, &attempts, 0) {
        Err(Stop::UserIntervention {
            attempt: 4,
            message,
        }) => assert_eq!(
            message,
            "12화는 3번의 자동 수정 시도 후에도 기준 점수 75점에 도달하지 못했습니다 \
             (최고 점수 70점). 작가의 직접 검토가 필요합니다."
        ),
        other => panic!("expected user intervention, got {other:?}"),
    }
}

#[test]
fn running_out_of_attempts_also_ends_with_the_intervention_message() {
    let req = chapter_request();
    let policy = RetryPolicy::parse(
        &json!({"enabled": true, "profile": "text", "max_attempts": 1, "language": "en"}),
    )
    .unwrap();
    let p1 = next(&req, &policy, &[], 0).unwrap();
    let attempts = vec![scored_attempt(p1, &policy, &[("narrative_quality", 0.5)])];
    let Err(Stop::UserIntervention { message, .. }) = next(&req, &policy, &attempts, 0) else {
        panic!("expected user intervention");
    };
    assert!(
        message.contains("threshold of 75 after 1 automatic attempts (best score 50)"),
        "{message}"
    );
}

#[test]
fn a_passing_revision_stops_the_ladder() {
    let (req, policy) = (chapter_request(), text_policy());
    let p1 = next(&req, &policy, &[], 0).unwrap();
    let attempts = vec![scored_attempt(
        p1,
        &policy,
        &[("narrative_quality", 0.8), ("plot_consistency", 0.9)],
    )];
    assert!(attempts[0].passed);
    assert_eq!(next(&req, &policy, &attempts, 0).unwrap_err(), Stop::Passed);
}

#[test]
fn the_media_ladder_reseeds_without_jitter_first_then_with_it() {
    let req = RetryRequest::parse(&json!({
        "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
        "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6},
        "failed_qa": {"scores": {"face": 0.42}, "failures": ["face_melt"]}
    }))
    .unwrap();
    let policy = RetryPolicy::parse(&json!({"enabled": true})).unwrap();
    let p1 = next(&req, &policy, &[], 0).unwrap();
    assert_eq!(p1.strategy, Some(Strategy::Reseed));
    assert!(p1.jitter.is_empty() && p1.prompt.is_none());
    assert_eq!(p1.params.number("cfg_scale"), Some(7.0));
    assert_ne!(p1.seed, 1234);
    let p2 = plan_attempt(&req, &policy, &[], 2, strategy::rung(&policy.ladder, 2));
    assert_eq!(p2.strategy, Some(Strategy::ReseedJitter));
    assert_eq!(p2.jitter.len(), 2);
    assert_eq!(
        p2.seed,
        crate::seed::attempt_seed("5", 1234, 2, policy.seed_bits),
        "the seed follows the attempt number, whatever the rung"
    );
}

#[test]
fn a_custom_english_template_is_used() {
    let req = chapter_request();
    let policy = RetryPolicy::parse(&json!({
        "enabled": true, "profile": "text", "language": "en",
        "prompts": {"revise": "Chapter {chapter}: {score}/{threshold}. Fix {target}."}
    }))
    .unwrap();
    let p = next(&req, &policy, &[], 0).unwrap();
    assert_eq!(
        p.prompt.as_deref(),
        Some("Chapter 12: 62/75. Fix character consistency.")
    );
}

#[test]
fn the_readme_example_reseeds_attempt_one_and_jitters_attempt_two() {
    let req = RetryRequest::parse(&json!({
        "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
        "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6, "sampler": "euler"},
        "failed_qa": {"failures": ["face_melt"]}
    }))
    .unwrap();
    let policy = RetryPolicy::parse(&json!({"enabled": true})).unwrap();
    let p1 = next(&req, &policy, &[], 0).unwrap();
    assert_eq!((p1.seed, p1.jitter.len()), (5_760_749_790_915_036, 0));
    let p2 = plan_attempt(&req, &policy, &[], 2, Strategy::ReseedJitter);
    assert_eq!(p2.seed, 8_406_589_542_879_644);
    let values: Vec<f64> = p2.jitter.iter().map(|c| c.value).collect();
    assert_eq!(values, [7.0143, 0.6116]);
}

#[test]
fn the_cost_rule_stops_before_an_attempt_that_costs_more_than_it_saves() {
    let req = chapter_request();
    let policy = RetryPolicy::parse(&json!({
        "enabled": true, "profile": "text", "est_gpu_ms_per_attempt": 30000,
        "cost_rule": {"review_cost_gpu_ms": 200000, "fix_chance": [0.4, 0.2, 0.1]}
    }))
    .unwrap();
    let p1 = next(&req, &policy, &[], 0).unwrap();
    let attempts = vec![scored_attempt(p1, &policy, &[("narrative_quality", 0.5)])];
    let p2 = next(&req, &policy, &attempts, 0).unwrap();
    let attempts = vec![
        attempts[0].clone(),
        scored_attempt(p2, &policy, &[("narrative_quality", 0.5)]),
    ];
    // Attempt 3 would save 0.1 × 200000 = 20000 GPU ms, less than the 30000 it costs.
    let stop = next(&req, &policy, &attempts, 0).unwrap_err();
    match &stop {
        Stop::NotWorthIt {
            attempt: 3,
            cost_ms: 30000,
            saving_ms,
            ..
        } => assert!((saving_ms - 20_000.0).abs() < 1e-6),
        other => panic!("expected the cost rule to stop, got {other:?}"),
    }
    let result = crate::plan::conclude(&req, &policy, attempts, &stop);
    assert_eq!(result.outcome, crate::contract::Outcome::Escalated);
    assert!(
        result.reason.starts_with(
            "stopped before attempt 3 by the cost rule: it would fix the segment with chance 0.10, \
             saving 20000 GPU ms of review against 30000 GPU ms per attempt"
        ),
        "{}",
        result.reason
    );
}

#[test]
fn a_partial_rewrite_without_a_breakdown_uses_the_revise_prompt_and_says_so() {
    let mut req = chapter_request();
    req.failed_qa.breakdown.clear();
    req.failed_qa.scores = [("overall".to_owned(), 0.6)].into();
    let policy = RetryPolicy::parse(&json!({
        "enabled": true, "profile": "text", "ladder": ["partial_rewrite"]
    }))
    .unwrap();

    let plan = next(&req, &policy, &[], 0).unwrap();

    assert_eq!(plan.strategy, Some(Strategy::PartialRewrite));
    let prompt = plan.prompt.unwrap();
    assert!(!prompt.contains('?'), "no holes: {prompt}");
    assert!(
        prompt.starts_with("12화를 수정해 주세요. 현재 점수는 60점"),
        "{prompt}"
    );
    let note = plan.note.unwrap();
    assert!(
        note.contains("partial_rewrite needs the scorer's category breakdown"),
        "{note}"
    );
}

#[test]
fn a_partial_rewrite_with_a_breakdown_targets_the_lowest_category_without_a_note() {
    let policy = RetryPolicy::parse(&json!({
        "enabled": true, "profile": "text", "ladder": ["partial_rewrite"]
    }))
    .unwrap();

    let plan = next(&chapter_request(), &policy, &[], 0).unwrap();

    assert!(plan.prompt.unwrap().contains("(54점)"));
    assert_eq!(plan.note, None);
}

#[test]
fn the_media_escalation_quotes_the_best_gated_score_not_a_mean_of_every_metric() {
    // Gated on face only; motion scores high and would lift a mean of every metric to 75.
    let policy = RetryPolicy::parse(&json!({
        "enabled": true, "thresholds": {"face": 0.7}, "max_attempts": 2
    }))
    .unwrap();
    let req = RetryRequest::parse(&json!({
        "segment_id": "5", "project_id": "p", "scene_type": "dialogue",
        "params": {"seed": 1},
        "failed_qa": {"scores": {"face": 0.4, "motion": 0.9}, "failures": ["face_melt"]}
    }))
    .unwrap();
    let mut attempts = vec![];
    for face in [0.62, 0.55] {
        let plan = next(&req, &policy, &attempts, 0).unwrap();
        attempts.push(plan.scored(
            &policy,
            QaScores {
                scores: [("face".to_owned(), face), ("motion".to_owned(), 0.88)].into(),
                ..Default::default()
            },
            0,
            None,
        ));
    }

    let Err(Stop::UserIntervention { message, .. }) = next(&req, &policy, &attempts, 0) else {
        panic!("two failed attempts of two end the ladder");
    };

    assert!(
        message.contains("did not pass QA (face 70) after 2 attempts (best face 62)"),
        "{message}"
    );
}
