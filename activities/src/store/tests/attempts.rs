//! Attempts and outcomes.

use super::*;
use crate::store::sql::storable;
use retake_domain::event::CreatorEvent;

async fn recording_an_attempt_twice_keeps_one_row_with_the_latest_data(db: &TestDb) {
    let store = db.open().await;
    store
        .record_attempt(&record_attempt("r1", record(1, 0.4)))
        .await
        .unwrap();
    let first = store.attempts("5").await.unwrap();
    store
        .record_outcome(&outcome("r1", Outcome::Passed, Some(1), vec![]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut latest = record(1, 0.9);
    latest.output_uri = None;
    latest.error = Some("boom".to_owned());
    store
        .record_attempt(&record_attempt("r1", latest.clone()))
        .await
        .unwrap();
    let rows = store.attempts("5").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record, latest);
    assert_eq!(rows[0].created_at, first[0].created_at);
    assert!(rows[0].updated_at > first[0].updated_at);
    assert!(rows[0].selected, "a re-recorded attempt stays selected");
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM retry_attempts").await,
        1
    );
}

async fn an_attempt_round_trips_with_every_field(db: &TestDb) {
    let store = db.open().await;
    let mut rec = record(2, 0.5);
    rec.seed = (1 << 62) + 7;
    rec.jitter =
        serde_json::from_value(json!([{"param": "cfg", "original": 7.0, "value": 7.5}])).unwrap();
    rec.strategy = Some(retake_domain::strategy::Strategy::PartialRewrite);
    rec.prompt = Some("12화에서 점수가 가장 낮은 항목은 플롯 일관성(58점)입니다.".to_owned());
    rec.revises = Some(1);
    rec.breakdown = serde_json::from_value(json!([
        {"category": "plot_consistency", "score": 0.58, "feedback": "복선이 회수되지 않았습니다"}
    ]))
    .unwrap();
    store
        .record_attempt(&record_attempt("r1", rec.clone()))
        .await
        .unwrap();
    let rows = store.attempts("5").await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.record, rec);
    assert_eq!(
        (
            row.segment_id.as_str(),
            row.project_id.as_str(),
            row.scene_type.as_str()
        ),
        ("5", "p1", "dialogue")
    );
    assert_eq!(
        (row.workflow_id.as_str(), row.run_id.as_str()),
        ("segment-retry-5", "r1")
    );
    assert!(!row.selected);
    assert_eq!(row.created_at.len(), "2025-01-01T00:00:00.000Z".len());
}

async fn out_of_range_numbers_are_invalid_instead_of_panicking(db: &TestDb) {
    let store = db.open().await;
    let mut rec = record(1, 0.5);
    rec.seed = u64::MAX;
    let err = store
        .record_attempt(&record_attempt("r1", rec))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    let err = store
        .reserve(&key("r1", 1), "p1", u64::MAX)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    store
        .record_attempt(&record_attempt("r1", record(1, 0.5)))
        .await
        .unwrap();
    store.execute("UPDATE retry_attempts SET seed = -1").await;
    let err = store.attempts("5").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    store
        .execute("UPDATE retry_attempts SET seed = 1, params = 'not json'")
        .await;
    let err = store.attempts("5").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

async fn recording_an_outcome_marks_exactly_the_selected_attempt(db: &TestDb) {
    let store = db.open().await;
    let attempts = vec![record(1, 0.4), record(2, 0.85), record(3, 0.9)];
    for rec in &attempts {
        store
            .record_attempt(&record_attempt("r1", rec.clone()))
            .await
            .unwrap();
    }
    store
        .record_outcome(&outcome("r1", Outcome::Passed, Some(3), attempts.clone()))
        .await
        .unwrap();
    // A corrected outcome moves the mark.
    store
        .record_outcome(&outcome("r1", Outcome::Passed, Some(2), attempts))
        .await
        .unwrap();
    let selected: Vec<_> = store
        .attempts("5")
        .await
        .unwrap()
        .iter()
        .map(|a| (a.record.attempt, a.selected))
        .collect();
    assert_eq!(selected, vec![(1, false), (2, true), (3, false)]);
    let outcomes = store.outcomes("5").await.unwrap();
    assert_eq!(outcomes.len(), 1);
    let o = &outcomes[0];
    assert_eq!(
        (o.outcome.as_str(), o.review.as_str(), o.selected_attempt),
        ("passed", "none", Some(2))
    );
    assert_eq!((o.gpu_ms_total, o.reason.as_str()), (600, "because"));
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM retry_attempts").await,
        3
    );
}

