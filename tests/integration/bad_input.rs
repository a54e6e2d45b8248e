use crate::harness::{TestApp, request, spawn_app};
use retake::retries;
use retake_workflows::SegmentRetryWorkflow;
use serde_json::{Value, json};
use temporalio_client::WorkflowStartOptions;

/// Start the workflow with `input` as another client would (no local validation) and return the
/// failure message, which must arrive (the workflow fails; it does not stick retrying tasks).
async fn failure_of(app: &TestApp, id: &str, input: Value) -> String {
    let handle = app
        .client
        .start_workflow(
            SegmentRetryWorkflow::run,
            input,
            WorkflowStartOptions::new(app.task_queue.clone(), format!("segment-retry-{id}"))
                .build(),
        )
        .await
        .expect("start");
    let err = retries::result(&handle)
        .await
        .expect_err("the workflow must fail");
    format!("{err:#}")
}

#[tokio::test]
async fn a_missing_seed_fails_the_workflow_naming_the_field() {
    let app = spawn_app().await;
    let id = format!("{}-noseed", app.tag);
    let mut input = request(&id, "p1", Some(json!({"enabled": true})));
    input["params"].as_object_mut().unwrap().remove("seed");

    let msg = failure_of(&app, &id, input).await;

    assert!(msg.contains("params.seed"), "{msg}");
}

#[tokio::test]
async fn a_negative_score_and_a_bad_segment_id_are_both_reported() {
    let app = spawn_app().await;
    let id = format!("{}-neg", app.tag);
    let mut input = request(&id, "p1", None);
    input["failed_qa"]["scores"]["face"] = json!(-0.5);
    input["project_id"] = json!("no spaces allowed");

    let msg = failure_of(&app, &id, input).await;

    assert!(msg.contains("failed_qa.scores.face"), "{msg}");
    assert!(msg.contains("project_id"), "{msg}");
}

#[tokio::test]
async fn an_argument_that_is_not_an_object_fails_the_workflow() {
    let app = spawn_app().await;
    let id = format!("{}-str", app.tag);

    let msg = failure_of(&app, &id, json!("segment 5 please")).await;

    assert!(msg.contains("must be a JSON object"), "{msg}");
}

#[tokio::test]
async fn an_invalid_policy_override_fails_the_workflow_before_any_attempt() {
    let app = spawn_app().await;
    let id = format!("{}-badpolicy", app.tag);
    let input = request(&id, "p1", Some(json!({"enabled": true, "max_attempts": 0})));

    let msg = failure_of(&app, &id, input).await;

    assert!(msg.contains("policy.max_attempts"), "{msg}");
    assert!(
        app.store.attempts(&id).await.unwrap().is_empty(),
        "no half-written records"
    );
}

#[tokio::test]
async fn the_client_helper_rejects_bad_input_before_starting_anything() {
    let app = spawn_app().await;
    let id = format!("{}-local", app.tag);
    let mut input = request(&id, "p1", None);
    input["params"]["seed"] = json!(-1);

    let Err(err) = retries::start(&app.client, &app.task_queue, input).await else {
        panic!("a negative seed must be rejected before the workflow starts");
    };

    assert!(format!("{err:#}").contains("params.seed"), "{err:#}");
}
