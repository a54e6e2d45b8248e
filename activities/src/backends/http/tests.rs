//! The HTTP contract's tests.

use super::fake::{Beats, Fake, Reply, serve};
use super::{HttpBackend, HttpConfig};
use crate::io::{AttemptKey, GenerateRequest, ScoreRequest};
use crate::ports::{BackendError, GenerationBackend, QaScorer};
use retake_domain::contract::Params;
use retake_domain::strategy::Strategy;
use serde_json::{Value, json};
use std::sync::Arc;

/// An attempt's request, shared with the ComfyUI tests.
pub(in crate::backends) fn request() -> GenerateRequest {
    let params = json!({"seed": 42, "cfg_scale": 6.5, "denoise_strength": 0.4, "steps": 30});
    GenerateRequest {
        key: AttemptKey {
            workflow_id: "segment-retry-ch-12".into(),
            run_id: "run-1".into(),
            attempt: 2,
        },
        segment_id: "ch-12".parse().unwrap(),
        scene_type: "dialogue".parse().unwrap(),
        seed: 42,
        params: Params::parse(&params).unwrap(),
        strategy: Some(Strategy::ReseedJitter),
        prompt: None,
        revise_uri: None,
        budget: None,
        eager: false,
        run: 0,
    }
}

fn score_request() -> ScoreRequest {
    let g = request();
    ScoreRequest {
        key: g.key,
        segment_id: g.segment_id,
        scene_type: g.scene_type,
        seed: g.seed,
        params: g.params,
        output_uri: "s3://renders/ch-12/2.mp4".into(),
    }
}

fn backend(base_url: &str) -> HttpBackend {
    HttpBackend::new(HttpConfig {
        base_url: base_url.to_owned(),
        token_env: None,
        request_timeout_secs: Some(5),
        poll_interval_ms: Some(10),
        poll_retries: None,
        seed_bits: None,
    })
    .unwrap()
}

fn pending() -> Reply {
    Reply::json(202, json!({"status": "pending", "job_id": "job 7"}))
}

fn done() -> Reply {
    Reply::json(
        200,
        json!({"status": "done", "output_uri": "s3://renders/ch-12/2.mp4", "gpu_ms": 4100}),
    )
}

async fn generate(
    script: Vec<(&str, Vec<Reply>)>,
) -> (Result<crate::io::Generated, BackendError>, Arc<Fake>) {
    let (url, fake) = serve(script).await;
    let result = backend(&url).generate(&request(), &Beats::default()).await;
    (result, fake)
}

