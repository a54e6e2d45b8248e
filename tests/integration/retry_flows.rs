use crate::harness::{find_segment, predict, request, spawn_app};
use retake_domain::contract::{AttemptStatus, Outcome};
use retake_domain::seed::attempt_seeds;
use retake_domain::strategy::Strategy;
use serde_json::json;
use temporalio_client::WorkflowFetchHistoryOptions;
use temporalio_protos::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::protos::temporal::api::history::v1::history_event::Attributes;

fn enabled() -> serde_json::Value {
    json!({"enabled": true})
}

#[tokio::test]
async fn a_stochastic_face_melt_is_fixed_on_a_later_attempt() {
    let app = spawn_app().await;
    let (segment, predicted) = find_segment(&app.tag, "fix", &enabled(), |a| {
        a.len() >= 2 && !a[0].passed && a.last().is_some_and(|l| l.passed)
    });

    let result = app.retry(request(&segment, "p1", Some(enabled()))).await;

    assert_eq!(result.outcome, Outcome::Passed);
    let k = predicted.len() as u32;
    assert_eq!(result.selected_attempt, Some(k));
    assert_eq!(
        result.attempts, predicted,
        "attempts differ from the deterministic plan"
    );
    let seeds: Vec<u64> = result.attempts.iter().map(|a| a.seed).collect();
    assert_eq!(seeds, attempt_seeds(&segment, 1234, k, 53));
    for a in &result.attempts[..result.attempts.len() - 1] {
        assert_eq!(a.status, AttemptStatus::Failed);
        assert!(a.failures.contains(&"face_melt".to_owned()));
        assert!(a.scores["face"] < 0.6);
    }
    for a in &result.attempts {
        assert_eq!(a.original_params.0["cfg_scale"], json!(7.5));
        assert_eq!(
            a.params.0["sampler"],
            json!("euler"),
            "other params are kept"
        );
        let cfg = a.params.number("cfg_scale").unwrap();
        assert!((7.0..=8.0).contains(&cfg), "cfg_scale {cfg} outside ±0.5");
        // The media ladder: a plain reseed first, then reseeds with jitter.
        let (strategy, jittered) = if a.attempt == 1 {
            (Strategy::Reseed, 0)
        } else {
            (Strategy::ReseedJitter, 2)
        };
        assert_eq!((a.strategy, a.jitter.len()), (Some(strategy), jittered));
    }
    assert!(
        result
            .report
            .starts_with(&format!("Segment {segment}: failed attempt 1 (face "))
    );
    assert!(result.report.ends_with(&format!(
        "passed attempt {k} (face {:.2})",
        result.attempts[k as usize - 1].scores["face"]
    )));
    assert_eq!(result.gpu_ms_total, 20 * u64::from(k));
}

#[tokio::test]
async fn a_systematic_failure_is_escalated_with_every_attempt_recorded() {
    let app = spawn_app().await;
    let (segment, _) = find_segment(&app.tag, "sys", &enabled(), |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });

    let result = app.retry(request(&segment, "p1", Some(enabled()))).await;

    assert_eq!(result.outcome, Outcome::Escalated);
    assert_eq!(result.selected_attempt, None);
    assert_eq!(result.attempts.len(), 3);
    assert!(
        result.report.ends_with("; escalated for human review"),
        "{}",
        result.report
    );
    assert_eq!(result.report.matches("failed attempt").count(), 3);
    let rows = app.store.attempts(&segment).await.unwrap();
    assert_eq!(rows.len(), 3, "every attempt is attached to the escalation");
    let outcomes = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].outcome, "escalated");
    assert_eq!(outcomes[0].review, "pending");
}

#[tokio::test]
async fn best_of_n_selects_the_best_of_several_passing_attempts() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "selection": "best_of_n", "max_attempts": 4});
    let (segment, predicted) = find_segment(&app.tag, "best", &policy, |a| {
        let passing: Vec<_> = a.iter().filter(|x| x.passed).collect();
        let quality =
            |x: &retake_domain::AttemptRecord| (x.scores["face"] + x.scores["motion"]) / 2.0;
        // At least two passes, and the first pass is clearly not the best one (by the quality
        // best-of-N ranks with: the mean of the thresholded metrics).
        passing.len() >= 2
            && passing[1..]
                .iter()
                .any(|x| quality(x) > quality(passing[0]) + 0.02)
    });

    let result = app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(result.outcome, Outcome::Passed);
    assert_eq!(result.attempts.len(), 4, "best_of_n runs every attempt");
    assert_eq!(result.attempts, predicted);
    let quality = |a: &retake_domain::AttemptRecord| (a.scores["face"] + a.scores["motion"]) / 2.0;
    let best = result
        .attempts
        .iter()
        .filter(|a| a.passed)
        .max_by(|a, b| {
            quality(a)
                .total_cmp(&quality(b))
                .then(b.attempt.cmp(&a.attempt))
        })
        .unwrap();
    assert_eq!(result.selected_attempt, Some(best.attempt));
    let first_pass = result.attempts.iter().find(|a| a.passed).unwrap();
    assert_ne!(result.selected_attempt, Some(first_pass.attempt));
    assert!(
        result
            .report
            .contains(&format!("selected attempt {}", best.attempt))
    );
}

