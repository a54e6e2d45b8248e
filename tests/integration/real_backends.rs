//! Opt-in checks against real servers, for anyone with a ComfyUI or an OpenAI-compatible server
//! (llama.cpp, vLLM, Ollama) at hand. They are `#[ignore]`d, so a run without a server reports
//! them as ignored (never "ok"); `scripts/test` runs them when their variable is set, and run
//! without it one fails saying which variable it needs:
//!
//! * `RETAKE_COMFYUI_URL` (e.g. `http://127.0.0.1:8188`): any ComfyUI; the model-free graph
//!   `deploy/comfyui/noise.json` (EmptyImage → ImageAddNoise → SaveImage) needs no weights.
//! * `RETAKE_OPENAI_BASE_URL` (e.g. `http://127.0.0.1:8000/v1`) and `RETAKE_OPENAI_MODEL`
//!   (default `local`): any chat-completions server.
//!
//! `cargo test -p retake --test integration real_backends -- --ignored --nocapture`

use crate::harness::TestApp;
use retake_activities::backends::BackendsConfig;
use retake_domain::contract::{AttemptStatus, RetryResult};
use serde_json::{Value, json};

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn skipped(name: &str) {
    panic!("set {name} to run this check against a real server");
}

async fn app_with(route: Value, artifacts: &std::path::Path) -> TestApp {
    let config = json!({"artifacts_dir": artifacts, "scene_types": {"real": route}});
    TestApp::builder()
        .backends(BackendsConfig::parse("real", &config.to_string()).expect("config"))
        .spawn()
        .await
}

fn retry_request(app: &TestApp, name: &str, params: Value, attempts: u32) -> Value {
    json!({
        "segment_id": format!("{}-{name}", app.tag), "project_id": "real", "scene_type": "real",
        "params": params,
        "failed_qa": {"scores": {"face": 0.3}, "failures": ["face_melt"]},
        "policy": {"enabled": true, "max_attempts": attempts, "selection": "best_of_n",
                   "review_window_secs": 0, "thresholds": {"face": 0.99}}
    })
}

fn comfyui_route(url: &str) -> Value {
    let graph =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/comfyui/noise.json");
    json!({
        "generate": {"kind": "comfyui", "base_url": url, "workflow": graph,
                     "sampler_nodes": ["2"], "inputs": {"denoise_strength": "strength"},
                     "poll_interval_ms": 200},
        "score": {"kind": "simulator"}
    })
}