#[tokio::test]
async fn a_synchronous_answer_is_the_result_and_the_request_carries_the_contract_fields() {
    let (result, fake) = generate(vec![("POST /generate", vec![done()])]).await;
    let generated = result.unwrap();
    assert_eq!(generated.output_uri, "s3://renders/ch-12/2.mp4");
    assert_eq!(generated.gpu_ms, 4100);
    let post = &fake.to("POST /generate")[0];
    assert_eq!(
        post.headers["idempotency-key"],
        "segment-retry-ch-12/run-1/2"
    );
    assert!(post.headers.get("authorization").is_none());
    assert_eq!(
        post.body,
        json!({
            "idempotency_key": "segment-retry-ch-12/run-1/2", "segment_id": "ch-12",
            "scene_type": "dialogue", "seed": 42,
            "params": {"seed": 42, "cfg_scale": 6.5, "denoise_strength": 0.4, "steps": 30},
            "strategy": "reseed_jitter", "prompt": null, "revise_uri": null
        })
    );
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn a_pending_job_is_polled_until_done_while_heartbeating() {
    let running = Reply::json(200, json!({"status": "running"}));
    let (url, fake) = serve(vec![
        ("POST /generate", vec![pending()]),
        ("GET /jobs/job%207", vec![running.clone(), running, done()]),
    ])
    .await;
    let beats = Beats::default();
    let generated = backend(&url).generate(&request(), &beats).await.unwrap();
    assert_eq!(generated.output_uri, "s3://renders/ch-12/2.mp4");
    assert_eq!(fake.to("GET /jobs/job%207").len(), 3);
    // At least one heartbeat per wait between polls, and one while posting.
    assert!(beats.count() >= 4, "{} heartbeats", beats.count());
}

#[tokio::test]
async fn a_failed_job_marked_retryable_is_transient_and_otherwise_rejected() {
    for (retryable, transient) in [
        (json!(true), true),
        (json!(false), false),
        (Value::Null, false),
    ] {
        let failed =
            json!({"status": "failed", "error": "CUDA out of memory", "retryable": retryable});
        let (result, _) = generate(vec![
            ("POST /generate", vec![pending()]),
            ("GET /jobs/job%207", vec![Reply::json(200, failed)]),
        ])
        .await;
        match result {
            Err(BackendError::Transient(m)) if transient => {
                assert!(m.contains("CUDA out of memory"))
            }
            Err(BackendError::Rejected(m)) if !transient => {
                assert!(m.contains("CUDA out of memory"))
            }
            other => panic!("retryable {retryable}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_failed_job_marked_infrastructure_is_the_machines_failure_and_billed() {
    let failed = json!({"status": "failed", "error": "CUDA out of memory", "retryable": true,
        "infrastructure": true, "gpu_ms": 700});
    let (result, _) = generate(vec![
        ("POST /generate", vec![pending()]),
        ("GET /jobs/job%207", vec![Reply::json(200, failed)]),
    ])
    .await;
    let Err(e) = result else { panic!("{result:?}") };
    match e.split() {
        (BackendError::Infrastructure(m), Some(700)) => assert!(m.contains("CUDA out of memory")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_429_while_polling_is_retried_in_place_without_restarting_the_job() {
    let (result, fake) = generate(vec![
        ("POST /generate", vec![pending()]),
        (
            "GET /jobs/job%207",
            vec![Reply::text(429, "slow down"), Reply::text(502, ""), done()],
        ),
    ])
    .await;
    assert_eq!(result.unwrap().gpu_ms, 4100);
    assert_eq!(fake.to("POST /generate").len(), 1);
    assert_eq!(fake.to("GET /jobs/job%207").len(), 3);
}

#[tokio::test]
async fn polling_gives_up_as_transient_after_the_retries() {
    let (result, fake) = generate(vec![
        ("POST /generate", vec![pending()]),
        ("GET /jobs/job%207", vec![Reply::text(503, "down")]),
    ])
    .await;
    assert!(
        matches!(result, Err(BackendError::Transient(_))),
        "{result:?}"
    );
    assert_eq!(fake.to("GET /jobs/job%207").len(), 6);
}

#[tokio::test]
async fn a_503_on_the_post_is_transient() {
    let (result, _) = generate(vec![("POST /generate", vec![Reply::text(503, "busy")])]).await;
    assert!(matches!(result, Err(BackendError::Transient(m)) if m.contains("503")));
}

#[tokio::test]
async fn a_400_on_the_post_is_rejected() {
    let (result, _) = generate(vec![(
        "POST /generate",
        vec![Reply::text(400, "bad cfg_scale")],
    )])
    .await;
    assert!(matches!(result, Err(BackendError::Rejected(m)) if m.contains("bad cfg_scale")));
}

#[tokio::test]
async fn a_malformed_answer_is_rejected_naming_the_json_path() {
    let bad = json!({"status": "done", "output_uri": "s3://x", "gpu_ms": "lots"});
    let (result, _) = generate(vec![("POST /generate", vec![Reply::json(200, bad)])]).await;
    assert!(
        matches!(&result, Err(BackendError::Rejected(m)) if m.contains("`gpu_ms`")),
        "{result:?}"
    );
    let no_job = Reply::json(202, json!({"status": "pending"}));
    let (result, _) = generate(vec![("POST /generate", vec![no_job])]).await;
    assert!(
        matches!(&result, Err(BackendError::Rejected(m)) if m.contains("`job_id`")),
        "{result:?}"
    );
}

#[tokio::test]
async fn cancelling_while_polling_deletes_the_job() {
    let (url, fake) = serve(vec![
        ("POST /generate", vec![pending()]),
        (
            "GET /jobs/job%207",
            vec![Reply::json(200, json!({"status": "pending"}))],
        ),
        ("DELETE /jobs/job%207", vec![Reply::text(204, "")]),
    ])
    .await;
    let result = backend(&url)
        .generate(&request(), &Beats::cancelling_at(4))
        .await;
    assert!(matches!(&result, Err(e) if e.is_cancelled()), "{result:?}");
    assert_eq!(fake.to("DELETE /jobs/job%207").len(), 1);
    let (_, billed) = result.unwrap_err().split();
    assert!(
        billed.is_some(),
        "without gpu_ms in the answer, the wall time waited is billed"
    );
}

#[tokio::test]
async fn a_cancelled_job_is_billed_the_gpu_time_its_delete_answer_reports() {
    let (url, _) = serve(vec![
        ("POST /generate", vec![pending()]),
        (
            "GET /jobs/job%207",
            vec![Reply::json(200, json!({"status": "pending"}))],
        ),
        (
            "DELETE /jobs/job%207",
            vec![Reply::json(200, json!({"gpu_ms": 3100}))],
        ),
    ])
    .await;
    let result = backend(&url)
        .generate(&request(), &Beats::cancelling_at(4))
        .await;
    let (e, billed) = result.unwrap_err().split();
    assert!(matches!(e, BackendError::Cancelled), "{e:?}");
    assert_eq!(billed, Some(3100));
}

#[tokio::test]
async fn a_failed_job_reporting_gpu_time_is_billed_for_it() {
    let failed = json!({"status": "failed", "error": "CUDA out of memory", "gpu_ms": 900});
    let (result, _) = generate(vec![
        ("POST /generate", vec![pending()]),
        ("GET /jobs/job%207", vec![Reply::json(200, failed)]),
    ])
    .await;
    let (e, billed) = result.unwrap_err().split();
    assert!(
        matches!(&e, BackendError::Rejected(m) if m.contains("CUDA out of memory")),
        "{e:?}"
    );
    assert_eq!(billed, Some(900));
}

#[tokio::test]
async fn a_missing_token_variable_stops_construction_and_a_set_one_is_sent() {
    let mut config = HttpConfig {
        base_url: "http://127.0.0.1:9".into(),
        token_env: Some("RETAKE_HTTP_TEST_TOKEN_THAT_IS_NOT_SET".into()),
        request_timeout_secs: None,
        poll_interval_ms: None,
        poll_retries: None,
        seed_bits: None,
    };
    let err = HttpBackend::new(config.clone()).unwrap_err();
    assert_eq!(err.field, "token_env");
    // PATH is always set: it stands in for a token.
    config.token_env = Some("PATH".into());
    let (url, fake) = serve(vec![("POST /generate", vec![done()])]).await;
    config.base_url = url;
    HttpBackend::new(config)
        .unwrap()
        .generate(&request(), &Beats::default())
        .await
        .unwrap();
    let auth = fake.to("POST /generate")[0].headers["authorization"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        auth,
        format!("Bearer {}", std::env::var("PATH").unwrap().trim())
    );
}

#[tokio::test]
async fn scores_on_a_scale_of_100_are_normalised_and_the_breakdown_kept() {
    let answer = json!({
        "scores": {"face": 87, "lip_sync": 64.5},
        "failures": ["hand_artifact"],
        "breakdown": [{"category": "continuity", "score": 70, "feedback": "the scarf changes colour"}],
        "scale": 100
    });
    let (url, fake) = serve(vec![("POST /score", vec![Reply::json(200, answer)])]).await;
    let qa = backend(&url).score(&score_request()).await.unwrap();
    assert_eq!(qa.scores["face"], 0.87);
    assert_eq!(qa.scores["lip_sync"], 0.645);
    assert_eq!(qa.failures, ["hand_artifact"]);
    assert_eq!(qa.breakdown[0].category, "continuity");
    assert_eq!(qa.breakdown[0].score, 0.7);
    assert_eq!(qa.breakdown[0].feedback, "the scarf changes colour");
    let post = &fake.to("POST /score")[0];
    assert_eq!(
        post.headers["idempotency-key"],
        "segment-retry-ch-12/run-1/2"
    );
    assert_eq!(post.body["output_uri"], "s3://renders/ch-12/2.mp4");
    assert_eq!(post.body["idempotency_key"], "segment-retry-ch-12/run-1/2");
    assert_eq!(post.body["params"]["cfg_scale"], 6.5);
}

#[tokio::test]
async fn a_score_out_of_range_is_rejected_naming_the_metric() {
    let answer = json!({"scores": {"face": 0.9, "lip_sync": 1.4}});
    let (url, _) = serve(vec![("POST /score", vec![Reply::json(200, answer)])]).await;
    let result = backend(&url).score(&score_request()).await;
    assert!(
        matches!(&result, Err(BackendError::Rejected(m)) if m.contains("scores.lip_sync")),
        "{result:?}"
    );
    let answer = json!({"scores": {"face": 0.9}, "scale": 10});
    let (url, _) = serve(vec![("POST /score", vec![Reply::json(200, answer)])]).await;
    let result = backend(&url).score(&score_request()).await;
    assert!(
        matches!(&result, Err(BackendError::Rejected(m)) if m.contains("`scale`")),
        "{result:?}"
    );
}
