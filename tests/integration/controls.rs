use crate::harness::{
    StoreLock, TestApp, dev_server, find_segment, predict, predict_retry_with, request, spawn_app,
};
use retake::retries::{self, Creator};
use retake_activities::sim::Simulator;
use retake_domain::SegmentId;
use retake_domain::contract::{AttemptStatus, Outcome};
use retake_domain::review::Phase;
use serde_json::{Value, json};
use tokio::process::Command;

fn seg(s: &str) -> SegmentId {
    SegmentId::parse(s).unwrap()
}

/// Start a retry whose attempts all fail, with a one-hour review window, and wait until it
/// awaits a decision.
async fn in_review(app: &TestApp, name: &str) -> (String, retries::RetryHandle) {
    let segment = failing(app, name, &review_policy());
    let handle = start_in_review(app, &segment).await;
    (segment, handle)
}

/// Every attempt escalates to a one-hour review window.
fn review_policy() -> Value {
    json!({"enabled": true, "review_window_secs": 3600})
}

/// Start the retry of `segment` under [`review_policy`] and wait until it awaits a decision.
async fn start_in_review(app: &TestApp, segment: &str) -> retries::RetryHandle {
    let handle = app
        .start(request(segment, "p1", Some(review_policy())))
        .await;
    app.wait_for(segment, "awaiting review", |s| {
        s.phase == Phase::AwaitingReview
    })
    .await;
    handle
}

/// A segment whose attempts all fail, under `policy`.
fn failing(app: &TestApp, name: &str, policy: &Value) -> String {
    find_segment(&app.tag, name, policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    })
    .0
}

/// Simulated GPU time of an attempt in the abort test: long, so the abort certainly lands while
/// attempt 1 generates.
const SIM_GPU_MS: u64 = 20_000;

#[tokio::test]
async fn aborting_during_generation_cancels_the_attempt_and_bills_what_it_used() {
    let app = TestApp::builder()
        .simulator(Simulator::new(SIM_GPU_MS))
        .spawn()
        .await;
    let project = format!("{}-abort", app.tag);
    app.store
        .set_limit(&project, Some(1_000_000))
        .await
        .unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 30000});
    let segment = format!("{}-abort", app.tag);
    let handle = app.start(request(&segment, &project, Some(policy))).await;
    app.wait_for(&segment, "attempt 1 generating", |s| {
        s.running_attempt == Some(1)
    })
    .await;
    let reserved = app
        .store
        .budget(&project)
        .await
        .unwrap()
        .unwrap()
        .reserved_ms;
    assert_eq!(
        reserved, 30000,
        "attempt 1 holds its reservation while it generates"
    );

    // The plain temporal CLI, with the JSON input documented in the README.
    let out = Command::new(dev_server().temporal())
        .args([
            "workflow",
            "signal",
            "--name",
            "abort",
            "--workflow-id",
            &format!("segment-retry-{segment}"),
        ])
        .args([
            "--input",
            r#"{"reason": "wrong prompt", "by": "mina"}"#,
            "--address",
            &app.address,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.outcome, Outcome::Aborted);
    assert_eq!(
        result.attempts.len(),
        1,
        "no further attempts after an abort"
    );
    assert_eq!(result.attempts[0].status, AttemptStatus::Aborted);
    assert!(
        result.attempts[0].worker.is_some(),
        "an aborted attempt still says where it ran: {:?}",
        result.attempts[0]
    );
    assert_eq!(result.reason, "aborted by mina: wrong prompt");
    assert_eq!(result.decisions.len(), 1);
    assert_eq!(
        (
            result.decisions[0].action.as_str(),
            result.decisions[0].by.as_str()
        ),
        ("abort", "mina")
    );
    let b = app.store.budget(&project).await.unwrap().unwrap();
    let used = result.attempts[0].gpu_ms;
    assert!(
        used > 0 && used < SIM_GPU_MS,
        "the simulator reports the steps it ran before the abort: {used} ms"
    );
    assert_eq!(
        (b.reserved_ms, b.spent_ms),
        (0, used),
        "nothing held; charged exactly the GPU time the aborted attempt used"
    );
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.status, AttemptStatus::Aborted);
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].outcome,
        "aborted"
    );
}

