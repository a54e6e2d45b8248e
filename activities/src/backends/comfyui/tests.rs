//! ComfyUI against a scripted fake server (the HTTP tests' fake).

use super::{ComfyUi, ComfyUiConfig};
use crate::backends::http::fake::{Beats, Fake, Reply, serve};
use crate::backends::http::tests::request;
use crate::io::Generated;
use crate::ports::{BackendError, GenerationBackend};
use serde_json::{Value, json};
use std::sync::Arc;

const KEY: &str = "segment-retry-ch-12/run-1/2";

fn workflow() -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 1, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "the mentor, rain", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "retake", "images": ["8", 0]}}
    })
}

fn config(base_url: &str, graph: &str) -> (ComfyUiConfig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flow.json");
    std::fs::write(&path, graph).unwrap();
    let config = ComfyUiConfig {
        base_url: base_url.to_owned(),
        workflow: path,
        sampler_nodes: None,
        inputs: None,
        poll_interval_ms: Some(10),
        request_timeout_secs: Some(5),
        poll_retries: None,
        history_lookup: None,
        seed_bits: None,
    };
    (config, dir)
}

fn empty_queue() -> Reply {
    Reply::json(200, json!({"queue_running": [], "queue_pending": []}))
}

fn queued() -> Reply {
    Reply::json(
        200,
        json!({"prompt_id": "p-1", "number": 7, "node_errors": {}}),
    )
}

/// A finished history entry for `p-1`.
fn finished(status: Value, outputs: Value) -> Reply {
    let prompt = json!([7, "p-1", {}, {"client_id": KEY}, ["9"]]);
    Reply::json(
        200,
        json!({"p-1": {"prompt": prompt, "outputs": outputs, "status": status}}),
    )
}

fn success() -> Reply {
    let status = json!({"status_str": "success", "completed": true, "messages": [
        ["execution_start", {"prompt_id": "p-1", "timestamp": 1_700_000_000_000_u64}],
        ["execution_cached", {"nodes": [], "prompt_id": "p-1", "timestamp": 1_700_000_000_001_u64}],
        ["execution_success", {"prompt_id": "p-1", "timestamp": 1_700_000_004_250_u64}]]});
    let outputs = json!({
        "12": {"images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}]},
        "9": {"images": [{"filename": "retake_00001_.png", "subfolder": "ch 12", "type": "output"}]}
    });
    finished(status, outputs)
}

async fn run(
    script: Vec<(&str, Vec<Reply>)>,
) -> (Result<Generated, BackendError>, Arc<Fake>, String) {
    let (url, fake) = serve(script).await;
    let (config, _dir) = config(&url, &workflow().to_string());
    let result = ComfyUi::new(config)
        .unwrap()
        .generate(&request(), &Beats::default())
        .await;
    (result, fake, url)
}

#[tokio::test]
async fn the_posted_graph_has_the_seed_and_parameters_in_the_sampler_node_only() {
    let (result, fake, _) = run(vec![
        ("GET /queue", vec![empty_queue()]),
        ("GET /history", vec![Reply::json(200, json!({}))]),
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![success()]),
    ])
    .await;
    result.unwrap();
    let post = &fake.to("POST /prompt")[0];
    assert_eq!(post.body["client_id"], KEY);
    let mut expected = workflow();
    let sampler = &mut expected["3"]["inputs"];
    sampler["seed"] = json!(42);
    sampler["cfg"] = json!(6.5);
    sampler["denoise"] = json!(0.4);
    sampler["steps"] = json!(30);
    assert_eq!(post.body["prompt"], expected);
    // The earlier-prompt lookup asked for a bounded history.
    assert_eq!(
        fake.to("GET /history")[0].query.as_deref(),
        Some("max_items=100")
    );
}

#[tokio::test]
async fn the_history_is_polled_until_done_and_the_saved_file_is_the_view_uri() {
    let still = Reply::json(200, json!({}));
    let (result, fake, url) = run(vec![
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![still.clone(), still, success()]),
    ])
    .await;
    let generated = result.unwrap();
    assert_eq!(
        generated.output_uri,
        format!("{url}/view?filename=retake_00001_.png&subfolder=ch+12&type=output")
    );
    assert_eq!(generated.gpu_ms, 4250);
    assert_eq!(fake.to("GET /history/p-1").len(), 3);
}

