use super::*;
use crate::simulate::{self, Defect};
use serde_json::json;

/// Scenarios the suite runs; `retake-bench simulate` runs longer campaigns.
const SCENARIOS: u64 = 10_000;

#[test]
fn ten_thousand_simulated_runs_keep_every_invariant() {
    match simulate::campaign(0..SCENARIOS, None) {
        Ok((scenarios, steps)) => {
            assert_eq!(scenarios, SCENARIOS);
            assert!(steps > SCENARIOS * 10, "{steps} steps");
        }
        Err((seed, explained)) => panic!("scenario {seed} fails:\n{explained}"),
    }
}

fn caught(defect: Defect) -> String {
    match simulate::campaign(0..SCENARIOS, Some(defect)) {
        Ok(_) => panic!("{defect:?} was not caught"),
        Err((_, explained)) => explained,
    }
}

#[test]
fn a_rerun_billed_twice_is_caught_and_shrunk() {
    let explained = caught(Defect::RerunBilledTwice);
    assert!(
        explained.contains("GPU billed = the sum of what each run reported"),
        "{explained}"
    );
}

#[test]
fn an_attempt_recorded_twice_is_caught() {
    let explained = caught(Defect::RecordedTwice);
    assert!(explained.contains("recorded exactly once"), "{explained}");
}

#[test]
fn an_attempt_started_after_an_abort_is_caught() {
    let explained = caught(Defect::StartAfterAbort);
    assert!(explained.contains("after an abort"), "{explained}");
}

fn request(policy: serde_json::Value) -> Box<RetryRequest> {
    Box::new(
        RetryRequest::parse(&json!({
            "segment_id": "5", "project_id": "p1", "scene_type": "dialogue",
            "params": {"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6},
            "failed_qa": {"scores": {"face": 0.42, "motion": 0.81}, "failures": ["face_melt"]},
            "policy": policy,
        }))
        .unwrap(),
    )
}

fn started(policy: serde_json::Value) -> (Machine, Vec<Command>) {
    let mut m = Machine::new();
    let commands = m.on(Event::Started {
        req: request(policy),
        settings: Settings {
            policy: None,
            seed_bits: 53,
            params_taken: None,
        },
    });
    (m, commands)
}

#[test]
fn a_disabled_policy_records_not_retried_and_finishes() {
    let (mut m, commands) = started(json!({"enabled": false}));
    assert!(
        matches!(&commands[..], [Command::Publish(p), Command::RecordOutcome { .. }] if p == "not_retried")
    );
    let done = m.on(Event::OutcomeRecorded);
    assert!(matches!(&done[..], [Command::Finish(r)] if r.outcome == Outcome::NotRetried));
    assert_eq!(m.phase(), Phase::Finished);
}

#[test]
fn parallel_attempts_reserve_at_once_and_a_rerun_bills_each_run_once() {
    let (mut m, commands) = started(json!({"enabled": true, "parallelism": 2, "max_attempts": 2}));
    assert_eq!(
        commands,
        vec![
            Command::Reserve {
                attempt: 1,
                gpu_ms: 60_000,
                eager: true
            },
            Command::Reserve {
                attempt: 2,
                gpu_ms: 60_000,
                eager: true
            },
        ]
    );
    let c = m.on(Event::Reserved {
        attempt: 1,
        gpu_ms: 60_000,
        eager: false,
    });
    assert!(matches!(&c[..], [Command::Generate(g)] if g.run == 0 && g.on == On::Shared));
    let failed = RunFailure {
        kind: FailureKind::Infrastructure,
        error_type: "InfrastructureFailure".into(),
        message: "CUDA out of memory".into(),
        gpu_ms: 4_232,
        output_uri: None,
        worker: Some("gpu-a".into()),
    };
    let c = m.on(Event::GenerationFailed {
        attempt: 1,
        run: 0,
        failure: failed,
    });
    assert_eq!(
        c,
        vec![Command::Place {
            attempt: 1,
            avoid: vec!["gpu-a".into()],
            prefer: None
        }]
    );
    let target = Target {
        worker: "gpu-b".into(),
        queue: "q/generate/gpu-b".into(),
    };
    let c = m.on(Event::Placed {
        attempt: 1,
        target: Some(target.clone()),
    });
    assert!(
        matches!(&c[..], [Command::Generate(g)] if g.run == 1 && g.on == On::Worker(target.clone()) && g.reserved_ms == 60_000 - 4_232),
        "{c:?}"
    );
    let c = m.on(Event::Generated {
        attempt: 1,
        run: 1,
        gpu_ms: 10_131,
        output_uri: "file:///o.png".into(),
        worker: Some("gpu-b".into()),
    });
    assert!(matches!(&c[..], [Command::Score { attempt: 1, .. }]));
    let qa = QaScores {
        scores: crate::contract::Scores::from([("face".into(), 0.9), ("motion".into(), 0.9)]),
        ..Default::default()
    };
    let c = m.on(Event::Scored { attempt: 1, qa });
    // Passed first: attempt 2 (reserving) will not start; the record bills both runs once.
    let Command::Record {
        record, settle_ms, ..
    } = &c[0]
    else {
        panic!("{c:?}")
    };
    assert_eq!((record.gpu_ms, *settle_ms), (14_363, 14_363));
    assert_eq!(record.worker.as_deref(), Some("gpu-b"));
    assert!(
        record
            .note
            .as_deref()
            .unwrap()
            .contains("re-run after InfrastructureFailure")
    );
    let c = m.on(Event::Reserved {
        attempt: 2,
        gpu_ms: 60_000,
        eager: false,
    });
    assert_eq!(c, vec![Command::Release { attempt: 2 }]);
}

#[test]
fn an_abort_in_review_ends_the_wait_and_the_run_aborted() {
    let (mut m, _) = started(json!({"enabled": true, "max_attempts": 1}));
    m.on(Event::Reserved {
        attempt: 1,
        gpu_ms: 60_000,
        eager: false,
    });
    m.on(Event::Generated {
        attempt: 1,
        run: 0,
        gpu_ms: 5,
        output_uri: "file:///o.png".into(),
        worker: None,
    });
    let qa = QaScores {
        scores: crate::contract::Scores::from([("face".into(), 0.1), ("motion".into(), 0.9)]),
        ..Default::default()
    };
    m.on(Event::Scored { attempt: 1, qa });
    let c = m.on(Event::Recorded { attempt: 1 });
    assert!(
        matches!(&c[..], [Command::Publish(p), Command::RecordOutcome { review: Review::Pending, .. }] if p == "awaiting_review"),
        "{c:?}"
    );
    assert!(m.decidable().is_err(), "not before the review is recorded");
    let c = m.on(Event::OutcomeRecorded);
    assert_eq!(
        c,
        vec![Command::AwaitReview {
            window_secs: 86_400
        }]
    );
    assert_eq!(m.phase(), Phase::AwaitingReview);
    assert!(m.decidable().is_ok());
    let abort = CreatorEvent::from_signal("abort", &json!({"by": "mina"}));
    let c = m.on(Event::Abort(abort));
    assert!(
        matches!(&c[..], [Command::EndReviewWait, Command::Publish(p), Command::RecordOutcome { review: Review::None, .. }] if p == "aborted"),
        "{c:?}"
    );
    assert!(m.decidable().is_err(), "the review is closing");
}