#[tokio::test]
async fn escalating_stops_retrying_and_accepting_an_attempt_in_review_selects_it() {
    let app = TestApp::builder()
        .simulator(Simulator::new(4000))
        .spawn()
        .await;
    let policy = json!({"enabled": true, "review_window_secs": 3600});
    let segment = failing(&app, "esc", &policy);
    let handle = app.start(request(&segment, "p1", Some(policy))).await;
    app.wait_for(&segment, "attempt 1 running", |s| {
        s.running_attempt == Some(1)
    })
    .await;

    let out = Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "escalate",
            &segment,
            "--reason",
            "faces keep melting",
            "--by",
            "mina",
        ])
        .args(["--temporal-address", &app.address])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let review = app
        .wait_for(&segment, "awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
    assert_eq!(
        review.attempts.len(),
        1,
        "the attempt in flight finished; no new one started"
    );
    assert_eq!(review.outcome, Some(Outcome::Escalated));
    assert!(
        review
            .reason
            .starts_with("escalated by mina: faces keep melting"),
        "{}",
        review.reason
    );
    let pending = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(
        (pending[0].outcome.as_str(), pending[0].review.as_str()),
        ("escalated", "pending")
    );

    let answer = retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "accept", "attempt": 1, "by": "jun", "reason": "fine for a cutaway"}),
    )
    .await
    .unwrap();
    assert_eq!(answer["accepted"], "accept");

    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.outcome, Outcome::Passed);
    assert_eq!(result.selected_attempt, Some(1));
    assert_eq!(
        result.reason,
        "attempt 1 accepted by jun in review: fine for a cutaway"
    );
    let actions: Vec<_> = result
        .decisions
        .iter()
        .map(|d| (d.action.as_str(), d.by.as_str()))
        .collect();
    assert_eq!(actions, [("escalate", "mina"), ("accept", "jun")]);
    let stored = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(
        (stored[0].outcome.as_str(), stored[0].review.as_str()),
        ("passed", "accepted")
    );
    assert_eq!(stored[0].decisions.len(), 2);
    let rows = app.store.attempts(&segment).await.unwrap();
    assert!(rows[0].selected);
}

#[tokio::test]
async fn rejecting_in_review_ends_escalated_with_the_review_closed() {
    let app = spawn_app().await;
    let (segment, handle) = in_review(&app, "rej").await;

    retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "reject", "by": "jun"}),
    )
    .await
    .unwrap();

    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.outcome, Outcome::Escalated);
    assert_eq!(result.attempts.len(), 3);
    assert_eq!(result.reason, "rejected by jun in review");
    assert!(
        result
            .report
            .ends_with("; escalated for human review; rejected by jun"),
        "{}",
        result.report
    );
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].review,
        "rejected"
    );
}

#[tokio::test]
async fn retry_with_new_parameters_records_new_attempts_with_those_parameters() {
    let app = spawn_app().await;
    // A segment whose second round fails too, so the run ends with exactly 5 attempts (a pass
    // on attempt 4 would end it with 4).
    let decision = json!({"decision": "retry_with", "params": {"cfg_scale": 9.0},
                          "vary": {"cfg_scale": {"range": 1.5}}, "attempts": 2, "by": "jun"});
    let (segment, predicted) = (0..10_000)
        .find_map(|i| {
            let segment = format!("{}-rw-{i}", app.tag);
            let input = request(&segment, "p1", Some(review_policy()));
            let first = predict(&input);
            if first.len() != 3 || first.iter().any(|a| a.passed) {
                return None;
            }
            let all = predict_retry_with(&input, first, &decision);
            all.iter().all(|a| !a.passed).then_some((segment, all))
        })
        .expect("a segment failing both rounds");
    let handle = start_in_review(&app, &segment).await;

    let out = Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "decide",
            &segment,
            "--retry-with",
            "--param",
            "cfg_scale=9.0",
            "--vary",
            "cfg_scale=1.5",
            "--attempts",
            "2",
            "--by",
            "jun",
        ])
        .args(["--temporal-address", &app.address])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The new round either passes (and finishes) or fails and waits for review again.
    let s = app
        .wait_for(&segment, "the second round done", |s| {
            s.attempts.len() == 5 && matches!(s.phase, Phase::AwaitingReview | Phase::Finished)
        })
        .await;
    if s.phase == Phase::AwaitingReview {
        retries::decide(
            &app.client,
            &seg(&segment),
            json!({"decision": "reject", "by": "jun"}),
        )
        .await
        .unwrap();
    }
    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.attempts.len(), 5);
    let seeds = retake_domain::seed::attempt_seeds(&segment, 1234, 5, 53);
    for a in &result.attempts[3..] {
        assert_eq!(
            a.original_params.0["cfg_scale"],
            json!(9.0),
            "attempt {} starts from the new value",
            a.attempt
        );
        let cfg = a.params.number("cfg_scale").unwrap();
        assert!(
            (7.5..=10.5).contains(&cfg),
            "cfg_scale {cfg} outside the wider ±1.5"
        );
        assert_eq!(a.seed, seeds[a.attempt as usize - 1]);
    }
    for a in &result.attempts[..3] {
        assert_eq!(
            a.original_params.0["cfg_scale"],
            json!(7.5),
            "earlier attempts keep their record"
        );
    }
    assert_eq!(result.attempts, predicted, "both rounds as planned");
    assert_eq!(result.decisions[0].action, "retry_with");
    assert_eq!(app.store.attempts(&segment).await.unwrap().len(), 5);
}

