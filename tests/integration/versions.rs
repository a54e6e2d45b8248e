use crate::cli::{retake, stdout};
use crate::harness::{TestApp, dev_server, find_segment, request};
use retake::retries;
use retake_domain::SegmentId;
use retake_domain::contract::Outcome;
use retake_domain::review::Phase;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::process::Command;

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `retake runs versions --json` against the app's queue.
async fn versions(app: &TestApp) -> Value {
    let out = retake(app, &["runs", "versions", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The counts of [`versions`], once they are `want` (visibility is eventually consistent: a run
/// started or closed a moment ago may not be counted yet); else the last answer, to fail on.
async fn counts_once(app: &TestApp, want: &Value) -> Value {
    let pick = |v: &Value| {
        json!({"versions": v["versions"], "unrecorded": v["unrecorded"],
               "unknown": v["unknown"], "open": v["open"]})
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = pick(&versions(app).await);
        if &got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn runs_versions_counts_the_open_runs_of_each_behaviour_version() {
    let app = TestApp::builder().without_worker().spawn().await;
    let first = versions(&app).await;
    assert_eq!(first["current"], "v1");
    assert_eq!(first["replayable"], json!(["v1"]));
    assert_eq!(first["task_queue"], app.task_queue.as_str());
    let want = json!({"versions": {"v1": 0}, "unrecorded": 0, "unknown": [], "open": 0});
    assert_eq!(counts_once(&app, &want).await, want, "nothing open yet");

    // Three retries that escalate and wait for review, so they stay open.
    let review = json!({"enabled": true, "review_window_secs": 3600});
    let fails =
        |a: &[retake_domain::contract::AttemptRecord]| a.len() == 3 && a.iter().all(|x| !x.passed);
    let (a, _) = find_segment(&app.tag, "ver-a", &review, fails);
    let (b, _) = find_segment(&app.tag, "ver-b", &review, fails);
    let (c, _) = find_segment(&app.tag, "ver-c", &review, fails);
    // No worker yet: `a` has recorded no version; `b` was started carrying "v0", as a run of a
    // build this one cannot replay would.
    let handle_a = app.start(request(&a, "p1", Some(review.clone()))).await;
    let input = request(&b, "p1", Some(review.clone())).to_string();
    let out = Command::new(dev_server().temporal())
        .args(["workflow", "start", "--type", "SegmentRetryWorkflow"])
        .args(["--task-queue", &app.task_queue])
        .args(["--workflow-id", &format!("segment-retry-{b}")])
        .args([
            "--input",
            &input,
            "--search-attribute",
            "RetakeBehaviour=\"v0\"",
        ])
        .args(["--address", &app.address])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want =
        json!({"versions": {"v0": 1, "v1": 0}, "unrecorded": 1, "unknown": ["v0"], "open": 2});
    assert_eq!(counts_once(&app, &want).await, want);
    let text = stdout(&retake(&app, &["runs", "versions"]).await);
    assert!(
        text.lines()
            .any(|l| l.contains("v0") && l.contains(" 1") && l.contains("cannot replay")),
        "{text}"
    );

    // A worker takes them: each records the version it runs (`b`'s first task upserts "v1").
    let _worker = app.spawn_worker(20, 0);
    app.start(request(&c, "p1", Some(review))).await;
    for segment in [&a, &b, &c] {
        app.wait_for(segment, "awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
    }
    let want = json!({"versions": {"v1": 3}, "unrecorded": 0, "unknown": [], "open": 3});
    assert_eq!(counts_once(&app, &want).await, want);
    // Only those started before a time: none before 2001, all three before 2999.
    let before = |t: &'static str| {
        let app = &app;
        async move {
            let out = retake(app, &["runs", "versions", "--json", "--started-before", t]).await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["started_before"], t);
            v["versions"]["v1"].clone()
        }
    };
    assert_eq!(before("2001-01-01T00:00:00Z").await, 0);
    assert_eq!(before("2999-01-01T00:00:00Z").await, 3);
    let refused = retake(&app, &["runs", "versions", "--started-before", "yesterday"]).await;
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("RFC 3339"),
        "{}",
        stderr_of(&refused)
    );

    // A closed run is no longer counted.
    retries::decide(
        &app.client,
        &SegmentId::parse(&a).unwrap(),
        json!({"decision": "reject", "by": "ops"}),
    )
    .await
    .unwrap();
    assert_eq!(
        retries::result(&handle_a).await.unwrap().outcome,
        Outcome::Escalated
    );
    let want = json!({"versions": {"v1": 2}, "unrecorded": 0, "unknown": [], "open": 2});
    assert_eq!(counts_once(&app, &want).await, want);
    let text = stdout(&retake(&app, &["runs", "versions"]).await);
    assert!(
        text.lines()
            .any(|l| l.contains("v1") && l.contains(" 2") && l.contains("new runs start with it")),
        "{text}"
    );
    assert!(text.contains("2 open"), "{text}");
}
