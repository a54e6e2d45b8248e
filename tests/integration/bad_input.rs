use crate::harness::{TestApp, request, spawn_app};
use retake::retries;
use retake_workflows::SegmentRetryWorkflow;
use serde_json::{Value, json};
use std::collections::HashMap;
use temporalio_client::WorkflowStartOptions;
use temporalio_common::data_converters::RawValue;
use temporalio_common::protos::temporal::api::common::v1::Payload;

fn payload(encoding: &str, data: impl Into<Vec<u8>>) -> Payload {
    Payload {
        metadata: HashMap::from([("encoding".to_owned(), encoding.as_bytes().to_vec())]),
        data: data.into(),
        ..Default::default()
    }
}

/// Start the workflow with `input` as another client would (no local validation) and return the
/// failure message, which must arrive (the workflow fails; it does not stick retrying tasks).
async fn failure_of(app: &TestApp, id: &str, input: Value) -> String {
    failure_of_payloads(app, id, retake_workflows::argument(&input).payloads).await
}

/// The same with the payloads exactly as given: none, several, other encodings.
async fn failure_of_payloads(app: &TestApp, id: &str, payloads: Vec<Payload>) -> String {
    let handle = app
        .client
        .start_workflow(
            SegmentRetryWorkflow::run,
            RawValue::new(payloads),
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
async fn a_run_whose_workflow_id_names_another_segment_fails_naming_segment_id() {
    let app = spawn_app().await;
    let a = format!("{}-wid-a", app.tag);
    let b = format!("{}-wid-b", app.tag);
    // Started as segment A's retry, for segment B.
    let msg = failure_of(&app, &a, request(&b, "p1", None)).await;
    assert!(
        msg.contains("segment_id") && msg.contains(&format!("runs as workflow segment-retry-{b}")),
        "{msg}"
    );
}

#[tokio::test]
async fn a_request_of_a_megabyte_fails_the_workflow_instead_of_looping_its_task() {
    let app = spawn_app().await;
    let id = format!("{}-big", app.tag);
    let mut input = request(&id, "p1", Some(json!({"enabled": true, "max_attempts": 3})));
    input["params"]["prompt"] = json!("x".repeat(1_000_000));
    let msg = failure_of(&app, &id, input).await;
    assert!(msg.contains("at most 65536 bytes"), "{msg}");
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

#[tokio::test]
async fn no_argument_fails_the_workflow_instead_of_retrying_its_task() {
    let app = spawn_app().await;
    let id = format!("{}-noarg", app.tag);

    let msg = failure_of_payloads(&app, &id, vec![]).await;

    assert!(
        msg.contains("exactly one argument") && msg.contains("got 0"),
        "{msg}"
    );
}

#[tokio::test]
async fn two_arguments_fail_the_workflow_naming_the_count() {
    let app = spawn_app().await;
    let id = format!("{}-twoargs", app.tag);
    let one = retake_workflows::argument(&request(&id, "p1", None)).payloads;
    let two = [one.clone(), one].concat();

    let msg = failure_of_payloads(&app, &id, two).await;

    assert!(msg.contains("got 2"), "{msg}");
}

#[tokio::test]
async fn a_binary_payload_fails_the_workflow_naming_its_encoding() {
    let app = spawn_app().await;
    let id = format!("{}-binary", app.tag);

    let msg = failure_of_payloads(&app, &id, vec![payload("binary/plain", *b"\x00\xff")]).await;

    assert!(msg.contains("binary/plain"), "{msg}");
}

#[tokio::test]
async fn params_nested_300_deep_fail_the_workflow_instead_of_retrying_its_task() {
    let app = spawn_app().await;
    let id = format!("{}-deep", app.tag);
    let input = request(&id, "p1", None).to_string();
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let input = input.replacen(r#""seed":"#, &format!(r#""deep":{deep},"seed":"#), 1);

    let msg = failure_of_payloads(&app, &id, vec![payload("json/plain", input)]).await;

    assert!(
        msg.contains("not valid JSON") && msg.contains("recursion limit"),
        "{msg}"
    );
}

#[tokio::test]
async fn params_nested_deeper_than_the_limit_but_parseable_are_rejected_naming_the_field() {
    let app = spawn_app().await;
    let id = format!("{}-deep40", app.tag);
    let mut input = request(&id, "p1", None);
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    input["params"]["deep"] = deep;

    let msg = failure_of(&app, &id, input).await;

    assert!(
        msg.contains("params.deep") && msg.contains("nested"),
        "{msg}"
    );
}
