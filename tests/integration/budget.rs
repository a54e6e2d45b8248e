use crate::harness::{TestApp, find_segment, request, spawn_app};
use retake_domain::contract::Outcome;
use serde_json::json;

#[tokio::test]
async fn a_budget_that_runs_out_mid_retry_stops_before_overspending() {
    let app = spawn_app().await;
    let project = format!("{}-proj", app.tag);
    // Each attempt reserves 100 ms and uses 20 ms: attempts 1 and 2 fit in 130 ms, attempt 3
    // (40 spent + 100 reserved) does not.
    app.store.set_limit(&project, Some(130)).await.unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 100});
    let (segment, _) = find_segment(&app.tag, "budget", &policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });

    let result = app.retry(request(&segment, &project, Some(policy))).await;

    assert_eq!(result.outcome, Outcome::BudgetExhausted);
    assert_eq!(result.attempts.len(), 2);
    assert!(
        result
            .report
            .ends_with("; budget exhausted before attempt 3"),
        "{}",
        result.report
    );
    assert!(
        result.reason.contains("refused attempt 3"),
        "{}",
        result.reason
    );
    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(
        b.spent_ms, 40,
        "exactly the GPU time of the two attempts is charged"
    );
    assert_eq!(b.reserved_ms, 0, "no reservation is left behind");
    assert!(b.spent_ms <= 130);
}

#[tokio::test]
async fn concurrent_retries_of_one_project_never_exceed_its_budget() {
    let app = spawn_app().await;
    let project = format!("{}-shared", app.tag);
    app.store.set_limit(&project, Some(300)).await.unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 100});
    let inputs: Vec<_> = (0..6)
        .map(|i| {
            let (segment, _) = find_segment(&app.tag, &format!("conc{i}"), &policy, |a| {
                a.iter().all(|x| !x.passed)
            });
            request(&segment, &project, Some(policy.clone()))
        })
        .collect();

    let results = futures::future::join_all(inputs.into_iter().map(|i| app.retry(i))).await;

    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(b.reserved_ms, 0);
    let total: u64 = results.iter().map(|r| r.gpu_ms_total).sum();
    assert_eq!(
        b.spent_ms, total,
        "the ledger equals the GPU time the results report"
    );
    assert!(
        results
            .iter()
            .any(|r| r.outcome == Outcome::BudgetExhausted),
        "six segments × 3 attempts × 100 ms cannot all fit in 300 ms"
    );
    assert!(b.spent_ms + b.reserved_ms <= 300);
}

#[tokio::test]
async fn a_project_without_a_budget_is_not_limited_but_its_gpu_time_is_tracked() {
    let app = spawn_app().await;
    let project = format!("{}-free", app.tag);
    let policy = json!({"enabled": true});
    let (segment, predicted) = find_segment(&app.tag, "free", &policy, |a| a.len() == 3);

    let result = app.retry(request(&segment, &project, Some(policy))).await;

    assert_eq!(result.attempts.len(), predicted.len());
    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(b.limit_ms, None);
    assert_eq!(b.spent_ms, result.gpu_ms_total);
    assert_eq!(b.reserved_ms, 0);
}

#[tokio::test]
async fn reservations_from_three_worker_processes_never_exceed_the_limit() {
    let app = TestApp::builder().without_worker().spawn().await;
    let _workers: Vec<_> = (0..3).map(|_| app.spawn_worker(500, 0)).collect();
    let project = format!("{}-hammer", app.tag);
    app.store.set_limit(&project, Some(5000)).await.unwrap();
    // Each attempt reserves 1000 ms, so at most five attempts may hold a reservation at once.
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 1000});
    let mut handles = Vec::new();
    for i in 0..12 {
        let (segment, _) = find_segment(&app.tag, &format!("ham{i}"), &policy, |a| !a.is_empty());
        let input = request(&segment, &project, Some(policy.clone()));
        handles.push(app.start(input).await);
    }

    let finished = futures::future::join_all(handles.iter().map(retake::retries::result));
    tokio::pin!(finished);
    let mut peak = 0;
    let results = loop {
        tokio::select! {
            results = &mut finished => break results,
            () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
                let b = app.store.budget(&project).await.unwrap().unwrap();
                assert!(b.reserved_ms + b.spent_ms <= 5000, "over the limit: {b:?}");
                peak = peak.max(b.reserved_ms);
            }
        }
    };

    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(b.reserved_ms, 0);
    let charged: u64 = results.into_iter().map(|r| r.unwrap().gpu_ms_total).sum();
    assert_eq!(b.spent_ms, charged);
    assert!(
        peak >= 2000,
        "the three workers never contended (peak {peak} ms reserved)"
    );
}

