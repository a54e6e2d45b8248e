//! Parallel attempts (`parallelism`): best-of-N at once across worker processes, the first pass
//! cancelling the rest, a budget refusing one of them, an abort with several in flight, and a
//! worker killed under one of them.

use crate::harness::{
    TestApp, find_segment, pending_activities, request, spawn_app, wait_for_activity,
};
use retake::retries;
use retake_domain::SegmentId;
use retake_domain::contract::{AttemptRecord, AttemptStatus, Outcome};
use retake_testkit::WorkerProcess;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

/// `PendingActivityState::Started`.
const STARTED: i32 = 2;

/// One `generate` activity of a run, as its history tells it.
#[derive(Debug)]
struct Generation {
    /// When the worker started it (ms since the epoch), and who.
    started_ms: Vec<i64>,
    identities: Vec<String>,
    /// When it completed, failed or was cancelled.
    ended_ms: Option<i64>,
}

/// The `generate` activities of the segment's run, by scheduled event id.
async fn generations(app: &TestApp, segment: &str) -> BTreeMap<i64, Generation> {
    let mut out = BTreeMap::new();
    for e in app.history(segment).await {
        let at = e
            .event_time
            .as_ref()
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        match e.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(s))
                if s.activity_type
                    .as_ref()
                    .is_some_and(|t| t.name == "generate") =>
            {
                out.insert(
                    e.event_id,
                    Generation {
                        started_ms: vec![],
                        identities: vec![],
                        ended_ms: None,
                    },
                );
            }
            Some(Attributes::ActivityTaskStartedEventAttributes(s)) => {
                if let Some(g) = out.get_mut(&s.scheduled_event_id) {
                    g.started_ms.push(at);
                    g.identities.push(s.identity);
                }
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(c)) => {
                if let Some(g) = out.get_mut(&c.scheduled_event_id) {
                    g.ended_ms = Some(at);
                }
            }
            Some(Attributes::ActivityTaskFailedEventAttributes(f)) => {
                if let Some(g) = out.get_mut(&f.scheduled_event_id) {
                    g.ended_ms = Some(at);
                }
            }
            Some(Attributes::ActivityTaskCanceledEventAttributes(c)) => {
                if let Some(g) = out.get_mut(&c.scheduled_event_id) {
                    g.ended_ms = Some(at);
                }
            }
            _ => {}
        }
    }
    out
}

/// Worker processes acting as one GPU each: one activity at a time, `gpu_ms` per generation.
pub(crate) fn gpu_workers(app: &TestApp, n: usize, gpu_ms: u64) -> Vec<WorkerProcess> {
    (0..n)
        .map(|_| {
            app.worker_process()
                .sim_gpu_ms(gpu_ms)
                .max_concurrent_generations(1)
                .spawn()
                .expect("start a worker process")
        })
        .collect()
}

