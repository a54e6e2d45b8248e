//! Truthful attempt records: what the backend said and used is what `retry_attempts`, the result
//! and the report say.

use crate::cli::{retake, stdout};
use crate::harness::{
    CANCELLED_GPU_MS, FAILED_GPU_MS, Failure, FakeComfyUi, FakeJobs, TestApp, request, spawn_app,
};
use crate::ladder::{action_request, http_app};
use retake_activities::backends::BackendsConfig;
use retake_domain::contract::{AttemptStatus, Outcome};
use serde_json::json;

#[tokio::test]
async fn a_failed_generation_records_the_backends_message_type_and_gpu_time() {
    let message = "Prompt outputs failed validation; node 2 (ImageAddNoise): Value 7.0 bigger \
                   than max of 1.0: strength";
    let jobs = FakeJobs::failing(None, Failure::Generation(message.to_owned())).await;
    let app = http_app(&jobs).await;
    let segment = format!("{}-rejected", app.tag);

    let result = app.retry(action_request(&app, "rejected")).await;

    assert_eq!(result.outcome, Outcome::Escalated);
    // The same refusal of attempt 2, with another seed and jitter: retrying stops there and says
    // why (the default policy allows 5), rather than sending the request 5 times.
    assert_eq!(result.attempts.len(), 2, "{}", result.report);
    assert!(
        result
            .reason
            .starts_with("the backend refused attempts 1 and 2 with the same error"),
        "{}",
        result.reason
    );
    let a = &result.attempts[0];
    assert_eq!(a.status, AttemptStatus::Error);
    assert_eq!(a.error_type.as_deref(), Some("BackendRejected"));
    let error = a.error.as_deref().unwrap();
    assert!(error.starts_with("generation failed: "), "{error}");
    assert!(
        error.contains(message),
        "the adapter's message, not a wrapper: {error}"
    );
    assert!(!error.contains("Activity task failed"), "{error}");
    assert_eq!(
        a.gpu_ms, FAILED_GPU_MS,
        "the GPU time the failed job reported"
    );
    assert!(
        result
            .report
            .contains("(BackendRejected: generation failed:"),
        "{}",
        result.report
    );
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(
        rows[0].record, *a,
        "the row says exactly what the result says"
    );
    let budget = app.store.budget("p1").await.unwrap().unwrap();
    assert_eq!(budget.spent_ms, result.gpu_ms_total);
    assert_eq!(budget.reserved_ms, 0);
    let history = stdout(&retake(&app, &["history", &segment]).await);
    assert!(
        history.contains(&format!(
            "BackendRejected: generation failed: the job failed: {message}"
        )),
        "{history}"
    );
}

#[tokio::test]
async fn an_attempt_whose_scoring_failed_keeps_its_output_and_the_scorers_message() {
    let jobs = FakeJobs::failing(Some(1), Failure::ScoreOutOfRange).await;
    let app = http_app(&jobs).await;
    let segment = format!("{}-badscore", app.tag);

    let result = app.retry(action_request(&app, "badscore")).await;

    let a = &result.attempts[0];
    assert_eq!(a.status, AttemptStatus::Error);
    assert_eq!(a.error_type.as_deref(), Some("BackendRejected"));
    let error = a.error.as_deref().unwrap();
    assert!(error.starts_with("QA scoring failed: "), "{error}");
    assert!(
        error.contains("scores.face: must be within 0..=1, got 1.7"),
        "{error}"
    );
    assert_eq!(a.output_uri.as_deref(), Some("s3://renders/job-0.mp4"));
    assert_eq!(a.gpu_ms, 4321, "generation succeeded and is billed");
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(rows[0].record.output_uri, a.output_uri);
}

#[tokio::test]
async fn a_failure_of_a_kind_not_retried_on_beside_one_that_is_is_not_retried() {
    let app = spawn_app().await;
    let segment = format!("{}-mixed", app.tag);
    let mut input = request(&segment, "p1", Some(json!({"enabled": true})));
    input["failed_qa"]["failures"] = json!(["face_melt", "motion_score"]);

    let result = app.retry(input).await;

    assert_eq!(result.outcome, Outcome::NotRetried);
    assert!(result.attempts.is_empty(), "no GPU spent on it");
    assert!(result.reason.contains("motion_score"), "{}", result.reason);
    assert!(
        result.report.contains("mixed_failures"),
        "{}",
        result.report
    );

    let mut input = request(
        &format!("{segment}-retry"),
        "p1",
        Some(json!({"enabled": true, "mixed_failures": "retry"})),
    );
    input["failed_qa"]["failures"] = json!(["face_melt", "motion_score"]);
    let result = app.retry(input).await;
    assert_ne!(
        result.outcome,
        Outcome::NotRetried,
        "the policy may choose to retry"
    );
}

