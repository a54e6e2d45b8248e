use crate::harness::{TestApp, find_segment, request, spawn_app};
use serde_json::json;

#[tokio::test]
async fn the_records_in_the_store_equal_the_workflow_result() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "selection": "best_of_n"});
    let (segment, _) = find_segment(&app.tag, "rec", &policy, |a| a.iter().any(|x| x.passed));

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    let rows = app.store.attempts(&segment).await.unwrap();
    let recorded: Vec<_> = rows.iter().map(|r| r.record.clone()).collect();
    assert_eq!(recorded, result.attempts);
    let selected: Vec<u32> = rows
        .iter()
        .filter(|r| r.selected)
        .map(|r| r.record.attempt)
        .collect();
    assert_eq!(
        selected,
        result.selected_attempt.into_iter().collect::<Vec<_>>()
    );
    for r in &rows {
        assert_eq!(r.segment_id, segment);
        assert_eq!(r.workflow_id, format!("segment-retry-{segment}"));
        assert!(!r.run_id.is_empty());
    }
    let outcomes = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].report, result.report);
    assert_eq!(outcomes[0].gpu_ms_total, result.gpu_ms_total);
    assert_eq!(outcomes[0].selected_attempt, result.selected_attempt);
}

#[tokio::test]
async fn retrying_a_segment_again_later_adds_a_second_run_without_touching_the_first() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true});
    let (segment, _) = find_segment(&app.tag, "again", &policy, |a| a.len() == 2);

    let first = app
        .retry(request(&segment, "p1", Some(policy.clone())))
        .await;
    let second = app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(
        first.attempts, second.attempts,
        "same input, same deterministic attempts"
    );
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(
        rows.len(),
        4,
        "two runs of two attempts each, no row overwritten"
    );
    assert_ne!(rows[0].run_id, rows[2].run_id);
    assert_eq!(app.store.outcomes(&segment).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_retry_runs_end_to_end_on_the_postgres_store() {
    use crate::harness::fresh_postgres;
    use retake_activities::sim::Simulator;
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = TestApp::builder()
        .simulator(Simulator::new(20))
        .database(db.url.clone())
        .spawn()
        .await;
    let policy = json!({"enabled": true, "est_gpu_ms_per_attempt": 100});
    let (segment, predicted) = find_segment(&app.tag, "pg", &policy, |a| a.len() >= 2);
    app.store
        .set_limit("pg-project", Some(10_000))
        .await
        .unwrap();

    let result = app
        .retry(request(&segment, "pg-project", Some(policy)))
        .await;

    assert_eq!(result.attempts, predicted);
    let rows = app.store.attempts(&segment).await.unwrap();
    let recorded: Vec<_> = rows.iter().map(|r| r.record.clone()).collect();
    assert_eq!(recorded, result.attempts);
    let b = app.store.budget("pg-project").await.unwrap().unwrap();
    assert_eq!((b.reserved_ms, b.spent_ms), (0, result.gpu_ms_total));
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].report,
        result.report
    );
}
