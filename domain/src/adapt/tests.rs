use super::*;
use crate::contract::{AttemptRecord, RetryRequest};
use crate::ladder;
use crate::strategy::Strategy;
use serde_json::json;

fn policy(ladder: &[&str]) -> RetryPolicy {
    RetryPolicy::parse(&json!({"enabled": true, "max_attempts": 3, "ladder": ladder})).unwrap()
}

fn request() -> RetryRequest {
    RetryRequest::parse(&json!({
        "segment_id": "seg-5", "project_id": "p", "scene_type": "dialogue",
        "params": {"seed": 7, "cfg_scale": 7.5, "denoise_strength": 0.6},
        "failed_qa": {"scores": {"face": 0.42}, "failures": ["face_melt"]}
    }))
    .unwrap()
}

fn stats(kind: &str, arm: &str, attempts: u32, passes: u32) -> ArmStats {
    ArmStats {
        failure_kind: kind.into(),
        arm: arm.into(),
        attempts,
        passes,
        gain_sum: 0.0,
    }
}

/// Evidence that lowering CFG fixes face melts and nothing else does.
fn cfg_down_fixes_faces() -> Evidence {
    Evidence {
        rows: vec![
            stats("face_melt", "cfg_scale-", 60, 41),
            stats("face_melt", "cfg_scale+", 55, 4),
            stats("face_melt", "denoise_strength+", 58, 6),
            stats("face_melt", "denoise_strength-", 57, 5),
            stats("face_melt", "reseed", 40, 5),
            stats("motion_score", "cfg_scale+", 100, 100),
        ],
    }
}

fn planned(policy: &RetryPolicy, evidence: Option<&Evidence>) -> crate::plan::AttemptPlan {
    let plan = ladder::next(&request(), policy, &[], 0).unwrap();
    match evidence {
        Some(e) => ladder::adapt(policy, plan, e),
        None => plan,
    }
}

#[test]
fn the_candidates_are_reseed_and_each_varied_parameter_up_and_down() {
    let arms = candidates(&policy(&["adaptive"]), &request().params);
    assert_eq!(
        arms,
        [
            "cfg_scale+",
            "cfg_scale-",
            "denoise_strength+",
            "denoise_strength-",
            "reseed"
        ]
    );
}

#[test]
fn a_parameter_at_its_bound_cannot_move_past_it() {
    let params =
        Params::parse(&json!({"seed": 1, "cfg_scale": 30.0, "denoise_strength": 0.0})).unwrap();
    let arms = candidates(&policy(&["adaptive"]), &params);
    assert_eq!(arms, ["cfg_scale-", "denoise_strength+", "reseed"]);
}

#[test]
fn with_too_little_evidence_an_adaptive_rung_plans_exactly_as_reseed_jitter() {
    let adaptive = policy(&["adaptive"]);
    let few = Evidence {
        rows: vec![stats("face_melt", "cfg_scale-", 20, 19)],
    };
    let cold = planned(&adaptive, Some(&few));
    let fixed = planned(&policy(&["reseed_jitter"]), None);
    assert_eq!(
        (cold.seed, &cold.params, &cold.jitter),
        (fixed.seed, &fixed.params, &fixed.jitter)
    );
    let v = cold.variation.unwrap();
    assert_eq!(v.chosen_by, ChosenBy::ColdStart);
    assert!(v.why.unwrap().contains("20 earlier attempts"));
}

#[test]
fn strong_evidence_moves_the_parameter_that_fixed_the_failure_in_its_direction() {
    let p = policy(&["adaptive"]);
    let evidence = cfg_down_fixes_faces();
    let mut down = 0;
    for seed in 0..200u64 {
        let Choice::Arm {
            arm,
            params,
            changes,
            ..
        } = choose(
            &p,
            &request().params,
            &["face_melt".into()],
            &evidence,
            seed,
        )
        else {
            panic!("enough evidence");
        };
        if arm == "cfg_scale-" {
            down += 1;
            let cfg = params.number("cfg_scale").unwrap();
            // Half to all of the range (0.5) below 7.5; the other parameter untouched.
            assert!((7.0..=7.25).contains(&cfg), "{cfg}");
            assert_eq!(params.number("denoise_strength"), Some(0.6));
            assert_eq!(changes.len(), 1);
        }
    }
    // P(θ for 41/60 beats θ for ≤ 6/58) is above 0.999 per draw.
    assert!(down >= 195, "chose cfg_scale- {down} times of 200");
}