#[tokio::test]
async fn node_errors_are_rejected_with_comfyuis_message() {
    let refusal = json!({
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": ""},
        "node_errors": {"3": {"class_type": "KSampler", "dependent_outputs": ["9"], "errors": [
            {"type": "value_bigger_than_max", "message": "Value bigger than max", "details": "cfg: 130.0 > 100.0"}]}}
    });
    let (result, fake, _) = run(vec![(
        "POST /prompt",
        vec![Reply::json(400, refusal.clone())],
    )])
    .await;
    let Err(BackendError::Rejected(msg)) = result else {
        panic!("{result:?}")
    };
    assert!(msg.contains("Prompt outputs failed validation"), "{msg}");
    assert!(
        msg.contains("node 3 (KSampler): Value bigger than max: cfg: 130.0 > 100.0"),
        "{msg}"
    );
    assert!(fake.to("GET /history/p-1").is_empty());

    let accepted_with_errors =
        json!({"prompt_id": "p-1", "number": 1, "node_errors": refusal["node_errors"]});
    let (result, _, _) = run(vec![(
        "POST /prompt",
        vec![Reply::json(200, accepted_with_errors)],
    )])
    .await;
    assert!(
        matches!(&result, Err(BackendError::Rejected(m)) if m.contains("cfg: 130.0")),
        "{result:?}"
    );
}

/// A history whose prompt failed in node 3 with `exception_type: message`.
fn execution_error(exception_type: &str, message: &str) -> serde_json::Value {
    json!({"status_str": "error", "completed": false, "messages": [
        ["execution_start", {"prompt_id": "p-1", "timestamp": 1}],
        ["execution_error", {"prompt_id": "p-1", "node_id": "3", "node_type": "KSampler",
            "exception_type": exception_type, "exception_message": message,
            "traceback": [], "timestamp": 2}]]})
}

