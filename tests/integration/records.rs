//! Truthful attempt records: what the backend said and used is what `retry_attempts`, the result
//! and the report say.

use crate::cli::{retake, stdout};
use crate::harness::{FAILED_GPU_MS, Failure, FakeJobs, request, spawn_app};
use crate::ladder::{action_request, http_app};
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