#[tokio::test]
async fn a_review_window_ending_without_a_decision_leaves_the_segment_escalated_and_pending() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "review_window_secs": 1});
    let segment = failing(&app, "expire", &policy);

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(result.outcome, Outcome::Escalated);
    assert!(
        result
            .reason
            .ends_with("(no decision within the 1 s review window)"),
        "{}",
        result.reason
    );
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].review,
        "pending"
    );
}

#[tokio::test]
async fn invalid_decisions_are_rejected_with_a_message_and_change_nothing() {
    let app = spawn_app().await;
    let (segment, handle) = in_review(&app, "invalid").await;

    let no_such = retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "accept", "attempt": 9, "by": "jun"}),
    )
    .await;
    assert!(format!("{:#}", no_such.unwrap_err()).contains("no generated attempt 9"));
    let unknown = retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "maybe", "by": "jun"}),
    )
    .await;
    assert!(
        format!("{:#}", unknown.unwrap_err()).contains("not one of retry_with, accept, reject")
    );
    let cli = Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "decide",
            &segment,
            "--accept",
            "0",
            "--by",
            "jun",
            "--temporal-address",
            &app.address,
        ])
        .output()
        .await
        .unwrap();
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("no generated attempt 0"));

    let still = retries::status(&app.client, &seg(&segment)).await.unwrap();
    assert_eq!(
        still.phase,
        Phase::AwaitingReview,
        "rejected decisions change nothing"
    );
    assert!(still.decisions.is_empty());
    retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "reject", "by": "jun"}),
    )
    .await
    .unwrap();
    assert_eq!(
        retries::result(&handle).await.unwrap().outcome,
        Outcome::Escalated
    );
}

#[tokio::test]
async fn a_decision_for_a_retry_that_is_not_in_review_is_rejected() {
    let app = TestApp::builder()
        .simulator(Simulator::new(5000))
        .spawn()
        .await;
    let policy = json!({"enabled": true});
    let segment = failing(&app, "early", &policy);
    let handle = app.start(request(&segment, "p1", Some(policy))).await;
    app.wait_for(&segment, "attempt 1 running", |s| {
        s.running_attempt == Some(1)
    })
    .await;

    let early = retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "reject", "by": "jun"}),
    )
    .await;

    assert!(format!("{:#}", early.unwrap_err()).contains("is not awaiting review"));
    retries::signal(
        &app.client,
        &seg(&segment),
        Creator::Abort,
        "test over",
        "jun",
    )
    .await
    .unwrap();
    assert_eq!(
        retries::result(&handle).await.unwrap().outcome,
        Outcome::Aborted
    );
}

