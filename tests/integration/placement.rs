//! Placement: a generation that failed because of its machine is re-run on another worker, never
//! the broken one; `any` records it as the attempt's error; a worker failing in a row cools down;
//! `same_worker` keeps a segment's attempts on one worker. Every attempt records its worker.

use crate::harness::{FakeComfyUi, OOM_MS, RENDER_MS, TestApp, find_segment, request};
use retake::retries;
use retake_activities::backends::BackendsConfig;
use retake_activities::ports::WorkerRow;
use retake_domain::contract::{AttemptStatus, INFRASTRUCTURE_FAILURE, Outcome};
use retake_testkit::WorkerProcess;
use serde_json::json;
use std::time::Duration;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

const OOM: &str = "CUDA out of memory. Tried to allocate 2.00 GiB";

/// A one-GPU worker process named `id`, `gpu_ms` per generation; broken ones fail every
/// generation with [`OOM`] after its first step.
pub(crate) fn gpu(app: &TestApp, id: &str, gpu_ms: u64, broken: bool) -> WorkerProcess {
    let mut w = app
        .worker_process()
        .worker_id(id)
        .sim_gpu_ms(gpu_ms)
        .max_concurrent_generations(1);
    if broken {
        w = w.sim_infrastructure_failure(OOM);
    }
    w.spawn().expect("start a worker process")
}

/// The task queues the segment's `generate` activities were scheduled on, in order.
async fn generate_queues(app: &TestApp, segment: &str) -> Vec<String> {
    app.history(segment)
        .await
        .into_iter()
        .filter_map(|e| match e.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(s))
                if s.activity_type
                    .as_ref()
                    .is_some_and(|t| t.name == "generate") =>
            {
                s.task_queue.map(|q| q.name)
            }
            _ => None,
        })
        .collect()
}

/// Wait until the registry lists `ids` (alive) on the app's task queue.
pub(crate) async fn registered(app: &TestApp, ids: &[&str]) -> Vec<WorkerRow> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = app.store.workers(&app.task_queue).await.unwrap();
        if ids.iter().all(|id| rows.iter().any(|w| w.worker_id == *id)) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers {ids:?} never announced themselves: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_generation_a_broken_gpu_failed_is_re_run_on_a_healthy_worker_and_never_on_it() {
    let app = TestApp::builder().without_worker().spawn().await;
    // The healthy GPU is slow, so the broken one, quick to fail, takes most first generations.
    let _broken = gpu(&app, "gpu-broken", 600, true);
    let _healthy = gpu(&app, "gpu-ok", 1500, false);
    registered(&app, &["gpu-broken", "gpu-ok"]).await;
    let policy = json!({"enabled": true, "max_attempts": 1});
    let project = format!("{}-oom", app.tag);
    let mut segments = vec![];
    let mut handles = vec![];
    for i in 0..3 {
        let segment = format!("{}-oom-{i}", app.tag);
        handles.push(
            app.start(request(&segment, &project, Some(policy.clone())))
                .await,
        );
        segments.push(segment);
    }

    let mut reruns = 0;
    let mut billed = 0;
    for (segment, handle) in segments.iter().zip(handles) {
        let result = retries::result(&handle).await.unwrap();
        let a = &result.attempts[0];
        assert!(
            matches!(a.status, AttemptStatus::Passed | AttemptStatus::Failed),
            "every attempt generated, on the healthy GPU: {a:?}"
        );
        assert_eq!(a.worker.as_deref(), Some("gpu-ok"), "{a:?}");
        let queues = generate_queues(&app, segment).await;
        assert!(
            !queues.iter().any(|q| q.ends_with("/generate/gpu-broken")),
            "nothing is ever placed on the broken GPU: {queues:?}"
        );
        if queues.len() > 1 {
            reruns += 1;
            assert_eq!(
                queues,
                [
                    format!("{}/generate", app.task_queue),
                    format!("{}/generate/gpu-ok", app.task_queue)
                ],
                "failed on the shared queue, re-run on the healthy worker's own"
            );
            let note = a.note.as_deref().unwrap_or_default();
            assert!(
                note.starts_with(&format!("re-run after {INFRASTRUCTURE_FAILURE}: {OOM}"))
                    && note.ends_with(" on gpu-broken"),
                "{note}"
            );
            assert_eq!(a.gpu_ms, 1500 + 60, "the broken GPU's step is billed too");
            assert!(
                result.report.contains("attempt 1 [re-run on gpu-ok]"),
                "{}",
                result.report
            );
        } else {
            assert_eq!(a.gpu_ms, 1500);
        }
        billed += a.gpu_ms;
    }
    assert!(reruns >= 1, "the broken GPU took no generation at all");
    let budget = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!((budget.spent_ms, budget.reserved_ms), (billed, 0));
    let rows = app.store.attempts(&segments[0]).await.unwrap();
    assert_eq!(rows[0].record.worker.as_deref(), Some("gpu-ok"));
}