/// Most an attempt stopped by the budget may overrun what it could reserve: one simulator step
/// (the backend's stop latency) and scheduling slack.
const STOP_BOUND_MS: u64 = 100 + 100;

#[tokio::test]
async fn attempts_that_outrun_their_estimate_cannot_overspend_the_limit() {
    use retake_domain::contract::BUDGET_EXHAUSTED;
    let app = TestApp::builder().without_worker().spawn().await;
    // Attempts really take 1000 ms of GPU against an estimate of 500: twice as long.
    let _workers: Vec<_> = (0..3).map(|_| app.spawn_worker(1000, 0)).collect();
    let project = format!("{}-outrun", app.tag);
    let limit = 10_000;
    app.store.set_limit(&project, Some(limit)).await.unwrap();
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 500});
    let mut handles = Vec::new();
    for i in 0..30 {
        let segment = format!("{}-outrun-{i}", app.tag);
        handles.push(
            app.start(request(&segment, &project, Some(policy.clone())))
                .await,
        );
    }

    let results: Vec<_> = futures::future::join_all(handles.iter().map(retake::retries::result))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!(b.reserved_ms, 0, "nothing left reserved");
    let charged: u64 = results.iter().map(|r| r.gpu_ms_total).sum();
    assert_eq!(b.spent_ms, charged, "the ledger equals the results");
    let stopped: Vec<_> = results
        .iter()
        .flat_map(|r| &r.attempts)
        .filter(|a| a.error_type.as_deref() == Some(BUDGET_EXHAUSTED))
        .collect();
    assert!(!stopped.is_empty(), "the limit was reached mid-attempt");
    assert!(
        stopped.iter().all(|a| a.gpu_ms > 0 && a.gpu_ms <= 1000),
        "stopped attempts are billed the GPU time they used (all of it when the stop came as \
         the last step ended)"
    );
    let bound = limit + stopped.len() as u64 * STOP_BOUND_MS;
    eprintln!(
        "outrun: spent {} ms of a {limit} ms limit; {} attempts stopped by the budget",
        b.spent_ms,
        stopped.len()
    );
    assert!(
        b.spent_ms <= bound,
        "spent {} ms against a limit of {limit} (+ {} stopped attempts × {STOP_BOUND_MS} ms)",
        b.spent_ms,
        stopped.len()
    );
    for r in results.iter().filter(|r| {
        r.attempts
            .iter()
            .any(|a| a.error_type.as_deref() == Some(BUDGET_EXHAUSTED))
    }) {
        assert_eq!(r.outcome, Outcome::BudgetExhausted, "{}", r.report);
        assert!(
            r.report.contains("budget exhausted during attempt"),
            "{}",
            r.report
        );
    }
}

#[tokio::test]
async fn a_reservation_learns_what_the_scene_types_attempts_really_take() {
    // Attempts take 1000 ms of GPU; the policy estimates 100.
    let app = TestApp::builder()
        .simulator(retake_activities::sim::Simulator::new(1000))
        .spawn()
        .await;
    let scene = format!("learn-{}", app.tag);
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 100, "max_attempts": 1});
    let mut first = request(&format!("{}-learn-1", app.tag), "p1", Some(policy.clone()));
    first["scene_type"] = json!(scene);
    let done = app.retry(first).await;
    assert_eq!(done.attempts[0].gpu_ms, 1000);

    // A project that can pay for the estimate but not for what attempts take.
    let project = format!("{}-learn", app.tag);
    app.store.set_limit(&project, Some(500)).await.unwrap();
    let mut second = request(&format!("{}-learn-2", app.tag), &project, Some(policy));
    second["scene_type"] = json!(scene);
    let result = app.retry(second).await;

    assert_eq!(
        result.outcome,
        Outcome::BudgetExhausted,
        "{}",
        result.report
    );
    assert!(
        result.attempts.is_empty(),
        "refused before generating, not stopped half-way: {}",
        result.report
    );
    assert!(
        result.reason.contains("1000 GPU ms requested"),
        "{}",
        result.reason
    );
    let b = app.store.budget(&project).await.unwrap().unwrap();
    assert_eq!((b.reserved_ms, b.spent_ms), (0, 0));
}