async fn an_escalated_outcome_awaits_review_and_selects_nothing(db: &TestDb) {
    let store = db.open().await;
    let attempts = vec![record(1, 0.4), record(2, 0.5)];
    for rec in &attempts {
        store
            .record_attempt(&record_attempt("r1", rec.clone()))
            .await
            .unwrap();
    }
    store
        .record_outcome(&outcome("r1", Outcome::Escalated, None, attempts))
        .await
        .unwrap();
    assert!(
        store
            .attempts("5")
            .await
            .unwrap()
            .iter()
            .all(|a| !a.selected)
    );
    let outcomes = store.outcomes("5").await.unwrap();
    assert_eq!(
        (outcomes[0].outcome.as_str(), outcomes[0].review.as_str()),
        ("escalated", "pending")
    );
    store
        .record_outcome(&outcome("r2", Outcome::BudgetExhausted, None, vec![]))
        .await
        .unwrap();
    let outcomes = store.outcomes("5").await.unwrap();
    let runs: Vec<_> = outcomes
        .iter()
        .map(|o| (o.run_id.as_str(), o.outcome.as_str(), o.review.as_str()))
        .collect();
    assert_eq!(
        runs,
        vec![
            ("r1", "escalated", "pending"),
            ("r2", "budget_exhausted", "none")
        ]
    );
}

async fn recording_an_outcome_fills_in_attempts_whose_record_was_lost(db: &TestDb) {
    let store = db.open().await;
    let recorded = record(1, 0.4);
    store
        .record_attempt(&record_attempt("r1", recorded.clone()))
        .await
        .unwrap();
    let attempts = vec![recorded, record(2, 0.6), record(3, 0.95)];
    store
        .record_outcome(&outcome("r1", Outcome::Passed, Some(3), attempts.clone()))
        .await
        .unwrap();
    let rows = store.attempts("5").await.unwrap();
    let stored: Vec<_> = rows.iter().map(|a| a.record.clone()).collect();
    assert_eq!(stored, attempts);
    let selected: Vec<_> = rows.iter().map(|a| a.selected).collect();
    assert_eq!(selected, vec![false, false, true]);
    assert!(
        rows.iter()
            .all(|a| a.segment_id == "5" && a.project_id == "p1" && a.run_id == "r1")
    );
}

async fn attempts_come_oldest_run_first_then_by_attempt_number(db: &TestDb) {
    let store = db.open().await;
    // Run "b" starts first; attempts are recorded out of order.
    for (run, attempt) in [("b", 2), ("b", 1), ("a", 1), ("b", 3), ("a", 2)] {
        store
            .record_attempt(&record_attempt(run, record(attempt, 0.5)))
            .await
            .unwrap();
    }
    let order: Vec<_> = store
        .attempts("5")
        .await
        .unwrap()
        .iter()
        .map(|a| (a.run_id.clone(), a.record.attempt))
        .collect();
    let expected: Vec<_> = [("b", 1), ("b", 2), ("b", 3), ("a", 1), ("a", 2)]
        .iter()
        .map(|(r, a)| (r.to_string(), *a))
        .collect();
    assert_eq!(order, expected);
    assert!(store.attempts("6").await.unwrap().is_empty());
}

