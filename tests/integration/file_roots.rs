//! Only files under the configured roots are ever opened: a creator's `file://` draft elsewhere is
//! a 422 at the API, and a run started around the API (a raw Temporal client) is refused by the
//! worker without the file's text reaching the LLM.

use crate::api::{CREATOR, api_for};
use crate::harness::FakeLlm;
use crate::ladder::{chapter_app, chapter_request, scores};
use reqwest::{Method, StatusCode};
use retake_domain::contract::AttemptStatus;
use serde_json::json;

/// URIs that name files outside the test's roots (its temp folder): the API process's and the
/// worker's environment, a system file, and a way out of the roots by `..`.
fn outside_uris(dir: &std::path::Path) -> Vec<String> {
    let escape = format!(
        "{}/../../../../../../proc/self/environ",
        url::Url::from_file_path(dir.join("artifacts")).unwrap()
    );
    vec![
        "file:///proc/self/environ".to_owned(),
        "file:///etc/hostname".to_owned(),
        escape,
    ]
}

#[tokio::test]
async fn a_creator_cannot_point_a_retry_or_a_retry_with_at_a_file_outside_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let llm = FakeLlm::start(vec![]).await;
    let app = chapter_app(&llm, &dir.path().join("artifacts")).await;
    let api = api_for(&app).await;
    for uri in outside_uris(dir.path()) {
        let mut body = chapter_request(&app, &dir.path().join("draft.md"));
        body["params"]["output_uri"] = json!(uri);
        let segment = body["segment_id"].as_str().unwrap().to_owned();
        let (status, answer) = api
            .call(
                Method::POST,
                &format!("/segments/{segment}/retries"),
                Some(CREATOR),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {answer}");
        assert_eq!(
            answer["fields"][0]["field"], "params.output_uri",
            "{answer}"
        );
        assert!(
            answer["fields"][0]["message"]
                .as_str()
                .unwrap()
                .contains("outside the folders retake may read"),
            "{answer}"
        );
        // The same check on a review decision (the segment has no retry: the URI is refused
        // before anything is looked up).
        let (status, answer) = api
            .call(
                Method::POST,
                &format!("/segments/{segment}/retries/decision"),
                Some(CREATOR),
                Some(json!({"decision": "retry_with", "params": {"output_uri": uri}})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {answer}");
        assert_eq!(
            answer["fields"][0]["field"], "params.output_uri",
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_draft_outside_the_roots_is_never_read_by_the_worker_or_sent_to_the_llm() {
    let dir = tempfile::tempdir().unwrap();
    let llm = FakeLlm::start(vec![scores([90, 90, 90, 90])]).await;
    let app = chapter_app(&llm, &dir.path().join("artifacts")).await;
    // Started with a raw Temporal client: nothing at the API to refuse it.
    let mut input = chapter_request(&app, &dir.path().join("draft.md"));
    input["params"]["output_uri"] = json!("file:///proc/self/environ");
    input["policy"]["max_attempts"] = json!(1);
    let result = app.retry(input).await;
    assert_eq!(result.attempts.len(), 1, "{result:#?}");
    let a = &result.attempts[0];
    assert_eq!(a.status, AttemptStatus::Error, "{a:#?}");
    assert!(
        a.error
            .as_deref()
            .unwrap()
            .contains("outside the folders retake may read"),
        "{a:#?}"
    );
    assert!(
        llm.generation_requests().is_empty(),
        "the LLM heard nothing: {:?}",
        llm.generation_requests()
    );
}
