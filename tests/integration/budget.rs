use crate::harness::{find_segment, request, spawn_app};
use retake_activities::ports::BudgetLedger;
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
