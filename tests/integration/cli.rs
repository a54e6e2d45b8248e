use crate::harness::{TestApp, dev_server, find_segment, request, spawn_app};
use retake_domain::contract::{Outcome, RetryResult};
use serde_json::{Value, json};
use std::process::Output;
use tokio::process::Command;

/// Run the `retake` binary against this test's server, queue and database.
pub(crate) async fn retake(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retake"))
        .args(args)
        .args([
            "--temporal-address",
            &app.address,
            "--task-queue",
            &app.task_queue,
        ])
        .env("RETAKE_DATABASE_URL", &app.db_url)
        .env_remove("TEMPORAL_ADDRESS")
        .output()
        .await
        .expect("run retake")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn the_plain_temporal_cli_starts_a_retry_and_gets_the_result_json() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true});
    let (segment, predicted) = find_segment(&app.tag, "cli", &policy, |a| a.len() >= 2);
    let input = request(&segment, "p1", Some(policy)).to_string();

    let out = Command::new(dev_server().temporal())
        .args([
            "workflow",
            "execute",
            "--type",
            "SegmentRetryWorkflow",
            "--task-queue",
        ])
        .arg(&app.task_queue)
        .args([
            "--workflow-id",
            &format!("segment-retry-{segment}"),
            "--input",
            &input,
        ])
        .args(["--address", &app.address, "-o", "json"])
        .output()
        .await
        .unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "COMPLETED");
    let raw = &doc["closeEvent"]["workflowExecutionCompletedEventAttributes"]["result"][0];
    for field in [
        "segment_id",
        "outcome",
        "selected_attempt",
        "attempts",
        "gpu_ms_total",
        "report",
    ] {
        assert!(raw.get(field).is_some(), "result JSON lacks {field}: {raw}");
    }
    for field in [
        "attempt",
        "seed",
        "params",
        "original_params",
        "scores",
        "passed",
        "failures",
        "gpu_ms",
        "status",
    ] {
        assert!(
            raw["attempts"][0].get(field).is_some(),
            "attempt JSON lacks {field}"
        );
    }
    let result: RetryResult = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(result.attempts.len(), predicted.len());
    let seeds: Vec<u64> = result.attempts.iter().map(|a| a.seed).collect();
    let expected: Vec<u64> = predicted.iter().map(|a| a.seed).collect();
    assert_eq!(
        seeds, expected,
        "seeds survive the JSON clients exactly (below 2^53)"
    );
}

#[tokio::test]
async fn retake_retry_prints_the_report_and_history_lists_every_attempt() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "review_window_secs": 0});
    let (segment, predicted) = find_segment(&app.tag, "bin", &policy, |a| a.len() == 3);
    let policy_arg = policy.to_string();
    let args = [
        "retry",
        "--segment",
        &segment,
        "--project",
        "p1",
        "--scene-type",
        "dialogue",
        "--seed",
        "1234",
        "--cfg-scale",
        "7.5",
        "--denoise-strength",
        "0.6",
        "--param",
        "sampler=\"euler\"",
        "--score",
        "face=0.42",
        "--failure",
        "face_melt",
        "--policy",
        &policy_arg,
        // The SDK's default, off by default here: the server takes gzipped requests too.
        "--grpc-compression",
        "gzip",
    ];

    let out = retake(&app, &args).await;

    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("Segment {segment}: failed attempt 1 (face ")),
        "{text}"
    );

    let hist = retake(&app, &["history", &segment, "--json"]).await;
    assert!(hist.status.success(), "{}", stderr(&hist));
    let doc: Value = serde_json::from_slice(&hist.stdout).unwrap();
    let attempts = doc["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    for (row, p) in attempts.iter().zip(&predicted) {
        assert_eq!(row["seed"], json!(p.seed));
        assert_eq!(row["params"], serde_json::to_value(&p.params).unwrap());
        assert_eq!(row["gpu_ms"], json!(20));
    }
    let text = stdout(&retake(&app, &["history", &segment]).await);
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    // The media ladder: attempt 1 reseeds only, attempts 2 and 3 also jitter.
    assert_eq!(lines("cfg_scale 7.5→"), 2, "{text}");
    assert_eq!(lines("strategy: reseed_jitter"), 2, "{text}");
    assert_eq!(lines("strategy: reseed"), 3, "{text}");
}