#[tokio::test]
async fn an_execution_error_is_rejected_with_the_exception_message() {
    let status = execution_error("ValueError", "cfg must be positive\n");
    let (result, _, _) = run(vec![
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![finished(status, json!({}))]),
    ])
    .await;
    let Err(e) = result else { panic!("{result:?}") };
    let (BackendError::Rejected(msg), Some(1)) = e.split() else {
        panic!("rejected, billed the 1 ms between execution_start and execution_error")
    };
    assert!(
        msg.contains("node 3 (KSampler) failed: ValueError: cfg must be positive"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_out_of_memory_execution_error_is_the_machines_failure_not_the_requests() {
    let status = execution_error("torch.OutOfMemoryError", "CUDA out of memory\n");
    let (result, _, _) = run(vec![
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![finished(status, json!({}))]),
    ])
    .await;
    let Err(e) = result else { panic!("{result:?}") };
    assert!(e.is_infrastructure(), "{e:?}");
    let (BackendError::Infrastructure(msg), Some(1)) = e.split() else {
        panic!("an infrastructure failure, billed its 1 ms")
    };
    assert!(
        msg.contains("node 3 (KSampler) failed: torch.OutOfMemoryError: CUDA out of memory"),
        "{msg}"
    );
}

/// A history entry for `p-1` that ended with `end` after `ms` of execution.
fn stopped(status_str: &str, end: &str, ms: u64) -> Reply {
    let status = json!({"status_str": status_str, "completed": status_str == "success", "messages": [
        ["execution_start", {"prompt_id": "p-1", "timestamp": 1_000}],
        [end, {"prompt_id": "p-1", "timestamp": 1_000 + ms}]]});
    let outputs = json!({"9": {"images": [{"filename": "retake_00001_.png", "subfolder": "", "type": "output"}]}});
    finished(status, outputs)
}

/// Run the attempt and cancel it while its prompt runs; ComfyUI's history answers `after`.
async fn cancelled_while_running(after: Reply) -> (Result<Generated, BackendError>, Arc<Fake>) {
    let running =
        json!({"queue_running": [[7, "p-1", {}, {"client_id": KEY}, ["9"]]], "queue_pending": []});
    let (url, fake) = serve(vec![
        ("GET /queue", vec![empty_queue(), Reply::json(200, running)]),
        ("GET /history", vec![Reply::json(200, json!({}))]),
        ("POST /prompt", vec![queued()]),
        // Running (`{}`) for as many polls as the attempt makes before it is cancelled (timing
        // decides how many), then `after` for the reads that follow the interrupt.
        (
            "GET /history/p-1",
            [vec![Reply::json(200, json!({})); 6], vec![after]].concat(),
        ),
        ("POST /interrupt", vec![Reply::text(200, "")]),
        ("POST /queue", vec![Reply::text(200, "")]),
    ])
    .await;
    let (config, _dir) = config(&url, &workflow().to_string());
    // Heartbeats: lookup, post, pause, poll, then cancelled in the next pause.
    let result = ComfyUi::new(config)
        .unwrap()
        .generate(&request(), &Beats::cancelling_at(5))
        .await;
    (result, fake)
}

#[tokio::test]
async fn an_interrupted_prompt_is_billed_the_execution_time_comfyui_recorded() {
    let (result, _) =
        cancelled_while_running(stopped("error", "execution_interrupted", 3_000)).await;
    let Err(e) = result else { panic!("{result:?}") };
    assert!(e.is_cancelled());
    assert_eq!(e.split().1, Some(3_000));
}

#[tokio::test]
async fn a_prompt_that_finished_its_last_node_after_the_interrupt_is_billed_in_full() {
    // ComfyUI checks for an interrupt only between nodes: during the last one it finishes.
    let (result, _) =
        cancelled_while_running(stopped("success", "execution_success", 17_000)).await;
    let Err(e) = result else { panic!("{result:?}") };
    assert!(e.is_cancelled());
    assert!(
        e.output_uri()
            .is_some_and(|u| u.contains("/view?filename=retake_00001_.png")),
        "the finished prompt's output is kept: {e:?}"
    );
    assert_eq!(e.split().1, Some(17_000));
}

#[tokio::test]
async fn a_prompt_interrupted_by_someone_else_and_queued_again_is_billed_for_both_runs() {
    let earlier = stopped("error", "execution_interrupted", 5_000);
    let (result, fake, _) = run(vec![
        ("GET /queue", vec![empty_queue()]),
        ("GET /history", vec![earlier]),
        ("POST /prompt", vec![queued()]),
        (
            "GET /history/p-1",
            vec![stopped("success", "execution_success", 2_000)],
        ),
    ])
    .await;
    assert_eq!(
        fake.to("POST /prompt").len(),
        1,
        "the interrupted prompt is queued again"
    );
    assert_eq!(
        result.unwrap().gpu_ms,
        7_000,
        "5 s interrupted + 2 s re-run"
    );
}

#[tokio::test]
async fn a_rerun_after_an_out_of_memory_run_bills_only_its_own_run() {
    // The workflow re-runs a generation whose machine failed, and bills the failed run itself
    // (`used_gpu_ms` of its failure). ComfyUI keeps the failed prompt in its history under the
    // attempt's key, as the real one does; the re-run must not find and bill it again.
    let failed = stopped("error", "execution_error", 10_131);
    let (url, fake) = serve(vec![
        ("GET /queue", vec![empty_queue()]),
        ("GET /history", vec![failed]),
        ("POST /prompt", vec![queued()]),
        (
            "GET /history/p-1",
            vec![stopped("success", "execution_success", 4_232)],
        ),
    ])
    .await;
    let (config, _dir) = config(&url, &workflow().to_string());
    let mut rerun = request();
    rerun.run = 1;
    let generated = ComfyUi::new(config)
        .unwrap()
        .generate(&rerun, &Beats::default())
        .await
        .unwrap();
    assert_eq!(generated.gpu_ms, 4_232, "only the re-run's own execution");
    assert_eq!(
        fake.to("POST /prompt")[0].body["client_id"],
        format!("{KEY}/run-2"),
        "a run of its own, not the failed prompt found again"
    );
}

#[tokio::test]
async fn an_earlier_prompt_of_the_same_attempt_is_polled_instead_of_queued_again() {
    let running = json!({"queue_running": [[7, "p-1", {}, {"client_id": KEY}, ["9"]]],
                         "queue_pending": [[8, "p-2", {}, {"client_id": "someone-else"}, ["9"]]]});
    let (result, fake, _) = run(vec![
        ("GET /queue", vec![Reply::json(200, running)]),
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![success()]),
    ])
    .await;
    assert!(result.unwrap().output_uri.contains("retake_00001_.png"));
    assert!(fake.to("POST /prompt").is_empty());

    // Finished while no worker watched: answered from the history at once.
    let (result, fake, _) = run(vec![
        ("GET /queue", vec![empty_queue()]),
        ("GET /history", vec![success()]),
        ("POST /prompt", vec![queued()]),
    ])
    .await;
    assert!(result.unwrap().output_uri.contains("retake_00001_.png"));
    assert!(fake.to("POST /prompt").is_empty());
}