#[tokio::test]
async fn an_abort_whose_backend_takes_longer_than_the_heartbeat_timeout_to_stop_is_billed() {
    // The job stops 4.5 s after its DELETE (the heartbeat timeout is 3 s), as ComfyUI does when
    // the abort lands in a long node: the attempt must stay alive until the backend says what it
    // used, not time out and lose it.
    let slow = Failure::SlowCancel(std::time::Duration::from_millis(4_500));
    let jobs = FakeJobs::failing(None, slow).await;
    let app = http_app(&jobs).await;
    let segment = format!("{}-slowstop", app.tag);
    let handle = app.start(action_request(&app, "slowstop")).await;
    let result = app.abort_first_attempt(&segment, &handle).await;

    assert_eq!(result.outcome, Outcome::Aborted, "{}", result.report);
    let a = &result.attempts[0];
    assert_eq!(
        a.status,
        AttemptStatus::Aborted,
        "{:?} {:?}",
        a.error_type,
        a.error
    );
    assert_eq!(
        a.gpu_ms, CANCELLED_GPU_MS,
        "what the backend reported it used"
    );
    let budget = app.store.budget("p1").await.unwrap().unwrap();
    assert_eq!((budget.reserved_ms, budget.spent_ms), (0, CANCELLED_GPU_MS));
    let outcomes = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].outcome, "aborted");
}

#[tokio::test]
async fn an_abort_during_the_last_attempt_ends_aborted_without_a_false_escalation() {
    let app = TestApp::builder()
        .simulator(retake_activities::sim::Simulator::new(20_000))
        .spawn()
        .await;
    for (name, window) in [("lastabort0", 0), ("lastabort1", 3600)] {
        let segment = format!("{}-{name}", app.tag);
        let policy = json!({"enabled": true, "max_attempts": 1, "review_window_secs": window});
        let handle = app.start(request(&segment, "p1", Some(policy))).await;
        let result = app.abort_first_attempt(&segment, &handle).await;

        assert_eq!(
            result.outcome,
            Outcome::Aborted,
            "window {window}: {}",
            result.report
        );
        let outcomes = app.store.outcomes(&segment).await.unwrap();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(
            (outcomes[0].outcome.as_str(), outcomes[0].review.as_str()),
            ("aborted", "none"),
            "window {window}: never recorded as escalated"
        );
    }
}

/// The policy's `stop_after_same_refusals` decides how many of the same refusal end the round,
/// through the workflow: 3 stops after the third, 0 goes on until the attempts are used up.
#[tokio::test]
async fn the_policy_says_how_many_same_refusals_in_a_row_stop_the_round() {
    let jobs = FakeJobs::failing(
        None,
        Failure::Generation("cfg 31.2 is out of range".to_owned()),
    )
    .await;
    let app = http_app(&jobs).await;
    let with = |name: &str, stop_after: u32| {
        let mut r = action_request(&app, name);
        r["policy"]["max_attempts"] = json!(4);
        r["policy"]["stop_after_same_refusals"] = json!(stop_after);
        r
    };

    let three = app.retry(with("refused-three", 3)).await;
    let never = app.retry(with("refused-never", 0)).await;

    assert_eq!(three.outcome, Outcome::Escalated);
    assert_eq!(three.attempts.len(), 3, "{}", three.report);
    assert!(
        three
            .reason
            .starts_with("the backend refused attempts 1, 2 and 3 with the same error"),
        "{}",
        three.reason
    );
    assert_eq!(never.outcome, Outcome::Escalated);
    assert_eq!(never.attempts.len(), 4, "every attempt: {}", never.report);
    assert!(
        !never.reason.contains("the backend refused"),
        "{}",
        never.reason
    );
    for (name, result) in [("refused-three", &three), ("refused-never", &never)] {
        assert!(
            result
                .attempts
                .iter()
                .all(|a| a.error_type.as_deref() == Some("BackendRejected")),
            "{name}: {}",
            result.report
        );
        let segment = format!("{}-{name}", app.tag);
        let rows: Vec<_> = app
            .store
            .attempts(&segment)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record)
            .collect();
        assert_eq!(rows, result.attempts, "{name}: the rows are the result's");
    }
    let posts = jobs
        .calls()
        .iter()
        .filter(|c| c.starts_with("POST /generate"))
        .count();
    assert_eq!(posts, 3 + 4, "one job per attempt");
}