/// Seed, parameters and scores: what an attempt generated and how it scored, whatever ran it.
fn generated(attempts: &[AttemptRecord]) -> Vec<(u32, u64, Value, Value)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.seed,
                serde_json::to_value(&a.params).unwrap(),
                serde_json::to_value(&a.scores).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn best_of_three_with_parallelism_three_runs_all_three_at_once_on_three_workers() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _workers = gpu_workers(&app, 3, 3000);
    let policy = json!({"enabled": true, "selection": "best_of_n", "parallelism": 3});
    let (segment, serial) = find_segment(&app.tag, "bo3", &policy, |a| {
        a.len() == 3 && a.iter().filter(|x| x.passed).count() >= 1
    });

    let result = app
        .retry(request(&segment, "p1", Some(policy.clone())))
        .await;

    assert_eq!(result.outcome, Outcome::Passed, "{}", result.report);
    assert_eq!(
        generated(&result.attempts),
        generated(&serial),
        "attempt k generates and scores as it would one after another"
    );
    let gens = generations(&app, &segment).await;
    assert_eq!(gens.len(), 3, "{gens:?}");
    let last_start = gens.values().map(|g| g.started_ms[0]).max().unwrap();
    let first_end = gens.values().filter_map(|g| g.ended_ms).min().unwrap();
    assert!(
        last_start < first_end,
        "all three generated at once: the last started at {last_start}, the first ended at \
         {first_end} ({gens:?})"
    );
    let workers: std::collections::BTreeSet<&String> =
        gens.values().map(|g| &g.identities[0]).collect();
    assert_eq!(workers.len(), 3, "one GPU worker each: {gens:?}");
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.record.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn the_first_pass_cancels_the_attempts_still_running_and_bills_the_gpu_they_used() {
    let app = TestApp::builder().without_worker().spawn().await;
    // One fast GPU and two slow ones: whichever attempt lands on the fast one passes first.
    let _fast = gpu_workers(&app, 1, 300);
    let _slow = gpu_workers(&app, 2, 20_000);
    let every = json!({"enabled": true, "selection": "best_of_n"});
    let (segment, _) = find_segment(&app.tag, "race", &every, |a| {
        a.len() == 3 && a.iter().all(|x| x.passed)
    });
    let project = format!("{}-race", app.tag);
    app.store
        .set_limit(&project, Some(10_000_000))
        .await
        .unwrap();
    let policy = json!({"enabled": true, "parallelism": 3, "est_gpu_ms_per_attempt": 30000});

    let result = app.retry(request(&segment, &project, Some(policy))).await;

    assert_eq!(result.outcome, Outcome::Passed, "{}", result.report);
    let winner = result.selected_attempt.expect("a selected attempt");
    assert_eq!(result.attempts.len(), 3, "{}", result.report);
    for a in &result.attempts {
        if a.attempt == winner {
            assert_eq!((a.status, a.gpu_ms), (AttemptStatus::Passed, 300));
            continue;
        }
        assert_eq!(a.status, AttemptStatus::Cancelled, "{a:?}");
        assert_eq!(
            a.error.as_deref(),
            Some(format!("cancelled: attempt {winner} passed first").as_str())
        );
        assert!(
            a.gpu_ms > 0 && a.gpu_ms < 20_000,
            "billed what it used before it stopped, not its estimate: {a:?}"
        );
    }
    assert!(
        result.report.contains("cancelled attempt"),
        "{}",
        result.report
    );
    let budget = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(budget.reserved_ms, 0, "nothing left reserved");
    assert_eq!(
        budget.spent_ms,
        result.attempts.iter().map(|a| a.gpu_ms).sum::<u64>(),
        "every attempt billed what it used, once"
    );
    let rows = app.store.attempts(&segment).await.unwrap();
    let statuses: Vec<&str> = rows.iter().map(|r| r.record.status.as_str()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "cancelled").count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_budget_that_allows_two_of_three_parallel_attempts_records_the_third_as_refused() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _workers = gpu_workers(&app, 3, 500);
    let policy = json!({"enabled": true, "selection": "best_of_n", "parallelism": 3,
        "est_gpu_ms_per_attempt": 1000});
    let (segment, _) = find_segment(&app.tag, "tight", &policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    let project = format!("{}-tight", app.tag);
    app.store.set_limit(&project, Some(2_500)).await.unwrap();

    let result = app.retry(request(&segment, &project, Some(policy))).await;

    assert_eq!(
        result.outcome,
        Outcome::BudgetExhausted,
        "{}",
        result.report
    );
    assert_eq!(result.attempts.len(), 2, "{}", result.report);
    let made: Vec<u32> = result.attempts.iter().map(|a| a.attempt).collect();
    let refused = (1..=3).find(|k| !made.contains(k)).unwrap();
    assert!(
        result
            .reason
            .starts_with(&format!("the project budget refused attempt {refused}: ")),
        "{}",
        result.reason
    );
    assert!(
        result
            .report
            .ends_with(&format!("; budget exhausted before attempt {refused}")),
        "{}",
        result.report
    );
    let budget = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(budget.reserved_ms, 0);
    assert_eq!(budget.spent_ms, 1_000, "two attempts of 500 ms");
    assert!(app.store.stats().await.unwrap().budget_refusals >= 1);
}

#[tokio::test]
async fn an_abort_with_three_attempts_in_flight_leaves_nothing_running_and_nothing_reserved() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _workers = gpu_workers(&app, 3, 30_000);
    let project = format!("{}-abort", app.tag);
    app.store
        .set_limit(&project, Some(10_000_000))
        .await
        .unwrap();
    let segment = format!("{}-abort3", app.tag);
    let policy = json!({"enabled": true, "parallelism": 3, "est_gpu_ms_per_attempt": 60000});
    let handle = app.start(request(&segment, &project, Some(policy))).await;
    app.wait_for(&segment, "three attempts running", |s| {
        s.running_attempts == [1, 2, 3]
    })
    .await;
    for _ in 0..3 {
        wait_for_activity(&app, &segment, "generate", |p| {
            p.state == STARTED && p.heartbeat_details.is_some()
        })
        .await;
    }

    retries::signal(
        &app.client,
        &SegmentId::parse(&segment).unwrap(),
        retries::Creator::Abort,
        "wrong shot",
        "mina",
    )
    .await
    .unwrap();
    let result = retries::result(&handle).await.unwrap();

    assert_eq!(result.outcome, Outcome::Aborted);
    assert_eq!(
        result
            .attempts
            .iter()
            .map(|a| (a.attempt, a.status))
            .collect::<Vec<_>>(),
        [
            (1, AttemptStatus::Aborted),
            (2, AttemptStatus::Aborted),
            (3, AttemptStatus::Aborted)
        ]
    );
    assert!(pending_activities(&app, &segment).await.is_empty());
    let budget = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(budget.reserved_ms, 0, "nothing left reserved");
    assert_eq!(
        budget.spent_ms,
        result.attempts.iter().map(|a| a.gpu_ms).sum::<u64>()
    );
    for g in generations(&app, &segment).await.values() {
        assert!(g.ended_ms.is_some(), "a generation still running: {g:?}");
    }
}