#[tokio::test]
async fn with_placement_any_an_infrastructure_failure_is_the_attempts_recorded_error() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _broken = gpu(&app, "gpu-broken", 1000, true);
    let segment = format!("{}-any", app.tag);
    let policy = json!({"enabled": true, "max_attempts": 2, "placement": "any"});

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(result.outcome, Outcome::Escalated, "{}", result.report);
    for a in &result.attempts {
        assert_eq!(a.status, AttemptStatus::Error);
        assert_eq!(a.error_type.as_deref(), Some(INFRASTRUCTURE_FAILURE));
        assert!(
            a.error
                .as_deref()
                .unwrap_or_default()
                .starts_with(&format!("generation failed: {OOM}")),
            "{a:?}"
        );
        assert_eq!(a.worker.as_deref(), Some("gpu-broken"));
        assert_eq!(a.gpu_ms, 100, "its first step, billed");
        assert_eq!(a.note, None, "not re-run");
    }
    assert!(
        result.report.contains(&format!(
            "error on attempt 1 ({INFRASTRUCTURE_FAILURE} on gpu-broken: "
        )),
        "{}",
        result.report
    );
    assert_eq!(generate_queues(&app, &segment).await.len(), 2);
}

#[tokio::test]
async fn a_worker_failing_in_a_row_cools_down_and_the_next_attempt_waits_for_a_healthy_one() {
    let app = TestApp::builder().without_worker().spawn().await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let _broken = app
        .worker_process()
        .worker_id("gpu-broken")
        .sim_gpu_ms(1000)
        .sim_infrastructure_failure(OOM)
        .env("RETAKE_COOL_DOWN_AFTER", "2")
        .env("RETAKE_COOL_DOWN_SECS", "600")
        .env("RUST_LOG", "warn")
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let segment = format!("{}-cool", app.tag);
    let policy = json!({"enabled": true, "max_attempts": 3, "placement": "any"});
    let handle = app.start(request(&segment, "p1", Some(policy))).await;

    // Two failures in a row: the broken worker stops taking generations.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let cooling = loop {
        let rows = app.store.workers(&app.task_queue).await.unwrap();
        if let Some(w) = rows.iter().find(|w| w.cooling_until_ms > 0) {
            break w.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never cooled down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(cooling.worker_id, "gpu-broken");
    assert_eq!(
        app.store.stats().await.unwrap().workers_cooling,
        1,
        "the metric retake_workers_cooling counts it"
    );
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("cooling down: taking no generations from the shared queue"),
        "{text}"
    );
    let status = app
        .wait_for(&segment, "attempt 3 waiting", |s| {
            s.attempts.len() == 2 && s.running_attempt == Some(3)
        })
        .await;
    assert!(
        status
            .attempts
            .iter()
            .all(|a| a.worker.as_deref() == Some("gpu-broken"))
    );

    let _healthy = gpu(&app, "gpu-ok", 200, false);
    let result = retries::result(&handle).await.unwrap();
    let workers: Vec<_> = result
        .attempts
        .iter()
        .map(|a| (a.status, a.worker.as_deref()))
        .collect();
    assert_eq!(
        workers[..2],
        [(AttemptStatus::Error, Some("gpu-broken")); 2]
    );
    assert_eq!(workers[2].1, Some("gpu-ok"), "{workers:?}");
}

#[tokio::test]
async fn same_worker_keeps_a_segments_attempts_on_the_worker_that_generated_the_first() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _a = gpu(&app, "gpu-a", 300, false);
    let _b = gpu(&app, "gpu-b", 300, false);
    registered(&app, &["gpu-a", "gpu-b"]).await;
    let policy = json!({"enabled": true, "selection": "best_of_n", "placement": "same_worker"});
    let (segment, _) = find_segment(&app.tag, "warm", &policy, |a| a.len() == 3);

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    let first = result.attempts[0].worker.clone().expect("a worker");
    assert!(
        result
            .attempts
            .iter()
            .all(|a| a.worker.as_deref() == Some(first.as_str())),
        "{:?}",
        result.attempts
    );
    let queues = generate_queues(&app, &segment).await;
    assert_eq!(
        queues[1..],
        [
            format!("{}/generate/{first}", app.task_queue),
            format!("{}/generate/{first}", app.task_queue)
        ]
    );
}