#[tokio::test]
async fn the_report_query_shows_the_live_attempt_table_mid_run() {
    let app = TestApp::builder()
        .simulator(Simulator::new(800))
        .spawn()
        .await;
    let policy = json!({"enabled": true});
    let segment = failing(&app, "live", &policy);
    let handle = app.start(request(&segment, "p1", Some(policy))).await;

    let s = app
        .wait_for(&segment, "attempt 2 running", |s| {
            s.running_attempt == Some(2)
        })
        .await;

    assert_eq!(s.phase, Phase::Retrying);
    assert_eq!(s.outcome, None);
    assert_eq!(s.attempts.len(), 1);
    assert!(
        s.report
            .starts_with(&format!("Segment {segment}: failed attempt 1 (face ")),
        "{}",
        s.report
    );
    assert!(s.report.ends_with("attempt 2 running"), "{}", s.report);
    let cli = Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "status",
            &segment,
            "--json",
            "--temporal-address",
            &app.address,
        ])
        .output()
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(doc["segment_id"], json!(segment));
    assert!(!doc["attempts"].as_array().unwrap().is_empty());
    let plain = Command::new(dev_server().temporal())
        .args([
            "workflow",
            "query",
            "--name",
            "report",
            "-o",
            "json",
            "--address",
            &app.address,
        ])
        .args(["--workflow-id", &format!("segment-retry-{segment}")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert!(
        text.contains("\"phase\"") && text.contains(&segment),
        "{text}"
    );
    let done = retries::result(&handle).await.unwrap();
    let after = retries::status(&app.client, &seg(&segment)).await.unwrap();
    assert_eq!(after.phase, Phase::Finished);
    assert_eq!(after.report, done.report);
}

#[tokio::test]
async fn a_segment_is_found_by_its_search_attributes() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true});
    let (segment, _) = find_segment(&app.tag, "sa", &policy, |a| {
        a.last().is_some_and(|l| l.passed)
    });
    app.retry(request(&segment, "p1", Some(policy))).await;

    // Visibility is eventually consistent: wait until the list query finds it.
    let query = format!(
        "SegmentId='{segment}' AND RetryOutcome='passed' AND SceneType='dialogue' AND RetakeBehaviour='v1'"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = Command::new(dev_server().temporal())
            .args([
                "workflow",
                "list",
                "--query",
                &query,
                "-o",
                "json",
                "--address",
                &app.address,
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(&format!("segment-retry-{segment}")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not listed by {query}: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_decision_reaches_a_retry_the_worker_evicted_from_its_cache() {
    let app = TestApp::builder().without_worker().spawn().await;
    // One workflow in memory: each parked retry is evicted by the next one's tasks.
    let _worker = app
        .worker_process()
        .sim_gpu_ms(20)
        .env("RETAKE_MAX_CACHED_WORKFLOWS", "1")
        .spawn()
        .unwrap();
    let policy = json!({"enabled": true, "review_window_secs": 3600});
    let mut parked = Vec::new();
    for name in ["evict-a", "evict-b", "evict-c"] {
        let segment = failing(&app, name, &policy);
        let handle = app
            .start(request(&segment, "p1", Some(policy.clone())))
            .await;
        app.wait_for(&segment, "awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
        parked.push((segment, handle));
    }
    let (first, handle) = &parked[0];

    retries::decide(
        &app.client,
        &SegmentId::parse(first).unwrap(),
        json!({"decision": "accept", "attempt": 2, "by": "jun"}),
    )
    .await
    .unwrap();

    let result = retries::result(handle).await.unwrap();
    assert_eq!(result.outcome, Outcome::Passed);
    assert_eq!(result.selected_attempt, Some(2));
}

#[tokio::test]
async fn a_retry_says_finished_only_once_its_outcome_is_in_the_store() {
    let app = spawn_app().await;
    let segment = format!("{}-fin", app.tag);
    // The run's last store write (its outcome) waits for this lock: the retry sits between
    // concluding and being recorded.
    let locker = StoreLock::take(&app).await;
    let handle = app
        .start(request(&segment, "p1", Some(json!({"enabled": false}))))
        .await;
    // The outcome is known (the query says so) while its write waits for the lock.
    let recording = app
        .wait_for(&segment, "concluded", |s| s.outcome.is_some())
        .await;
    assert_ne!(
        recording.phase,
        Phase::Finished,
        "the outcome is not stored yet: {recording:#?}"
    );
    assert_eq!(recording.outcome, Some(Outcome::NotRetried));
    assert!(app.store.outcomes(&segment).await.unwrap().is_empty());
    // The result is final: an abort now changes nothing and is not listed as a decision.
    retries::signal(&app.client, &seg(&segment), Creator::Abort, "late", "jun")
        .await
        .unwrap();
    locker.release().await;

    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.outcome, Outcome::NotRetried);
    assert!(result.decisions.is_empty(), "{:?}", result.decisions);
    let finished = app
        .wait_for(&segment, "finished", |s| s.phase == Phase::Finished)
        .await;
    assert!(finished.decisions.is_empty(), "{:?}", finished.decisions);
    assert_eq!(app.store.outcomes(&segment).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_second_decision_while_the_first_is_recorded_is_refused() {
    let app = spawn_app().await;
    let (segment, handle) = in_review(&app, "twice").await;
    // The run's last store write (its outcome) waits for this lock: the retry sits between
    // concluding and being recorded.
    let locker = StoreLock::take(&app).await;

    retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "reject", "by": "jun"}),
    )
    .await
    .unwrap();
    app.wait_for(&segment, "rejected, being recorded", |s| {
        s.reason == "rejected by jun in review"
    })
    .await;
    let second = retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "accept", "attempt": 1, "by": "mina"}),
    )
    .await;
    locker.release().await;

    let refused = format!("{:#}", second.unwrap_err());
    assert!(refused.contains("review is already closing"), "{refused}");
    let result = retries::result(&handle).await.unwrap();
    assert_eq!(result.reason, "rejected by jun in review");
    assert_eq!(result.decisions.len(), 1, "{:?}", result.decisions);
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].review,
        "rejected"
    );
}