#[tokio::test]
async fn cancelling_interrupts_the_running_prompt_and_removes_it_from_the_queue() {
    let (result, fake) =
        cancelled_while_running(stopped("error", "execution_interrupted", 40)).await;
    assert!(matches!(&result, Err(e) if e.is_cancelled()), "{result:?}");
    assert_eq!(
        fake.to("POST /interrupt")[0].body,
        json!({"prompt_id": "p-1"})
    );
    assert_eq!(fake.to("POST /queue")[0].body, json!({"delete": ["p-1"]}));
}

#[tokio::test]
async fn a_bad_workflow_file_is_a_configuration_error_naming_workflow() {
    let ui_format = json!({"nodes": [], "links": []}).to_string();
    let no_sampler = json!({"9": {"class_type": "SaveImage", "inputs": {}}}).to_string();
    for (graph, expected) in [
        ("{not json", "not valid JSON"),
        (ui_format.as_str(), "Export (API)"),
        (no_sampler.as_str(), "no sampler node"),
    ] {
        let (config, _dir) = config("http://127.0.0.1:8188", graph);
        let err = ComfyUi::new(config).unwrap_err();
        assert_eq!(err.field, "workflow");
        assert!(err.message.contains(expected), "{err}");
    }
    let (mut config, _dir) = config("http://127.0.0.1:8188", "{}");
    config.workflow = "/nonexistent/flow.json".into();
    let err = ComfyUi::new(config).unwrap_err();
    assert!(
        err.field == "workflow" && err.message.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn an_advanced_sampler_gets_noise_seed_and_integer_inputs_stay_integers() {
    let graph = json!({
        "10": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 5, "steps": 20, "cfg": 7}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0]}}
    });
    let (config, _dir) = config("http://127.0.0.1:8188", &graph.to_string());
    let comfy = ComfyUi::new(config).unwrap();
    let mut params = request().params;
    params.0.insert("steps".into(), json!(27.6));
    let prepared = comfy.workflow.prepare(99, &params);
    let inputs = &prepared["10"]["inputs"];
    assert_eq!(inputs["noise_seed"], 99);
    assert!(inputs.get("seed").is_none());
    assert_eq!(inputs["steps"], json!(28));
    assert_eq!(inputs["cfg"], 6.5);
    assert_eq!(prepared["11"], graph["11"]);
}

#[tokio::test]
async fn a_prompt_comfyui_lost_fails_transiently_instead_of_polling_forever() {
    let (result, fake, _) = run(vec![
        ("GET /queue", vec![empty_queue()]),
        ("GET /history", vec![Reply::json(200, json!({}))]),
        ("POST /prompt", vec![queued()]),
        ("GET /history/p-1", vec![Reply::json(200, json!({}))]),
    ])
    .await;
    let Err(BackendError::Transient(msg)) = result else {
        panic!("{result:?}")
    };
    assert!(msg.contains("no longer knows the prompt"), "{msg}");
    // Ten polls, then the queue check and one last look at the history.
    assert_eq!(fake.to("GET /history/p-1").len(), 11);
}

#[tokio::test]
async fn a_brief_outage_while_polling_is_retried_in_place() {
    let (result, fake, _) = run(vec![
        ("POST /prompt", vec![queued()]),
        (
            "GET /history/p-1",
            vec![
                Reply::text(502, "bad gateway"),
                Reply::text(503, ""),
                success(),
            ],
        ),
    ])
    .await;
    assert_eq!(result.unwrap().gpu_ms, 4250);
    assert_eq!(fake.to("POST /prompt").len(), 1);
}

#[test]
fn only_the_parameters_a_graph_maps_are_taken() {
    use crate::ports::GenerationBackend as _;
    let (mut mapped, _dir) = config("http://127.0.0.1:8188", &workflow().to_string());
    mapped.inputs = Some(std::collections::BTreeMap::from([(
        "strength".to_owned(),
        "denoise".to_owned(),
    )]));
    let comfy = ComfyUi::new(mapped).unwrap();
    assert_eq!(comfy.params_taken("any"), Some(vec!["strength".to_owned()]));
    // The default mapping.
    let (default, _dir2) = config("http://127.0.0.1:8188", &workflow().to_string());
    let taken = ComfyUi::new(default).unwrap().params_taken("any").unwrap();
    assert!(
        taken.contains(&"cfg_scale".to_owned()) && taken.contains(&"denoise_strength".to_owned())
    );
}
