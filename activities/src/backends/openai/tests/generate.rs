use super::{Beats, Reply, key, message, serve};
use crate::backends::artifacts::Artifacts;
use crate::backends::openai::{OpenAiConfig, OpenAiGenerator};
use crate::io::GenerateRequest;
use crate::ports::{BackendError, GenerationBackend};
use retake_domain::contract::Params;
use retake_domain::strategy::Strategy;
use serde_json::{Value, json};
use std::time::Duration;

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.to_owned(),
        model: "qwen2.5-14b-instruct".into(),
        api_key_env: None,
        system_prompt: None,
        max_tokens: Some(4096),
        request_timeout_secs: Some(30),
        seed_bits: None,
    }
}

fn request(params: Value) -> GenerateRequest {
    GenerateRequest {
        key: key(),
        segment_id: "ch-12".parse().unwrap(),
        scene_type: "chapter".parse().unwrap(),
        seed: 5_760_749_790_915_036,
        params: Params(params.as_object().unwrap().clone()),
        strategy: None,
        prompt: None,
        revise_uri: None,
        budget: None,
        eager: false,
        run: 0,
    }
}

fn brief() -> Value {
    json!({"seed": 1234, "chapter": 12, "prompt": "12화: 주인공이 스승과 재회한다.", "temperature": 0.8})
}

async fn generator(base_url: &str, artifacts: &Artifacts) -> OpenAiGenerator {
    OpenAiGenerator::new(config(base_url), artifacts.clone()).unwrap()
}

#[tokio::test]
async fn a_completion_is_written_to_an_artifact_and_its_uri_returned() {
    let (url, fake) = serve(Reply::content("# 12화\n\n스승은 웃었다.")).await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Artifacts::new(dir.path());
    let out = generator(&url, &artifacts)
        .await
        .generate(&request(brief()), &Beats::default())
        .await
        .unwrap();
    assert!(out.output_uri.starts_with("file://"), "{}", out.output_uri);
    assert!(
        out.output_uri.ends_with("/run-1/attempt-2.md"),
        "{}",
        out.output_uri
    );
    assert_eq!(
        artifacts.get_text(&out.output_uri).await.unwrap(),
        "# 12화\n\n스승은 웃었다."
    );
    let seen = fake.one();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body["stream"], false);
    assert_eq!(seen.body["temperature"], 0.8);
    assert_eq!(
        seen.body["max_tokens"], 4096,
        "the configuration's max_tokens when params have none"
    );
    assert!(seen.body.get("top_p").is_none(), "{}", seen.body);
    assert_eq!(message(&seen, "user"), "12화: 주인공이 스승과 재회한다.");
    assert!(
        message(&seen, "system").contains("작가"),
        "a Korean brief gets the Korean default"
    );
}

#[tokio::test]
async fn the_request_carries_model_seed_and_the_korean_revise_prompt_with_the_draft() {
    let (url, fake) = serve(Reply::content("수정본")).await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Artifacts::new(dir.path());
    let mut earlier = key();
    earlier.attempt = 1;
    let draft_uri = artifacts
        .put(&earlier, "md", "초안: 스승은 말이 없었다.".as_bytes())
        .await
        .unwrap();
    let mut req =
        request(json!({"seed": 1, "prompt": "12화 개요", "top_p": 0.9, "max_tokens": 2000}));
    req.strategy = Some(Strategy::ReviseWithFeedback);
    req.prompt = Some("12화를 수정해 주세요. 현재 점수는 62점입니다.".into());
    req.revise_uri = Some(draft_uri);
    generator(&url, &artifacts)
        .await
        .generate(&req, &Beats::default())
        .await
        .unwrap();

    let seen = fake.one();
    assert_eq!(seen.body["model"], "qwen2.5-14b-instruct");
    assert_eq!(seen.body["seed"], 5_760_749_790_915_036_u64);
    assert_eq!(seen.body["top_p"], 0.9);
    assert_eq!(
        seen.body["max_tokens"], 2000,
        "params win over the configuration"
    );
    assert!(seen.body.get("temperature").is_none(), "{}", seen.body);
    let user = message(&seen, "user");
    assert_eq!(
        user,
        "12화 개요\n\n12화를 수정해 주세요. 현재 점수는 62점입니다.\n\n<draft>\n초안: 스승은 말이 없었다.\n</draft>"
    );
    assert_eq!(
        seen.headers["idempotency-key"],
        "segment-retry-ch-12/run-1/2"
    );
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_token_and_the_system_prompt_from_the_configuration() {
    let (url, fake) = serve(Reply::content("text")).await;
    let dir = tempfile::tempdir().unwrap();
    // The tests may not set variables (no unsafe code), so use one that is always set.
    let mut c = config(&url);
    c.api_key_env = Some("PATH".into());
    c.system_prompt = Some("Write like Le Guin.".into());
    let g = OpenAiGenerator::new(c, Artifacts::new(dir.path())).unwrap();
    g.generate(
        &request(json!({"seed": 1, "prompt": "Chapter 3"})),
        &Beats::default(),
    )
    .await
    .unwrap();
    let seen = fake.one();
    let path = std::env::var("PATH").unwrap();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", path.trim()).as_str()
    );
    assert_eq!(message(&seen, "system"), "Write like Le Guin.");
    assert!(
        !format!("{g:?}").contains(&path),
        "the key is not printed: {g:?}"
    );
}