/// Text from outside (a backend's error message, an output URI, an abort reason) may hold NUL
/// bytes, which Postgres refuses in `TEXT` (`invalid byte sequence for encoding "UTF8": 0x00`):
/// the attempt and the outcome would be lost although GPU time was spent. Both backends store
/// every NUL of a text column as the visible escape `\0`; JSON columns keep it as written
/// (`\u0000` in the JSON text), so params and decisions read back exactly.
async fn text_with_nul_bytes_is_recorded_with_them_escaped_and_json_exactly(db: &TestDb) {
    let store = db.open().await;
    let nul = |s: &str| s.replace('~', "\\0");
    let mut recorded = record(1, 0.4);
    recorded.params = params(json!({"seed": 1001, "prompt": "a\u{0}b"}));
    recorded.output_uri = Some("s3://out/1\u{0}.mp4".to_owned());
    recorded.error = Some("CUDA error\u{0}\u{0}: device lost".to_owned());
    recorded.error_type = Some("Backend\u{0}".to_owned());
    recorded.note = Some("\u{0}note".to_owned());
    recorded.prompt = Some("prompt\u{0}".to_owned());
    recorded.worker = Some("gpu\u{0}0".to_owned());
    let mut lost = record(2, 0.9);
    lost.error = Some("lost\u{0}".to_owned());
    store
        .record_attempt(&record_attempt("r1", recorded.clone()))
        .await
        .unwrap();
    let mut out = outcome(
        "r1",
        Outcome::Aborted,
        None,
        vec![recorded.clone(), lost.clone()],
    );
    out.result.reason = "aborted by api:creator: stop\u{0}".to_owned();
    out.result.report = "Segment 5\u{0}".to_owned();
    out.result.decisions = vec![CreatorEvent {
        action: "abort".to_owned(),
        by: "api:creator".to_owned(),
        reason: "stop\u{0}".to_owned(),
        detail: json!({"params": {"prompt": "x\u{0}y"}}),
    }];
    store.record_outcome(&out).await.unwrap();

    let mut expected = recorded;
    expected.output_uri = Some(nul("s3://out/1~.mp4"));
    expected.error = Some(nul("CUDA error~~: device lost"));
    expected.error_type = Some(nul("Backend~"));
    expected.note = Some(nul("~note"));
    expected.prompt = Some(nul("prompt~"));
    expected.worker = Some(nul("gpu~0"));
    let mut expected_lost = lost;
    expected_lost.error = Some(nul("lost~"));
    let rows: Vec<AttemptRecord> = store
        .attempts("5")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.record)
        .collect();
    assert_eq!(rows, [expected, expected_lost]);
    let outcomes = store.outcomes("5").await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].reason, nul("aborted by api:creator: stop~"));
    assert_eq!(outcomes[0].report, nul("Segment 5~"));
    assert_eq!(outcomes[0].decisions, out.result.decisions);
}

/// Every string over a few telling characters, up to five long: the escape removes each NUL,
/// leaves text without one as it is, and keeps everything else in order.
#[test]
fn storable_text_has_no_nul_and_keeps_everything_else_in_order() {
    let alphabet = ['a', '\0', '\\', '0', 'é'];
    let mut texts = vec![String::new()];
    for _ in 0..5 {
        let longer: Vec<String> = texts
            .iter()
            .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
            .collect();
        texts.extend(longer);
    }
    texts.sort();
    texts.dedup();
    for text in texts {
        let stored = storable(text.clone());
        assert!(!stored.contains('\0'), "{text:?} -> {stored:?}");
        if !text.contains('\0') {
            assert_eq!(stored, text);
        }
        let nuls = text.matches('\0').count();
        assert_eq!(
            stored.matches("\\0").count(),
            text.matches("\\0").count() + nuls,
            "{text:?} -> {stored:?}"
        );
        assert_eq!(stored.chars().count(), text.chars().count() + nuls);
        assert_eq!(
            stored.replace("\\0", "\0"),
            text.replace("\\0", "\0"),
            "only NULs changed: {text:?} -> {stored:?}"
        );
    }
}

store_tests! {
    #[tokio::test] recording_an_attempt_twice_keeps_one_row_with_the_latest_data,
    #[tokio::test] an_attempt_round_trips_with_every_field,
    #[tokio::test] out_of_range_numbers_are_invalid_instead_of_panicking,
    #[tokio::test] recording_an_outcome_marks_exactly_the_selected_attempt,
    #[tokio::test] an_escalated_outcome_awaits_review_and_selects_nothing,
    #[tokio::test] recording_an_outcome_fills_in_attempts_whose_record_was_lost,
    #[tokio::test] attempts_come_oldest_run_first_then_by_attempt_number,
    #[tokio::test] text_with_nul_bytes_is_recorded_with_them_escaped_and_json_exactly,
}
