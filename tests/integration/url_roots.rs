//! Only `http(s)` URLs under the configured URL roots are requested: a creator's draft at any
//! other URL is a 422 at the API, and a run started around the API (a raw Temporal client) is
//! refused by the worker without a request reaching that URL or its text reaching the LLM.

use crate::api::{CREATOR, api_for};
use crate::harness::FakeLlm;
use crate::ladder::{chapter_app, chapter_request, scores};
use reqwest::{Method, StatusCode};
use retake_domain::contract::AttemptStatus;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A local HTTP listener standing in for an internal service (cloud metadata, an admin port):
/// it answers every connection with a secret and counts them.
struct Internal {
    url: String,
    heard: Arc<AtomicUsize>,
}

impl Internal {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/secret", listener.local_addr().unwrap());
        let heard = Arc::new(AtomicUsize::new(0));
        let counted = heard.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nadmin=hunter2")
                    .await;
            }
        });
        Self { url, heard }
    }

    fn heard(&self) -> usize {
        self.heard.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_creator_cannot_point_a_retry_or_a_retry_with_at_a_url_outside_the_url_roots() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Internal::start().await;
    let llm = FakeLlm::start(vec![]).await;
    let app = chapter_app(&llm, &dir.path().join("artifacts")).await;
    let api = api_for(&app).await;
    let metadata = "http://169.254.169.254/latest/meta-data/".to_owned();
    // The LLM's own base URL is the worker's, not a creator's: the API admits no http(s) draft.
    let llm_url = format!("{}/models", llm.base_url);
    for uri in [internal.url.clone(), metadata, llm_url] {
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
                .contains("outside the URLs retake may read"),
            "{answer}"
        );
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
    assert_eq!(internal.heard(), 0, "the internal service was requested");
}

#[tokio::test]
async fn a_draft_at_a_url_outside_the_url_roots_is_never_requested_by_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Internal::start().await;
    let llm = FakeLlm::start(vec![scores([90, 90, 90, 90])]).await;
    let app = chapter_app(&llm, &dir.path().join("artifacts")).await;
    // Started with a raw Temporal client: nothing at the API to refuse it.
    let mut input = chapter_request(&app, &dir.path().join("draft.md"));
    input["params"]["output_uri"] = json!(internal.url);
    input["policy"]["max_attempts"] = json!(1);
    let result = app.retry(input).await;
    assert_eq!(result.attempts.len(), 1, "{result:#?}");
    let a = &result.attempts[0];
    assert_eq!(a.status, AttemptStatus::Error, "{a:#?}");
    let error = a.error.as_deref().unwrap();
    assert!(
        error.contains("outside the URLs retake may read") && error.contains(&internal.url),
        "{a:#?}"
    );
    assert_eq!(a.error_type.as_deref(), Some("BackendRejected"), "{a:#?}");
    assert_eq!(internal.heard(), 0, "the worker requested the internal URL");
    assert!(
        llm.generation_requests().is_empty(),
        "the LLM heard nothing: {:?}",
        llm.generation_requests()
    );
}