#[tokio::test]
async fn a_missing_api_key_variable_is_a_configuration_error_naming_api_key_env() {
    let mut c = config("http://127.0.0.1:9/v1");
    c.api_key_env = Some("RETAKE_TEST_SURELY_UNSET_OPENAI_KEY".into());
    let err = OpenAiGenerator::new(c, Artifacts::new("/nonexistent")).unwrap_err();
    assert_eq!(err.field, "api_key_env");
    assert!(
        err.message.contains("RETAKE_TEST_SURELY_UNSET_OPENAI_KEY"),
        "{err}"
    );
    let err = OpenAiGenerator::new(config("ftp://host/v1"), Artifacts::new("/x")).unwrap_err();
    assert_eq!(err.field, "base_url");
}

#[tokio::test]
async fn a_slow_completion_heartbeats_while_it_waits() {
    let (url, _fake) = serve(Reply::content("느린 본문").slow(Duration::from_millis(2500))).await;
    let dir = tempfile::tempdir().unwrap();
    let beats = Beats::default();
    let out = generator(&url, &Artifacts::new(dir.path()))
        .await
        .generate(&request(brief()), &beats)
        .await
        .unwrap();
    assert!(
        beats.count() >= 2,
        "only {} heartbeats in 2.5 s",
        beats.count()
    );
    assert!(
        out.gpu_ms >= 2500,
        "gpu_ms is the measured wall time: {}",
        out.gpu_ms
    );
}

#[tokio::test]
async fn a_cancelled_attempt_stops_waiting_and_writes_nothing() {
    let (url, _fake) = serve(Reply::content("never").slow(Duration::from_millis(2500))).await;
    let dir = tempfile::tempdir().unwrap();
    let beats = Beats::cancelling_at(1);
    let err = generator(&url, &Artifacts::new(dir.path()))
        .await
        .generate(&request(brief()), &beats)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Cancelled), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

async fn failure(reply: Reply) -> BackendError {
    let (url, _fake) = serve(reply).await;
    let dir = tempfile::tempdir().unwrap();
    generator(&url, &Artifacts::new(dir.path()))
        .await
        .generate(&request(brief()), &Beats::default())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn rate_limits_and_unavailable_servers_are_transient() {
    for status in [429, 503] {
        let err = failure(Reply::json(status, json!({"error": {"message": "busy"}}))).await;
        assert!(
            matches!(&err, BackendError::Transient(m) if m.contains(&status.to_string())),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let err = generator(&format!("http://{addr}/v1"), &Artifacts::new(dir.path()))
        .await
        .generate(&request(brief()), &Beats::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn a_bad_request_is_rejected() {
    let err = failure(Reply::json(
        400,
        json!({"error": {"message": "seed out of range"}}),
    ))
    .await;
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("400") && m.contains("seed out of range")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_body_without_choices_is_rejected_naming_the_path() {
    let err = failure(Reply::json(
        200,
        json!({"id": "x", "object": "chat.completion"}),
    ))
    .await;
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("choices")),
        "{err:?}"
    );
    let err = failure(Reply::json(
        200,
        json!({"choices": [{"message": {"content": 3}}]}),
    ))
    .await;
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("choices[0].message.content")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_empty_completion_is_rejected_naming_the_path() {
    for reply in [
        Reply::content("  \n"),
        Reply::json(200, json!({"choices": [{"message": {"content": null}}]})),
    ] {
        let err = failure(reply).await;
        assert!(
            matches!(&err, BackendError::Rejected(m) if m.contains("choices[0].message.content")),
            "{err:?}"
        );
    }
    let err = failure(Reply::json(200, json!({"choices": []}))).await;
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("`choices`")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_request_with_nothing_to_write_from_is_rejected_before_calling_the_server() {
    let (url, fake) = serve(Reply::content("x")).await;
    let dir = tempfile::tempdir().unwrap();
    let g = generator(&url, &Artifacts::new(dir.path())).await;
    let err = g
        .generate(&request(json!({"seed": 1})), &Beats::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("params.prompt")),
        "{err:?}"
    );
    let err = g
        .generate(&request(json!({"seed": 1, "prompt": 7})), &Beats::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("must be a string")),
        "{err:?}"
    );
    assert!(fake.seen().is_empty());
}