#[tokio::test]
async fn a_worker_killed_under_one_of_three_parallel_attempts_loses_nothing() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut workers = gpu_workers(&app, 3, 3000);
    let policy = json!({"enabled": true, "selection": "best_of_n", "parallelism": 3,
        "est_gpu_ms_per_attempt": 10000});
    let (segment, serial) = find_segment(&app.tag, "kill3", &policy, |a| a.len() == 3);
    let project = format!("{}-kill3", app.tag);
    app.store
        .set_limit(&project, Some(10_000_000))
        .await
        .unwrap();
    let handle = app.start(request(&segment, &project, Some(policy))).await;
    let running = wait_for_activity(&app, &segment, "generate", |p| {
        p.state == STARTED && p.heartbeat_details.is_some()
    })
    .await;
    let victim = workers
        .iter()
        .position(|w| {
            w.pid()
                .is_some_and(|pid| running.last_worker_identity.starts_with(&format!("{pid}@")))
        })
        .expect("the worker running a generation");
    workers[victim].kill().await.unwrap();
    workers.push(gpu_workers(&app, 1, 3000).remove(0));

    let result = retries::result(&handle).await.unwrap();

    assert_eq!(
        generated(&result.attempts),
        generated(&serial),
        "the same attempts as an uninterrupted run"
    );
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.record.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "one row per attempt"
    );
    let budget = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(budget.reserved_ms, 0);
    assert_eq!(budget.spent_ms, 9_000, "each attempt charged once");
}

/// Start `segment`'s retry under `policy`, wait until attempts 1 and 2 both run, then escalate
/// ("faces keep melting", by mina).
async fn escalated_while_two_run(
    app: &TestApp,
    segment: &str,
    policy: Value,
) -> retries::RetryHandle {
    let handle = app.start(request(segment, "p1", Some(policy))).await;
    app.wait_for(segment, "two attempts running", |s| {
        s.running_attempts == [1, 2]
    })
    .await;
    retries::signal(
        &app.client,
        &SegmentId::parse(segment).unwrap(),
        retries::Creator::Escalate,
        "faces keep melting",
        "mina",
    )
    .await
    .unwrap();
    handle
}

