//! Every attempt and every retry outcome is in the worker's log at the default level, as plain
//! text without colour codes when not on a terminal, or as JSON lines.

use crate::harness::{TestApp, find_segment, request};
use serde_json::{Value, json};

/// Run `n` retries through one logging worker process; its log and the attempts made.
async fn logged_retries(format: &str, name: &str, n: usize) -> (String, usize, Vec<String>) {
    let app = TestApp::builder().without_worker().spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    // Logging as a user's would: the default filter, stderr to a file (so not a terminal).
    let mut worker = app
        .worker_process()
        .sim_gpu_ms(50)
        .sim_qa_ms(0)
        .env_remove("RUST_LOG")
        .env("RETAKE_LOG_FORMAT", format)
        .stderr(std::fs::File::create(&log).expect("create the log file"))
        .spawn()
        .expect("start a logging worker process");
    let policy = json!({"enabled": true});
    let mut attempts = 0;
    let mut segments = vec![];
    for i in 0..n {
        let (segment, predicted) =
            find_segment(&app.tag, &format!("{name}{i}"), &policy, |a| a.len() >= 2);
        let result = app
            .retry(request(&segment, "p1", Some(policy.clone())))
            .await;
        assert_eq!(result.attempts.len(), predicted.len());
        attempts += result.attempts.len();
        segments.push(segment);
    }
    worker.kill().await.expect("SIGKILL the worker");
    (std::fs::read_to_string(&log).unwrap(), attempts, segments)
}

#[tokio::test]
async fn a_worker_logs_each_attempt_and_outcome_as_plain_text_without_colour_codes() {
    let (log, attempts, segments) = logged_retries("text", "logtext", 3).await;

    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes in a log file:\n{log}"
    );
    let started = log
        .lines()
        .filter(|l| l.contains("attempt started"))
        .count();
    let ended = log
        .lines()
        .filter(|l| l.contains("attempt passed") || l.contains("attempt failed"))
        .count();
    assert_eq!((started, ended), (attempts, attempts), "{log}");
    for segment in &segments {
        let outcome = log
            .lines()
            .filter(|l| l.contains("retake_activities::retry") && l.contains(segment.as_str()))
            .count();
        assert_eq!(outcome, 1, "one outcome line for {segment}:\n{log}");
    }
    let line = log.lines().find(|l| l.contains("attempt failed")).unwrap();
    for field in [
        "segment=", "attempt=", "seed=", "scores=", "gpu_ms=", "varied=",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}

#[tokio::test]
async fn a_worker_logs_json_lines_with_the_attempts_fields() {
    let (log, attempts, _) = logged_retries("json", "logjson", 2).await;

    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let recorded: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "retake_activities::attempt" && l.get("status").is_some())
        .collect();
    assert_eq!(recorded.len(), attempts, "{log}");
    for l in recorded {
        assert!(
            l["seed"].is_u64() && l["gpu_ms"].is_u64() && l["attempt"].is_u64(),
            "{l}"
        );
        assert!(l["segment"].is_string(), "{l}");
    }
}
