//! Reporting: statistics over recorded attempts.

use super::*;
use retake_domain::adapt::{ArmStats, EvidenceQuery, Variation};

/// Record attempt `n` of run `run` with the given status and GPU time for `scene_type`.
async fn recorded(store: &AnyStore, run: &str, n: u32, scene_type: &str, status: &str, ms: u64) {
    let mut rec = record(n, 0.5);
    rec.gpu_ms = ms;
    rec.status = serde_json::from_value(json!(status)).unwrap();
    let mut attempt = record_attempt(run, rec);
    attempt.scene_type = scene_type.parse().unwrap();
    store.record_attempt(&attempt).await.unwrap();
}

async fn the_gpu_time_quantile_counts_the_latest_attempts_that_generated(db: &TestDb) {
    let store = db.open().await;
    assert_eq!(
        store.gpu_ms_quantile("dialogue", 0.5, 10).await.unwrap(),
        None
    );
    // Oldest first; the quantile counts every attempt that generated: passed, failed, and
    // errors with GPU time. Aborts and errors before the GPU ran say nothing about it.
    recorded(&store, "r1", 1, "dialogue", "passed", 9000).await;
    recorded(&store, "r1", 2, "dialogue", "failed", 400).await;
    recorded(&store, "r1", 3, "dialogue", "error", 0).await;
    recorded(&store, "r1", 4, "dialogue", "aborted", 50_000).await;
    recorded(&store, "r2", 1, "dialogue", "error", 300).await;
    recorded(&store, "r2", 2, "dialogue", "failed", 100).await;
    recorded(&store, "r2", 3, "dialogue", "passed", 200).await;
    recorded(&store, "r3", 1, "action", "passed", 70_000).await;

    // Counted, newest first: 200, 100, 300, 400, 9000.
    let q = |q: f64, last: u32| {
        let store = store.clone();
        async move { store.gpu_ms_quantile("dialogue", q, last).await.unwrap() }
    };
    assert_eq!(q(0.0, 100).await, Some(100));
    assert_eq!(q(0.2, 100).await, Some(100));
    assert_eq!(q(0.21, 100).await, Some(200));
    assert_eq!(q(0.5, 100).await, Some(300));
    assert_eq!(q(0.8, 100).await, Some(400));
    assert_eq!(q(0.9, 100).await, Some(9000));
    assert_eq!(q(1.0, 100).await, Some(9000));
    // Nearest rank, exactly: 0.6 × 5 is rank 3, a billionth more is rank 4.
    assert_eq!(q(0.6, 100).await, Some(300));
    assert_eq!(q(0.600_000_001, 100).await, Some(400));
    // Only the 4 most recent of the counted attempts (recorded after the 9000 ms one).
    assert_eq!(q(1.0, 4).await, Some(400));
    assert_eq!(q(0.5, 2).await, Some(100));
    assert_eq!(q(0.5, 0).await, None);
    assert_eq!(
        store.gpu_ms_quantile("action", 0.5, 10).await.unwrap(),
        Some(70_000)
    );
    assert_eq!(store.gpu_ms_quantile("crowd", 0.5, 10).await.unwrap(), None);
    // Re-recording an attempt (a retried activity) keeps its place among the latest.
    recorded(&store, "r1", 1, "dialogue", "passed", 8000).await;
    assert_eq!(q(1.0, 5).await, Some(8000));
    assert_eq!(q(1.0, 4).await, Some(400));
}

async fn a_quantile_outside_zero_to_one_is_invalid(db: &TestDb) {
    let store = db.open().await;
    recorded(&store, "r1", 1, "dialogue", "passed", 100).await;
    for q in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let err = store.gpu_ms_quantile("dialogue", q, 10).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{q}: {err:?}");
    }
}

/// Record attempt 1 of run `run`: `arms` tried on `targets`, passed or not, with `gain`.
async fn varied(
    store: &AnyStore,
    run: &str,
    arms: &[&str],
    passed: bool,
    gain: f64,
    scope: Option<&str>,
) {
    let mut rec = record(1, if passed { 0.9 } else { 0.3 });
    rec.passed = passed;
    rec.status = if passed {
        AttemptStatus::Passed
    } else {
        AttemptStatus::Failed
    };
    rec.variation = Some(Variation {
        arms: arms.iter().map(|a| a.to_string()).collect(),
        targets: vec!["face_melt".into()],
        gain: Some(gain),
        scope: scope.map(str::to_owned),
        ..Variation::default()
    });
    store
        .record_attempt(&record_attempt(run, rec))
        .await
        .unwrap();
}

fn arm(arm: &str, attempts: u32, passes: u32, gain_sum: f64) -> ArmStats {
    ArmStats {
        failure_kind: "face_melt".into(),
        arm: arm.into(),
        attempts,
        passes,
        gain_sum,
    }
}

async fn evidence_counts_the_latest_scored_attempts_per_failure_kind_and_arm(db: &TestDb) {
    let store = db.open().await;
    let all = EvidenceQuery {
        window: 100,
        scope: None,
    };
    varied(&store, "r1", &["cfg_scale-"], true, 0.3, None).await;
    varied(
        &store,
        "r2",
        &["cfg_scale-", "denoise_strength+"],
        false,
        -0.05,
        None,
    )
    .await;
    varied(&store, "r3", &["reseed"], false, 0.0, None).await;
    varied(&store, "r4", &["cfg_scale+"], true, 0.2, Some("model-v2")).await;
    // An attempt that errored says nothing about what fixes a face.
    let mut errored = record(1, 0.0);
    errored.status = AttemptStatus::Error;
    errored.passed = false;
    errored.variation = Some(Variation {
        arms: vec!["cfg_scale-".into()],
        targets: vec!["face_melt".into()],
        ..Variation::default()
    });
    store
        .record_attempt(&record_attempt("r5", errored))
        .await
        .unwrap();

    let e = store.evidence("dialogue", &all).await.unwrap();
    assert_eq!(
        e.rows,
        [
            arm("cfg_scale-", 2, 1, 0.25),
            arm("denoise_strength+", 1, 0, -0.05),
            arm("reseed", 1, 0, 0.0),
        ]
    );
    // The window counts attempts, newest first: the last scored one in scope is r3's.
    let latest = EvidenceQuery {
        window: 1,
        scope: None,
    };
    assert_eq!(
        store.evidence("dialogue", &latest).await.unwrap().rows,
        [arm("reseed", 1, 0, 0.0)]
    );
    let scoped = EvidenceQuery {
        window: 100,
        scope: Some("model-v2".into()),
    };
    assert_eq!(
        store.evidence("dialogue", &scoped).await.unwrap().rows,
        [arm("cfg_scale+", 1, 1, 0.2)]
    );
    assert!(
        store
            .evidence("action", &all)
            .await
            .unwrap()
            .rows
            .is_empty()
    );
    // Recording an attempt again replaces what it counted.
    varied(&store, "r3", &["reseed"], true, 0.4, None).await;
    let again = store.evidence("dialogue", &all).await.unwrap();
    assert_eq!(again.rows[2], arm("reseed", 1, 1, 0.4));
}

store_tests! {
    #[tokio::test] evidence_counts_the_latest_scored_attempts_per_failure_kind_and_arm,
    #[tokio::test] the_gpu_time_quantile_counts_the_latest_attempts_that_generated,
    #[tokio::test] a_quantile_outside_zero_to_one_is_invalid,
}