/// Parameters of about 60 KiB (the request may carry 64 KiB): every attempt records them twice
/// (its params and the original ones) and every `retry_with` once more.
fn notes(round: usize) -> String {
    format!("round {round}: ") + &"n".repeat(60 * 1024)
}

#[tokio::test]
async fn retry_with_rounds_stop_being_accepted_before_the_result_outgrows_what_temporal_takes() {
    let app = spawn_app().await;
    // A face that never passes: every round escalates to review again.
    let segment = (0..10_000)
        .map(|i| format!("{}-big-{i}", app.tag))
        .find(|s| Simulator::profile(s).systematic_face)
        .expect("a systematic segment");
    let mut input = request(
        &segment,
        "p1",
        Some(json!({"enabled": true, "review_window_secs": 3600, "max_attempts": 1})),
    );
    input["params"]["notes"] = json!(notes(0));
    let handle = app.start(input).await;
    let in_review = |decisions: usize| {
        move |s: &retake_domain::status::Status| {
            s.phase == Phase::AwaitingReview && s.decisions.len() == decisions
        }
    };
    app.wait_for(&segment, "awaiting review", in_review(0))
        .await;

    // Past 2 MiB the server refuses the result (TMPRL1103); 14 rounds would get there.
    let mut refused = None;
    for round in 1..=14 {
        let decision = json!({"decision": "retry_with", "by": "jun", "attempts": 1,
                              "params": {"notes": notes(round)}});
        match retries::decide(&app.client, &seg(&segment), decision).await {
            Ok(_) => {
                app.wait_for(&segment, "awaiting review again", in_review(round))
                    .await;
            }
            Err(e) => {
                refused = Some((round, format!("{e:#}")));
                break;
            }
        }
    }
    let (round, why) = refused.expect("a retry_with refused before the result passed 2 MiB");
    assert!(round > 2, "refused too early, in round {round}: {why}");
    assert!(
        why.contains("a run may keep (Temporal refuses results over 2 MiB)")
            && why.contains("accept an attempt, reject, or start a new retry"),
        "{why}"
    );

    // The run still takes a decision and ends cleanly.
    retries::decide(
        &app.client,
        &seg(&segment),
        json!({"decision": "reject", "by": "jun"}),
    )
    .await
    .unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), retries::result(&handle))
        .await
        .expect("the run finished")
        .unwrap();
    assert_eq!(result.outcome, Outcome::Escalated);
    let size = serde_json::to_vec(&result).unwrap().len();
    assert!(
        size <= retake_domain::review::RESULT_BUDGET_BYTES,
        "result of {size} bytes"
    );
    use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;
    let failed_tasks = app
        .history(&segment)
        .await
        .into_iter()
        .filter(|e| {
            matches!(
                e.attributes,
                Some(Attributes::WorkflowTaskFailedEventAttributes(_))
            )
        })
        .count();
    assert_eq!(failed_tasks, 0, "no workflow task failed");
}
