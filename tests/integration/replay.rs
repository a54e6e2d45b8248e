//! The determinism guard: histories of representative runs, recorded from the real workflow, must
//! replay against the current code. `tests/histories/v1-*.json` is the v1 baseline, one file per
//! branch of the workflow's one path ([`V1_HISTORIES`]). After v1 a behaviour change goes behind
//! `ctx.patched(..)` and these files stay, replaying the old path; the new path's histories are
//! recorded beside them under the new version's prefix (docs/versioning.md). Record with
//! `cargo test -p retake --test integration -- --ignored record_representative_histories`; the
//! recorder writes only files named after the current version (`retake_workflows::BEHAVIOUR`),
//! so an earlier version's files are never overwritten.

use crate::harness::{TestApp, find_segment, request, spawn_app};
use retake::retries;
use retake_activities::RetryActivities;
use retake_activities::io::LoadPolicy;
use retake_activities::sim::Simulator;
use retake_domain::SegmentId;
use retake_domain::contract::Outcome;
use retake_domain::review::Phase;
use retake_workflows::SegmentRetryWorkflow;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use temporalio_client::{WorkflowFetchHistoryOptions, WorkflowHistory};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};
use temporalio_sdk::{ActivityOptions, WorkflowContext, WorkflowResult};

/// The v1 baseline, one history per branch: one slot (`parallelism` 1) passing, escalating and
/// refused by the budget; three slots (best of three, a first pass cancelling the others, one
/// reservation refused of three); a re-run on another worker after an infrastructure failure,
/// `placement: any` recording it, `same_worker`; each review decision (accept, reject,
/// `retry_with` and its second round) and a window expiring; aborts during the first and the
/// last attempt and with three in flight; an escalation cancelling two in flight; the budget
/// stopping a generation; adaptive rungs cold and with evidence; the text ladder ending in user
/// intervention; a store outage retried on a timer.
const V1_HISTORIES: [&str; 22] = [
    "v1-aborted.json",
    "v1-aborted_last.json",
    "v1-aborted_three.json",
    "v1-adaptive.json",
    "v1-adaptive_cold.json",
    "v1-best_of_three.json",
    "v1-budget_exhausted.json",
    "v1-budget_stopped.json",
    "v1-chapter_user_intervention.json",
    "v1-escalated.json",
    "v1-escalated_cancels.json",
    "v1-first_pass_cancels.json",
    "v1-infrastructure_any.json",
    "v1-passed.json",
    "v1-refused_one.json",
    "v1-rerun_elsewhere.json",
    "v1-review_accepted.json",
    "v1-review_expired.json",
    "v1-review_rejected.json",
    "v1-review_retry_with.json",
    "v1-same_worker.json",
    "v1-store_outage.json",
];

fn histories_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/histories")
}