#[tokio::test]
async fn escalating_a_parallel_retry_cancels_its_attempts_in_flight() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _workers = gpu_workers(&app, 2, 30_000);
    let segment = format!("{}-esc2", app.tag);
    let policy = json!({"enabled": true, "parallelism": 2, "max_attempts": 4});
    let handle = escalated_while_two_run(&app, &segment, policy).await;
    let result = retries::result(&handle).await.unwrap();

    assert_eq!(result.outcome, Outcome::Escalated, "{}", result.report);
    assert!(
        result.reason.starts_with("escalated by mina"),
        "{}",
        result.reason
    );
    for a in &result.attempts {
        assert_eq!(a.status, AttemptStatus::Cancelled, "{a:?}");
        assert_eq!(a.error.as_deref(), Some("cancelled: escalated by mina"));
    }
    assert_eq!(result.attempts.len(), 2, "no attempt started after it");
}

#[tokio::test]
async fn in_review_a_cancelled_attempt_cannot_be_accepted_nor_the_run_escalated_again() {
    use crate::api::{CREATOR, api_for};
    use retake_domain::review::Phase;
    let app = TestApp::builder()
        .simulator(retake_activities::sim::Simulator::new(30_000))
        .spawn()
        .await;
    let segment = format!("{}-esc-accept", app.tag);
    let policy = json!({"enabled": true, "parallelism": 2, "max_attempts": 4,
                        "review_window_secs": 3600});
    escalated_while_two_run(&app, &segment, policy).await;
    let status = app
        .wait_for(&segment, "awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
    assert!(
        status
            .attempts
            .iter()
            .all(|a| a.status == AttemptStatus::Cancelled && a.output_uri.is_none()),
        "{:#?}",
        status.attempts
    );

    let api = api_for(&app).await;
    // Each refused with its status and the reason, deciding nothing.
    let refused = |path: &'static str, body: serde_json::Value, code, says: &'static str| {
        let (api, segment) = (&api, &segment);
        async move {
            let (got, answer) = api
                .call(
                    reqwest::Method::POST,
                    &format!("/segments/{segment}/retries/{path}"),
                    Some(CREATOR),
                    Some(body),
                )
                .await;
            assert_eq!(got, code, "{answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{answer}");
        }
    };
    use reqwest::StatusCode as S;
    refused(
        "decision",
        json!({"decision": "accept", "attempt": 1, "reason": "looks fine"}),
        S::UNPROCESSABLE_ENTITY,
        "attempt 1 was cancelled and has no output to accept",
    )
    .await;
    // Escalating a run already in review does nothing, and says so instead of 202.
    refused(
        "escalate",
        json!({"reason": "again"}),
        S::CONFLICT,
        "already awaiting review",
    )
    .await;
    // A word where the policy jitters a number is refused before anything is generated.
    refused(
        "decision",
        json!({"decision": "retry_with", "params": {"cfg_scale": "nine"}}),
        S::UNPROCESSABLE_ENTITY,
        r#"params.cfg_scale: must be a number, got "nine""#,
    )
    .await;
    // Still in review: a creator can reject or retry with new settings.
    let status = app
        .wait_for(&segment, "still awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
    assert_eq!(status.selected_attempt, None, "{status:#?}");
}

#[tokio::test]
async fn a_reservation_refused_beside_a_passing_attempt_is_reported_not_lost() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "parallelism": 2, "est_gpu_ms_per_attempt": 5000});
    // Attempts 1 and 2 both pass, so whichever slot the budget grants passes (seeds and scores
    // depend on the attempt number only, so a best-of-two prediction tells).
    let both = json!({"enabled": true, "selection": "best_of_n", "max_attempts": 2});
    let (segment, _) = find_segment(&app.tag, "vanish", &both, |a| {
        a.len() == 2 && a.iter().all(|x| x.passed)
    });
    let project = format!("{}-vanish", app.tag);
    app.store.set_limit(&project, Some(8_000)).await.unwrap();

    let result = app.retry(request(&segment, &project, Some(policy))).await;

    assert_eq!(result.outcome, Outcome::Passed, "{}", result.report);
    assert_eq!(result.attempts.len(), 1, "{}", result.report);
    let made = result.attempts[0].attempt;
    let refused = if made == 1 { 2 } else { 1 };
    assert!(
        result
            .report
            .ends_with(&format!("; the project budget refused attempt {refused}")),
        "{}",
        result.report
    );
    let outcome = &app.store.outcomes(&segment).await.unwrap()[0];
    assert_eq!(
        outcome.report, result.report,
        "the stored report says it too"
    );
}