#[tokio::test]
async fn a_worker_without_a_gpu_limit_takes_its_own_generations_eagerly() {
    // The harness's worker has no `--max-concurrent-generations`: a render farm behind it.
    let app = crate::harness::spawn_app().await;
    let policy = json!({"enabled": true, "max_attempts": 3});
    let (segment, planned) = find_segment(&app.tag, "eager", &policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(
        crate::harness::comparable(&result.attempts),
        crate::harness::comparable(&planned)
    );
    assert_eq!(
        generate_queues(&app, &segment).await,
        vec![app.task_queue.clone(); 3],
        "each generation on the workflow's own queue, for the server to hand over eagerly"
    );
    let promised = app
        .history(&segment)
        .await
        .into_iter()
        .filter_map(|e| match e.attributes {
            Some(Attributes::MarkerRecordedEventAttributes(m)) => Some(m),
            _ => None,
        })
        .filter_map(|m| {
            let result = m.details.get("result")?.payloads.first()?.data.clone();
            let v: serde_json::Value = serde_json::from_slice(&result).ok()?;
            v.get("eager").and_then(serde_json::Value::as_bool)
        })
        .collect::<Vec<_>>();
    assert_eq!(
        promised, [true; 3],
        "each reservation promised the attempt a GPU here"
    );
    let budget = app.store.budget("p1").await.unwrap().unwrap();
    assert_eq!(
        (budget.reserved_ms, budget.spent_ms),
        (0, result.gpu_ms_total)
    );
}

/// A generation re-run after CUDA ran out of memory on ComfyUI is billed each run once: the
/// failed prompt's execution time as ComfyUI recorded it plus the re-run's, on the record, the
/// result and the budget. Before, the adapter added the attempt's earlier failed prompts to the
/// re-run's result and the workflow added the failed run again (ComfyUI's 10,131 + 4,232 ms
/// billed 24,494). With one worker the re-run goes back to the same ComfyUI, as it did there.
#[tokio::test]
async fn a_rerun_after_cuda_ran_out_of_memory_on_comfyui_bills_each_run_once() {
    let comfy = FakeComfyUi::start().await;
    let graph =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/comfyui/noise.json");
    let artifacts = tempfile::tempdir().unwrap();
    let config = json!({"artifacts_dir": artifacts.path(), "scene_types": {"comfy": {
        "generate": {"kind": "comfyui", "base_url": comfy.base_url, "workflow": graph,
                     "sampler_nodes": ["2"], "inputs": {"denoise_strength": "strength"},
                     "poll_interval_ms": 50},
        "score": {"kind": "simulator"}}}});
    let app = TestApp::builder()
        .backends(BackendsConfig::parse("comfy", &config.to_string()).expect("config"))
        .spawn()
        .await;
    let project = format!("{}-oom", app.tag);
    app.store
        .set_limit(&project, Some(1_000_000))
        .await
        .unwrap();
    let segment = format!("{}-oom", app.tag);
    let result = app
        .retry(json!({
            "segment_id": segment, "project_id": project, "scene_type": "comfy",
            "params": {"seed": 7, "denoise_strength": 0.5},
            "failed_qa": {"scores": {"face": 0.3}, "failures": ["face_melt"]},
            "policy": {"enabled": true, "max_attempts": 1, "review_window_secs": 0}
        }))
        .await;
    let both = OOM_MS + RENDER_MS;
    let a = &result.attempts[0];
    assert_eq!(a.gpu_ms, both, "each run once: {}", result.report);
    assert!(
        a.note
            .as_deref()
            .is_some_and(|n| n.contains("re-run after InfrastructureFailure")),
        "{:?}",
        a.note
    );
    assert_eq!(result.gpu_ms_total, both);
    let ids = comfy.client_ids();
    assert_eq!(ids.len(), 2, "the failed prompt and the re-run: {ids:?}");
    assert_ne!(ids[0], ids[1], "the re-run is a run of its own");
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(rows[0].record.gpu_ms, both, "the record");
    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!((b.reserved_ms, b.spent_ms), (0, both), "the budget");
}