fn stored_histories() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(histories_dir())
        .expect("tests/histories")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_stored_history_replays_against_the_current_workflow() {
    let histories = stored_histories();
    let names: Vec<&str> = histories.iter().map(|(n, _)| n.as_str()).collect();
    // Exactly the baseline: a history missing is a branch no longer guarded, one more is a file
    // nobody listed (a later version's histories are added to the list with their patch).
    assert_eq!(
        names, V1_HISTORIES,
        "tests/histories must hold exactly the v1 baseline"
    );
    let replayer = WorkflowReplayer::new(
        WorkflowReplayerOptions::new()
            .register_workflow::<SegmentRetryWorkflow>()
            .unwrap()
            .build(),
    )
    .unwrap();
    // Every history is tried, so a change shows each branch it breaks.
    let mut broken = Vec::new();
    for (name, bytes) in histories {
        let history = WorkflowHistory::from_json(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Err(e) = replayer.replay_workflow(history).await {
            broken.push(format!("{name} no longer replays: {e}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A deliberately changed workflow: it loads its settings as an ordinary activity instead of a
/// local one, and then stops. Registered under the real workflow's name, it must be caught by
/// replay.
#[workflow]
#[derive(Default)]
pub struct ChangedRetryWorkflow;

#[workflow_methods]
impl ChangedRetryWorkflow {
    #[run(name = "SegmentRetryWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, _input: Value) -> WorkflowResult<Value> {
        ctx.execute_activity(
            RetryActivities::load_settings,
            LoadPolicy {
                scene_type: "changed".parse().unwrap(),
            },
            ActivityOptions::with_start_to_close_timeout(Duration::from_secs(5)).build(),
        )
        .await?;
        Ok(Value::Null)
    }
}

#[tokio::test]
async fn a_changed_workflow_is_detected_as_nondeterministic() {
    let bytes = std::fs::read(histories_dir().join("v1-passed.json")).expect("v1-passed.json");
    let replayer = WorkflowReplayer::new(
        WorkflowReplayerOptions::new()
            .register_workflow::<ChangedRetryWorkflow>()
            .unwrap()
            .build(),
    )
    .unwrap();

    let err = replayer
        .replay_workflow(WorkflowHistory::from_json(&bytes).unwrap())
        .await
        .expect_err("the changed workflow must not replay the recorded history");

    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("nondetermin"), "{msg}");
}

/// A retry of a segment whose three attempts all fail, started and waiting for review.
async fn awaiting_review(
    app: &TestApp,
    name: &str,
    review: &Value,
) -> (String, retries::RetryHandle) {
    let (seg, _) = find_segment(&app.tag, name, review, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    let h = app.start(request(&seg, "p1", Some(review.clone()))).await;
    app.wait_for(&seg, "awaiting review", |s| {
        s.phase == Phase::AwaitingReview
    })
    .await;
    (seg, h)
}

async fn save(app: &crate::harness::TestApp, segment: &str, file: &str) {
    let handle = retries::handle(&app.client, &SegmentId::parse(segment).unwrap());
    let json = handle
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .to_json()
        .await
        .unwrap();
    let name = format!("{}-{file}", retake_workflows::BEHAVIOUR);
    std::fs::write(histories_dir().join(name), json).unwrap();
}

#[tokio::test]
#[ignore = "regenerates tests/histories: run only when the workflow changed on purpose"]
async fn record_representative_histories() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true});

    // Adaptive rungs: a cold start, then one choosing from the evidence the runs before left.
    let cold = json!({"enabled": true, "ladder": ["adaptive"]});
    let seg = format!("{}-adaptive-cold", app.tag);
    app.retry(request(&seg, "p1", Some(cold))).await;
    save(&app, &seg, "adaptive_cold.json").await;
    let eager = json!({"enabled": true, "ladder": ["reseed", "adaptive"],
        "adaptive": {"min_evidence": 1}});
    // Attempt 1 (a plain reseed on both ladders) fails, so attempt 2 is adaptive.
    // (with a second attempt: a first one failing on a kind not retried stops there)
    let (seg, _) = find_segment(&app.tag, "adaptive", &policy, |a| {
        a.len() >= 2 && !a[0].passed
    });
    let result = app.retry(request(&seg, "p1", Some(eager))).await;
    assert!(
        result.attempts.iter().any(|a| a
            .variation
            .as_ref()
            .is_some_and(|v| v.chosen_by == retake_domain::adapt::ChosenBy::Adaptive)),
        "{}",
        result.report
    );
    save(&app, &seg, "adaptive.json").await;

    let (seg, _) = find_segment(&app.tag, "passed", &policy, |a| a.len() == 2 && a[1].passed);
    assert_eq!(
        app.retry(request(&seg, "p1", Some(policy.clone())))
            .await
            .outcome,
        Outcome::Passed
    );
    save(&app, &seg, "passed.json").await;

    let (seg, _) = find_segment(&app.tag, "esc", &policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    assert_eq!(
        app.retry(request(&seg, "p1", Some(policy.clone())))
            .await
            .outcome,
        Outcome::Escalated
    );
    save(&app, &seg, "escalated.json").await;

    let project = format!("{}-tight", app.tag);
    app.store.set_limit(&project, Some(130)).await.unwrap();
    let tight = json!({"enabled": true, "est_gpu_ms_per_attempt": 100});
    let (seg, _) = find_segment(&app.tag, "budget", &tight, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    assert_eq!(
        app.retry(request(&seg, &project, Some(tight)))
            .await
            .outcome,
        Outcome::BudgetExhausted
    );
    save(&app, &seg, "budget_exhausted.json").await;

    let review = json!({"enabled": true, "review_window_secs": 3600});
    let (seg, h) = awaiting_review(&app, "review", &review).await;
    retries::decide(
        &app.client,
        &SegmentId::parse(&seg).unwrap(),
        json!({"decision": "accept", "attempt": 2, "by": "jun"}),
    )
    .await
    .unwrap();
    assert_eq!(retries::result(&h).await.unwrap().outcome, Outcome::Passed);
    save(&app, &seg, "review_accepted.json").await;

    let (seg, h) = awaiting_review(&app, "reject", &review).await;
    retries::decide(
        &app.client,
        &SegmentId::parse(&seg).unwrap(),
        json!({"decision": "reject", "by": "jun", "reason": "wrong take"}),
    )
    .await
    .unwrap();
    assert_eq!(
        retries::result(&h).await.unwrap().outcome,
        Outcome::Escalated
    );
    save(&app, &seg, "review_rejected.json").await;

    // `retry_with` starts a second round (two more attempts); it passes and finishes, or fails
    // and waits for review again, where it is rejected.
    let (seg, h) = awaiting_review(&app, "again", &review).await;
    let id = SegmentId::parse(&seg).unwrap();
    retries::decide(
        &app.client,
        &id,
        json!({"decision": "retry_with", "params": {"cfg_scale": 9.0}, "attempts": 2, "by": "jun"}),
    )
    .await
    .unwrap();
    let s = app
        .wait_for(&seg, "the second round done", |s| {
            s.attempts.len() > 3 && matches!(s.phase, Phase::AwaitingReview | Phase::Finished)
        })
        .await;
    if s.phase == Phase::AwaitingReview {
        retries::decide(&app.client, &id, json!({"decision": "reject", "by": "jun"}))
            .await
            .unwrap();
    }
    let result = retries::result(&h).await.unwrap();
    assert!(result.attempts.len() > 3, "{}", result.report);
    assert_eq!(result.decisions[0].action, "retry_with");
    save(&app, &seg, "review_retry_with.json").await;

    // A review window that ends without a decision: escalated, the review still pending.
    let short = json!({"enabled": true, "review_window_secs": 1});
    let (seg, _) = find_segment(&app.tag, "expired", &short, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    let result = app.retry(request(&seg, "p1", Some(short))).await;
    assert_eq!(result.outcome, Outcome::Escalated, "{}", result.report);
    save(&app, &seg, "review_expired.json").await;

    let slow = TestApp::builder()
        .simulator(Simulator::new(20_000))
        .spawn()
        .await;
    let seg = format!("{}-aborted", slow.tag);
    let h = slow.start(request(&seg, "p1", Some(policy))).await;
    let aborted = slow.abort_first_attempt(&seg, &h).await;
    assert_eq!(aborted.outcome, Outcome::Aborted);
    save(&slow, &seg, "aborted.json").await;

    // Aborted during its last attempt, with a review window: aborted, no review.
    let seg = format!("{}-aborted-last", slow.tag);
    let last = json!({"enabled": true, "max_attempts": 1, "review_window_secs": 3600});
    let h = slow.start(request(&seg, "p1", Some(last))).await;
    let aborted = slow.abort_first_attempt(&seg, &h).await;
    assert_eq!(aborted.outcome, Outcome::Aborted);
    save(&slow, &seg, "aborted_last.json").await;

    // An attempt that outruns its estimate and is stopped by the budget mid-generation.
    let outrun = TestApp::builder()
        .simulator(Simulator::new(2_000))
        .spawn()
        .await;
    let project = format!("{}-outrun", outrun.tag);
    outrun.store.set_limit(&project, Some(500)).await.unwrap();
    let seg = format!("{}-stopped", outrun.tag);
    let est = json!({"enabled": true, "est_gpu_ms_per_attempt": 300});
    let result = outrun.retry(request(&seg, &project, Some(est))).await;
    assert_eq!(
        result.outcome,
        Outcome::BudgetExhausted,
        "{}",
        result.report
    );
    save(&outrun, &seg, "budget_stopped.json").await;

    // The store refuses (SQLite locked by another connection) while a run records its outcome:
    // the local store step fails, backs off on a timer and succeeds once the lock is gone.
    let seg = format!("{}-outage", app.tag);
    let locker = crate::harness::StoreLock::take(&app).await;
    let h = app
        .start(request(&seg, "p1", Some(json!({"enabled": false}))))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while crate::outage::store_failure_in_history(&app, &seg)
        .await
        .is_none()
    {
        assert!(tokio::time::Instant::now() < deadline, "no store failure");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    locker.release().await;
    assert_eq!(
        retries::result(&h).await.unwrap().outcome,
        Outcome::NotRetried
    );
    save(&app, &seg, "store_outage.json").await;

    record_parallel_histories().await;
    record_placement_histories().await;

    let (result, chapter) = crate::ladder::chapter_to_user_intervention().await;
    assert_eq!(result.outcome, Outcome::Escalated);
    save(
        &chapter,
        result.segment_id.as_str(),
        "chapter_user_intervention.json",
    )
    .await;
}

/// Runs with attempts in parallel, on worker processes acting as one GPU each.
async fn record_parallel_histories() {
    use crate::parallel::gpu_workers;
    let app = TestApp::builder().without_worker().spawn().await;

    let _three = gpu_workers(&app, 3, 500);
    let best = json!({"enabled": true, "selection": "best_of_n", "parallelism": 3});
    let (seg, _) = find_segment(&app.tag, "bo3", &best, |a| a.len() == 3);
    app.retry(request(&seg, "p1", Some(best.clone()))).await;
    save(&app, &seg, "best_of_three.json").await;

    let project = format!("{}-tight", app.tag);
    app.store.set_limit(&project, Some(2_500)).await.unwrap();
    let tight = json!({"enabled": true, "selection": "best_of_n", "parallelism": 3,
        "est_gpu_ms_per_attempt": 1000});
    let (seg, _) = find_segment(&app.tag, "refused", &tight, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    let result = app.retry(request(&seg, &project, Some(tight))).await;
    assert_eq!(
        result.outcome,
        Outcome::BudgetExhausted,
        "{}",
        result.report
    );
    save(&app, &seg, "refused_one.json").await;
    drop(_three);

    let race = TestApp::builder().without_worker().spawn().await;
    let _fast = gpu_workers(&race, 1, 300);
    let _slow = gpu_workers(&race, 2, 20_000);
    let (seg, _) = find_segment(&race.tag, "race", &best, |a| a.iter().all(|x| x.passed));
    let first = json!({"enabled": true, "parallelism": 3});
    let result = race.retry(request(&seg, "p1", Some(first.clone()))).await;
    assert!(
        result.report.contains("cancelled attempt"),
        "{}",
        result.report
    );
    save(&race, &seg, "first_pass_cancels.json").await;

    drop((_fast, _slow));

    let slow = TestApp::builder().without_worker().spawn().await;
    let _slow = gpu_workers(&slow, 3, 20_000);
    let seg = format!("{}-abort3", slow.tag);
    let h = slow.start(request(&seg, "p1", Some(first))).await;
    slow.wait_for(&seg, "three running", |s| s.running_attempts.len() == 3)
        .await;
    let id = SegmentId::parse(&seg).unwrap();
    retries::signal(
        &slow.client,
        &id,
        retries::Creator::Abort,
        "wrong shot",
        "mina",
    )
    .await
    .unwrap();
    assert_eq!(retries::result(&h).await.unwrap().outcome, Outcome::Aborted);
    save(&slow, &seg, "aborted_three.json").await;

    let seg = format!("{}-esc2", slow.tag);
    let two = json!({"enabled": true, "parallelism": 2, "max_attempts": 4});
    let h = slow.start(request(&seg, "p1", Some(two))).await;
    slow.wait_for(&seg, "two running", |s| s.running_attempts.len() == 2)
        .await;
    let id = SegmentId::parse(&seg).unwrap();
    retries::signal(&slow.client, &id, retries::Creator::Escalate, "no", "mina")
        .await
        .unwrap();
    assert_eq!(
        retries::result(&h).await.unwrap().outcome,
        Outcome::Escalated
    );
    save(&slow, &seg, "escalated_cancels.json").await;
}

/// Runs placing generations: a re-run away from a broken GPU, `any` recording the failure, and
/// `same_worker`.
async fn record_placement_histories() {
    use crate::placement::{gpu, registered};
    let app = TestApp::builder().without_worker().spawn().await;
    let broken = gpu(&app, "gpu-broken", 600, true);
    let healthy = gpu(&app, "gpu-ok", 1500, false);
    registered(&app, &["gpu-broken", "gpu-ok"]).await;
    let one = json!({"enabled": true, "max_attempts": 1});
    let mut rerun = None;
    for i in 0..6 {
        let seg = format!("{}-rerun-{i}", app.tag);
        let result = app.retry(request(&seg, "p1", Some(one.clone()))).await;
        if result.attempts[0].note.is_some() {
            rerun = Some(seg);
            break;
        }
    }
    let seg = rerun.expect("the broken GPU took a generation");
    save(&app, &seg, "rerun_elsewhere.json").await;
    drop(healthy);

    let seg = format!("{}-any", app.tag);
    let any = json!({"enabled": true, "max_attempts": 2, "placement": "any"});
    let result = app.retry(request(&seg, "p1", Some(any))).await;
    assert_eq!(result.outcome, Outcome::Escalated, "{}", result.report);
    save(&app, &seg, "infrastructure_any.json").await;
    drop(broken);

    let warm = TestApp::builder().without_worker().spawn().await;
    let _a = gpu(&warm, "gpu-a", 300, false);
    let _b = gpu(&warm, "gpu-b", 300, false);
    registered(&warm, &["gpu-a", "gpu-b"]).await;
    let same = json!({"enabled": true, "selection": "best_of_n", "placement": "same_worker"});
    let (seg, _) = find_segment(&warm.tag, "warm", &same, |a| a.len() == 3);
    warm.retry(request(&seg, "p1", Some(same))).await;
    save(&warm, &seg, "same_worker.json").await;
}