/// ComfyUI's `/history` entry of an attempt (found by its `client_id`).
async fn comfyui_prompt(url: &str, result: &RetryResult, workflow_run: &str, k: u32) -> Value {
    let history: Value = reqwest::get(format!("{url}/history?max_items=200"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = format!("segment-retry-{}/{workflow_run}/{k}", result.segment_id);
    history
        .as_object()
        .unwrap()
        .values()
        .find(|e| e["prompt"][3]["client_id"] == client.as_str())
        .unwrap_or_else(|| panic!("no prompt of {client} in ComfyUI's history"))
        .clone()
}

#[tokio::test]
#[ignore = "needs RETAKE_COMFYUI_URL: a real ComfyUI"]
async fn a_real_comfyui_renders_each_attempt_with_its_recorded_seed_and_bills_its_run_time() {
    let Some(url) = var("RETAKE_COMFYUI_URL") else {
        return skipped("RETAKE_COMFYUI_URL");
    };
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(comfyui_route(&url), dir.path()).await;
    let input = retry_request(
        &app,
        "comfy",
        json!({"seed": 1, "denoise_strength": 0.4}),
        2,
    );

    let result = app.retry(input).await;

    let runs = app
        .store
        .outcomes(result.segment_id.as_str())
        .await
        .unwrap();
    assert_eq!(result.attempts.len(), 2, "{}", result.report);
    for a in &result.attempts {
        assert_ne!(a.status, AttemptStatus::Error, "{:?}", a.error);
        let uri = a.output_uri.as_deref().unwrap();
        assert!(uri.starts_with(&format!("{url}/view?")), "{uri}");
        let png = reqwest::get(uri).await.unwrap().bytes().await.unwrap();
        assert!(
            png.starts_with(b"\x89PNG"),
            "attempt {} output is not a PNG",
            a.attempt
        );
        let prompt = comfyui_prompt(&url, &result, &runs[0].run_id, a.attempt).await;
        let noise = &prompt["prompt"][2]["2"]["inputs"];
        assert_eq!(
            noise["seed"].as_u64(),
            Some(a.seed),
            "the seed ComfyUI ran is the recorded one"
        );
        assert_eq!(
            noise["strength"].as_f64(),
            a.params.number("denoise_strength")
        );
        assert!(a.gpu_ms > 0, "billed ComfyUI's execution time");
    }
    eprintln!("{}", result.report);
}

#[tokio::test]
#[ignore = "needs RETAKE_COMFYUI_URL: a real ComfyUI"]
async fn a_real_comfyui_refusal_is_recorded_in_its_own_words() {
    let Some(url) = var("RETAKE_COMFYUI_URL") else {
        return skipped("RETAKE_COMFYUI_URL");
    };
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(comfyui_route(&url), dir.path()).await;
    let input = retry_request(
        &app,
        "refused",
        json!({"seed": 1, "denoise_strength": 7.0}),
        1,
    );

    let result = app.retry(input).await;

    let a = &result.attempts[0];
    assert_eq!(a.error_type.as_deref(), Some("BackendRejected"));
    let error = a.error.as_deref().unwrap();
    assert!(
        error.contains("bigger than max"),
        "ComfyUI's validation message: {error}"
    );
    eprintln!("{error}");
}

fn openai_route() -> Option<Value> {
    let base_url = var("RETAKE_OPENAI_BASE_URL")?;
    let model = var("RETAKE_OPENAI_MODEL").unwrap_or_else(|| "local".to_owned());
    Some(json!({
        "generate": {"kind": "openai", "base_url": base_url, "model": model, "max_tokens": 48},
        "score": {"kind": "simulator"}
    }))
}

fn text_of(uri: &str) -> String {
    let path = url::Url::parse(uri).unwrap().to_file_path().unwrap();
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
#[ignore = "needs RETAKE_OPENAI_BASE_URL: a real OpenAI-compatible server"]
async fn a_real_openai_compatible_server_reproduces_the_text_of_a_recorded_seed() {
    let Some(route) = openai_route() else {
        return skipped("RETAKE_OPENAI_BASE_URL");
    };
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(route, dir.path()).await;
    let params = json!({"seed": 5, "temperature": 1.0, "prompt": "Write one sentence about rain."});
    let input = retry_request(&app, "seeded", params, 1);

    // The same segment twice: attempt 1 derives the same seed, so the same text.
    let first = app.retry(input.clone()).await;
    let second = app.retry(input).await;

    let (a, b) = (&first.attempts[0], &second.attempts[0]);
    assert_eq!(a.seed, b.seed);
    assert!(
        a.seed < 1 << 32,
        "llama.cpp keeps 32 bits of the seed: {}",
        a.seed
    );
    let (ta, tb) = (
        text_of(a.output_uri.as_deref().unwrap()),
        text_of(b.output_uri.as_deref().unwrap()),
    );
    assert_eq!(ta, tb, "the recorded seed reproduces the output");
}

#[tokio::test]
#[ignore = "needs RETAKE_OPENAI_BASE_URL: a real OpenAI-compatible server"]
async fn a_real_openai_compatible_server_refusal_is_recorded_in_its_own_words() {
    let Some(route) = openai_route() else {
        return skipped("RETAKE_OPENAI_BASE_URL");
    };
    let dir = tempfile::tempdir().unwrap();
    let app = app_with(route, dir.path()).await;
    // Longer than any small context window.
    let params = json!({"seed": 5, "prompt": "rain ".repeat(20_000)});
    let input = retry_request(&app, "overflow", params, 1);

    let result = app.retry(input).await;

    let a = &result.attempts[0];
    assert_eq!(
        a.error_type.as_deref(),
        Some("BackendRejected"),
        "{:?}",
        a.error
    );
    let error = a.error.as_deref().unwrap();
    assert!(
        error.contains("context"),
        "the server's own message: {error}"
    );
    eprintln!("{error}");
}