/// A ComfyUI graph whose `inputs` map `cfg_scale` but not `denoise_strength`, under a policy
/// jittering both: every attempt records the jittered `cfg_scale` and `denoise_strength` as the
/// request had it, and ComfyUI was sent exactly that (its graph, with the attempt's seed and
/// `cfg`, nothing else changed). Before, `denoise_strength` was recorded jittered too, a
/// variation the backend never received.
#[tokio::test]
async fn an_attempt_records_jitter_only_for_what_comfyui_received_and_it_received_what_was_recorded()
 {
    let comfy = FakeComfyUi::rendering().await;
    let dir = tempfile::tempdir().unwrap();
    let template = json!({
        "1": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "2": {"class_type": "KSampler",
              "inputs": {"seed": 0, "cfg": 8.0, "steps": 20, "sampler_name": "euler",
                         "scheduler": "normal", "denoise": 1.0, "latent_image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "r"}}
    });
    let graph = dir.path().join("ksampler.json");
    std::fs::write(&graph, template.to_string()).unwrap();
    let config = json!({"artifacts_dir": dir.path(), "scene_types": {"comfy": {
        "generate": {"kind": "comfyui", "base_url": comfy.base_url, "workflow": graph,
                     "sampler_nodes": ["2"], "inputs": {"cfg_scale": "cfg"},
                     "poll_interval_ms": 50},
        "score": {"kind": "simulator"}}}});
    let app = TestApp::builder()
        .backends(BackendsConfig::parse("comfy", &config.to_string()).expect("config"))
        .spawn()
        .await;
    // A segment whose motion the simulated scorer does not fail whatever the seed (10 % do):
    // a failing motion is a kind the policy does not retry, and would stop the round.
    let segment = (0..)
        .map(|n| format!("{}-unmapped{n}", app.tag))
        .find(|s| !retake_activities::sim::Simulator::profile(s).systematic_motion)
        .expect("a segment without systematic motion failures");

    let result = app
        .retry(json!({
            "segment_id": segment, "project_id": "p1", "scene_type": "comfy",
            "params": {"seed": 7, "cfg_scale": 7.0, "denoise_strength": 0.6},
            "failed_qa": {"scores": {"face": 0.3}, "failures": ["face_melt"]},
            // `face` out of reach: every attempt fails the same retried way.
            "policy": {"enabled": true, "max_attempts": 3, "selection": "best_of_n",
                       "ladder": ["reseed_jitter"], "review_window_secs": 0,
                       "thresholds": {"face": {"min": 1.0, "failure": "face_melt"}},
                       "vary": {"cfg_scale": {"range": 0.5, "min": 1, "max": 30},
                                "denoise_strength": {"range": 0.05, "min": 0, "max": 1}}}
        }))
        .await;

    assert_eq!(result.attempts.len(), 3, "{}", result.report);
    let sent = comfy.graphs();
    assert_eq!(sent.len(), 3, "one prompt per attempt: {sent:#?}");
    let rows = app.store.attempts(&segment).await.unwrap();
    for (i, a) in result.attempts.iter().enumerate() {
        let cfg = a.params.number("cfg_scale").expect("cfg_scale recorded");
        assert_ne!(cfg, 7.0, "attempt {}: cfg_scale jittered", a.attempt);
        assert!((cfg - 7.0).abs() <= 0.5, "attempt {}: {cfg}", a.attempt);
        assert_eq!(
            a.params.number("denoise_strength"),
            Some(0.6),
            "attempt {}: denoise_strength as the request had it",
            a.attempt
        );
        let jittered: Vec<&str> = a.jitter.iter().map(|c| c.param.as_str()).collect();
        assert_eq!(jittered, ["cfg_scale"], "attempt {}", a.attempt);
        if let Some(v) = &a.variation {
            assert!(
                v.arms
                    .iter()
                    .all(|arm| !arm.starts_with("denoise_strength")),
                "attempt {}: {v:?}",
                a.attempt
            );
        }
        let mut expected = template.clone();
        expected["2"]["inputs"]["seed"] = json!(a.seed);
        expected["2"]["inputs"]["cfg"] = json!(cfg);
        assert_eq!(
            sent[i], expected,
            "attempt {}: ComfyUI got the recorded seed and cfg, nothing else",
            a.attempt
        );
        assert_eq!(rows[i].record, *a, "attempt {}: the row", a.attempt);
    }
}