#[tokio::test]
async fn a_failure_kind_not_in_retry_on_is_not_retried() {
    let app = spawn_app().await;
    let segment = format!("{}-motion", app.tag);
    let mut input = request(&segment, "p1", Some(enabled()));
    input["failed_qa"]["failures"] = json!(["motion_score"]);

    let result = app.retry(input).await;

    assert_eq!(result.outcome, Outcome::NotRetried);
    assert!(result.attempts.is_empty());
    assert!(result.reason.contains("motion_score"), "{}", result.reason);
    assert_eq!(
        result.report,
        format!("Segment {segment}: not retried ({})", result.reason)
    );
    assert!(app.store.attempts(&segment).await.unwrap().is_empty());
    assert_eq!(
        app.store.outcomes(&segment).await.unwrap()[0].outcome,
        "not_retried"
    );
    let charged = app
        .store
        .budget("p1")
        .await
        .unwrap()
        .map_or(0, |b| b.spent_ms + b.reserved_ms);
    assert_eq!(
        charged, 0,
        "nothing is reserved for a segment that is not retried"
    );
}

#[tokio::test]
async fn a_scene_type_without_a_stored_policy_is_not_retried_because_retry_is_opt_in() {
    let app = spawn_app().await;
    let segment = format!("{}-optin", app.tag);

    let result = app.retry(request(&segment, "p1", None)).await;

    assert_eq!(result.outcome, Outcome::NotRetried);
    assert!(result.reason.contains("not enabled"), "{}", result.reason);
}

#[tokio::test]
async fn a_stored_scene_type_policy_is_used_and_a_request_override_merges_over_it() {
    let app = spawn_app().await;
    app.store
        .set_policy(
            "dialogue",
            &json!({"enabled": true, "max_attempts": 2, "review_window_secs": 0}),
            "test",
        )
        .await
        .unwrap();
    let stored = json!({"enabled": true, "max_attempts": 2});
    let (segment, _) = find_segment(&app.tag, "stored", &stored, |a| {
        a.len() == 2 && a.iter().all(|x| !x.passed)
    });

    let stored_only = app.retry(request(&segment, "p1", None)).await;
    assert_eq!(
        stored_only.attempts.len(),
        2,
        "the stored max_attempts applies"
    );

    let seg2 = format!("{segment}-b");
    let overridden = app
        .retry(request(&seg2, "p1", Some(json!({"max_attempts": 1}))))
        .await;
    assert_eq!(
        overridden.attempts.len(),
        1,
        "the override wins, enabled comes from the store"
    );
    let _ = predict;
}

/// The events of the retry of `segment` (its latest run).
async fn history(app: &crate::harness::TestApp, segment: &str) -> Vec<HistoryEvent> {
    let handle = retake::retries::handle(
        &app.client,
        &retake_domain::SegmentId::parse(segment).unwrap(),
    );
    handle
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .into_events()
        .await
        .unwrap()
}

/// The names of the activities the server scheduled, in order.
fn scheduled(events: &[HistoryEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => {
                a.activity_type.as_ref().map(|t| t.name.clone())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_attempt_costs_the_server_two_activities_and_at_most_twenty_events() {
    let app = spawn_app().await;
    let one = json!({"enabled": true, "max_attempts": 1});
    let three = json!({"enabled": true, "selection": "best_of_n", "max_attempts": 3});
    let (short, _) = find_segment(&app.tag, "rt1", &one, |a| a.len() == 1);
    let (long, _) = find_segment(&app.tag, "rt3", &three, |a| a.len() == 3);

    let a = app.retry(request(&short, "p1", Some(one))).await;
    let b = app.retry(request(&long, "p1", Some(three))).await;
    assert_eq!((a.attempts.len(), b.attempts.len()), (1, 3));

    let (short, long) = (history(&app, &short).await, history(&app, &long).await);
    // Store steps (settings, budget, records, outcome) run as local activities: only the GPU and
    // QA work goes through the server's task queue.
    assert_eq!(scheduled(&short), ["generate", "score_qa"]);
    assert_eq!(scheduled(&long), ["generate", "score_qa"].repeat(3));
    let per_attempt = (long.len() - short.len()) / 2;
    assert!(
        per_attempt <= 20,
        "each further attempt adds {per_attempt} history events ({} vs {})",
        long.len(),
        short.len()
    );
}