#[tokio::test]
async fn retake_refuses_bad_input_with_the_field_named_and_a_failing_exit_code() {
    let app = spawn_app().await;

    let nan = retake(
        &app,
        &[
            "retry",
            "--segment",
            "x",
            "--project",
            "p",
            "--scene-type",
            "s",
            "--score",
            "face=NaN",
            "--failure",
            "face_melt",
        ],
    )
    .await;
    assert!(!nan.status.success());
    assert!(stderr(&nan).contains("face"), "{}", stderr(&nan));

    let zero = retake(&app, &["policy", "set", "dialogue", "--max-attempts", "0"]).await;
    assert!(!zero.status.success());
    assert!(
        stderr(&zero).contains("policy.max_attempts"),
        "{}",
        stderr(&zero)
    );

    let id = retake(&app, &["budget", "set", "bad project", "--limit-ms", "5"]).await;
    assert!(!id.status.success());
    assert!(stderr(&id).contains("project_id"), "{}", stderr(&id));

    let codec = retake(&app, &["status", "x", "--grpc-compression", "brotli"]).await;
    assert!(!codec.status.success());
    assert!(
        stderr(&codec).contains("--grpc-compression") && stderr(&codec).contains("gzip"),
        "{}",
        stderr(&codec)
    );
}

#[tokio::test]
async fn a_worker_with_a_bad_backends_file_refuses_to_start_naming_the_field() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends.json");
    std::fs::write(
        &file,
        r#"{"scene_types": {"chapter": {"generate": {"kind": "comfyui",
            "base_url": "http://127.0.0.1:8188", "workflow": "/nonexistent/flow.json"},
            "score": {"kind": "simulator"}}}}"#,
    )
    .unwrap();
    let out = retake(&app, &["worker", "--backends", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("scene_types.chapter.generate.workflow"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        &file,
        r#"{"scene_types": {"chapter": {"generate": {"kind": "dalle"}}}}"#,
    )
    .unwrap();
    let out = retake(&app, &["worker", "--backends", file.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dalle"), "{}", stderr(&out));
}

#[tokio::test]
async fn retake_policy_and_budget_commands_store_what_they_show() {
    let app = spawn_app().await;

    let set = retake(
        &app,
        &[
            "policy",
            "set",
            "action",
            "--enable",
            "--max-attempts",
            "5",
            "--selection",
            "best_of_n",
            "--retry-on",
            "face_melt,artifacting",
        ],
    )
    .await;
    assert!(set.status.success(), "{}", stderr(&set));
    let show = retake(&app, &["policy", "show", "action", "--json"]).await;
    let p: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(p["enabled"], json!(true));
    assert_eq!(p["max_attempts"], json!(5));
    assert_eq!(p["selection"], json!("best_of_n"));
    assert_eq!(p["retry_on"], json!(["artifacting", "face_melt"]));
    // Without --json too, every setting that changes how a retry runs is shown.
    let text = stdout(&retake(&app, &["policy", "show", "action"]).await);
    for line in [
        "parallelism:   1",
        "placement:     avoid_failed",
        "review window: 86400 s",
        "stop_after_same_refusals: 2",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }

    let budget = retake(&app, &["budget", "set", "p9", "--limit-ms", "60000"]).await;
    assert!(budget.status.success(), "{}", stderr(&budget));
    let show = retake(&app, &["budget", "show", "p9", "--json"]).await;
    let b: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(b["limit_ms"], json!(60000));
    assert_eq!(b["spent_ms"], json!(0));
}

#[tokio::test]
async fn retake_demo_runs_a_batch_with_a_mix_of_fixed_and_escalated_segments() {
    let app = spawn_app().await;

    let out = retake(
        &app,
        &[
            "demo",
            "--segments",
            "16",
            "--project",
            &format!("{}-demo", app.tag),
            "--scene-type",
            &format!("{}-demo", app.tag),
            "--sim-gpu-ms",
            "20",
        ],
    )
    .await;

    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let reports = text
        .lines()
        .filter(|l| l.starts_with("Segment demo-"))
        .count();
    assert_eq!(reports, 16, "{text}");
    assert!(text.contains("passed attempt"), "{text}");
    assert!(text.contains("escalated for human review"), "{text}");
    let totals = text
        .lines()
        .find(|l| l.starts_with("totals:"))
        .expect("a totals line");
    assert!(!totals.starts_with("totals: 0 fixed"), "{totals}");
    let _ = Outcome::Passed;
}

#[tokio::test]
async fn a_reader_that_goes_away_ends_a_printing_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let app = spawn_app().await;
    let segment = format!("{}-pipe", app.tag);
    app.retry(request(
        &segment,
        "p1",
        Some(json!({"enabled": true, "max_attempts": 3})),
    ))
    .await;
    // `retake history … | head -0`: the reading end is closed before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_retake"))
        .args(["history", &segment, "--task-queue", &app.task_queue])
        .env("RETAKE_DATABASE_URL", &app.db_url)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        // Not `output()`: tokio's pipes stdout whatever was configured.
        .spawn()
        .expect("run retake")
        .wait_with_output()
        .await
        .expect("run retake");
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