#[test]
fn the_choice_is_a_function_of_evidence_policy_and_seed() {
    let p = policy(&["adaptive"]);
    let e = cfg_down_fixes_faces();
    let targets = ["face_melt".to_owned()];
    let a = choose(&p, &request().params, &targets, &e, 99);
    let b = choose(&p, &request().params, &targets, &e, 99);
    assert_eq!(a, b);
}

#[test]
fn an_adaptive_attempt_records_its_move_and_why() {
    let plan = planned(&policy(&["adaptive"]), Some(&cfg_down_fixes_faces()));
    let v = plan.variation.unwrap();
    assert_eq!(v.chosen_by, ChosenBy::Adaptive);
    assert_eq!(v.arms, ["cfg_scale-"]);
    assert_eq!(v.targets, ["face_melt"]);
    assert_eq!(v.moves.len(), 1);
    assert!(v.moves[0].delta < 0.0);
    let why = v.why.unwrap();
    assert!(
        why.starts_with("cfg_scale-: fixed face_melt in 41 of 60 earlier attempts"),
        "{why}"
    );
    assert_eq!(plan.strategy, Some(Strategy::Adaptive));
    assert_eq!(plan.params.seed(), plan.seed);
}

#[test]
fn evidence_on_other_failure_kinds_does_not_count() {
    // Only motion evidence: for a face melt it is a cold start.
    let e = Evidence {
        rows: vec![stats("motion_score", "cfg_scale+", 100, 100)],
    };
    let p = policy(&["adaptive"]);
    let c = choose(&p, &request().params, &["face_melt".into()], &e, 1);
    assert!(matches!(c, Choice::ColdStart { .. }));
}

#[test]
fn a_ladder_attempt_records_its_jitter_as_moves_and_arms() {
    let plan = planned(&policy(&["reseed_jitter"]), None);
    let v = plan.variation.unwrap();
    assert_eq!(v.chosen_by, ChosenBy::Ladder);
    assert_eq!(v.moves.len(), plan.jitter.len());
    for (m, arm) in v.moves.iter().zip(&v.arms) {
        assert_eq!(
            arm,
            &format!("{}{}", m.param, if m.delta < 0.0 { '-' } else { '+' })
        );
    }
    let reseed = planned(&policy(&["reseed"]), None).variation.unwrap();
    assert_eq!(reseed.arms, ["reseed"]);
    assert!(reseed.moves.is_empty());
}

#[test]
fn moves_read_as_signed_deltas() {
    let v = Variation::of(
        &[
            ParamChange {
                param: "cfg_scale".into(),
                original: 7.5,
                value: 7.1,
            },
            ParamChange {
                param: "denoise_strength".into(),
                original: 0.6,
                value: 0.63,
            },
        ],
        None,
    );
    assert_eq!(v.words(), "cfg_scale −0.4, denoise_strength +0.03");
    assert_eq!(v.arms, ["cfg_scale-", "denoise_strength+"]);
}

#[test]
fn the_wilson_interval_matches_its_formula() {
    let (lo, hi) = wilson(41, 60);
    assert!((lo - 0.557_662).abs() < 1e-5 && (hi - 0.786_941).abs() < 1e-5);
    assert_eq!(wilson(0, 0), (0.0, 1.0));
    let (lo, hi) = wilson(0, 10);
    assert_eq!(lo, 0.0);
    assert!(hi > 0.25 && hi < 0.35);
}

#[test]
fn a_tally_counts_each_scored_attempt_once_per_target_and_arm() {
    let p = policy(&["adaptive"]);
    let plan = planned(&p, Some(&cfg_down_fixes_faces()));
    let passed: AttemptRecord = plan.clone().scored(
        &p,
        crate::contract::QaScores {
            scores: [("face".to_owned(), 0.9), ("motion".to_owned(), 0.9)].into(),
            ..Default::default()
        },
        10,
        None,
    );
    let errored = plan.errored(5, "BackendTransient", "x".into(), None);
    let rows = tally([&passed, &passed, &errored]);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].attempts, rows[0].passes), (2, 2));
    // Gain: quality 0.9 from the failed generation's (0.42 face, no motion score: 0.21).
    let gain = passed.variation.unwrap().gain.unwrap();
    assert!((gain - 0.69).abs() < 1e-9, "{gain}");
    let insight = &insights(&rows)[0];
    assert_eq!(insight.pass_rate, 1.0);
}
