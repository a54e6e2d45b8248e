use crate::cli::{retake, stdout};
use crate::harness::{TestApp, request, spawn_app};
use retake::retries;
use retake_activities::io::{AttemptKey, RecordAttempt};
use retake_domain::SegmentId;
use retake_domain::adapt::{self, ChosenBy, Evidence, EvidenceQuery, Variation};
use retake_domain::contract::{AttemptRecord, AttemptStatus, Params};
use retake_domain::{RetryPolicy, RetryRequest};
use serde_json::{Value, json};
use temporalio_client::WorkflowFetchHistoryOptions;

/// Earlier attempts of scene type `dialogue` on face melts: lowering CFG fixed `cfg_down` of
/// `n`, every other arm fixed 1 of `n`.
async fn record_evidence(app: &TestApp, n: u32, cfg_down: u32) {
    let arms = [
        "cfg_scale+",
        "cfg_scale-",
        "denoise_strength+",
        "denoise_strength-",
        "reseed",
    ];
    for arm in arms {
        let fixed = if arm == "cfg_scale-" { cfg_down } else { 1 };
        for i in 0..n {
            let passed = i < fixed;
            let params = Params::parse(&json!({"seed": i})).unwrap();
            let record = AttemptRecord {
                attempt: 1,
                seed: u64::from(i),
                params: params.clone(),
                original_params: params,
                jitter: vec![],
                scores: [("face".to_owned(), if passed { 0.8 } else { 0.3 })].into(),
                passed,
                failures: if passed {
                    vec![]
                } else {
                    vec!["face_melt".into()]
                },
                gpu_ms: 10,
                status: if passed {
                    AttemptStatus::Passed
                } else {
                    AttemptStatus::Failed
                },
                output_uri: None,
                error: None,
                error_type: None,
                note: None,
                strategy: None,
                prompt: None,
                revises: None,
                breakdown: vec![],
                variation: Some(Variation {
                    arms: vec![arm.to_owned()],
                    targets: vec!["face_melt".to_owned()],
                    gain: Some(if passed { 0.4 } else { 0.0 }),
                    ..Variation::default()
                }),
                worker: None,
            };
            let workflow_id = format!("earlier-{arm}-{i}");
            app.store
                .record_attempt(&RecordAttempt {
                    key: AttemptKey {
                        workflow_id,
                        run_id: "r".into(),
                        attempt: 1,
                    },
                    segment_id: "earlier".parse().unwrap(),
                    project_id: "p0".parse().unwrap(),
                    scene_type: "dialogue".parse().unwrap(),
                    record,
                })
                .await
                .unwrap();
        }
    }
}

/// The results of every `load_evidence` activity in the segment's workflow history, in order.
async fn evidence_in_history(app: &TestApp, segment: &str) -> Vec<Evidence> {
    let handle = retries::handle(&app.client, &SegmentId::parse(segment).unwrap());
    let events = handle
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .into_events()
        .await
        .unwrap();
    retake_testkit::load_evidence_answers(events).unwrap()
}

fn adaptive_policy() -> Value {
    json!({"enabled": true, "max_attempts": 1, "ladder": ["adaptive"]})
}

#[tokio::test]
async fn an_adaptive_attempt_moves_the_parameter_the_records_say_fixes_the_failure() {
    let app = spawn_app().await;
    record_evidence(&app, 40, 30).await;
    let query = EvidenceQuery {
        window: 2000,
        scope: None,
    };
    let before = app.store.evidence("dialogue", &query).await.unwrap();
    let segment = format!("{}-adaptive", app.tag);
    let input = request(&segment, "p1", Some(adaptive_policy()));

    let result = app.retry(input.clone()).await;

    // The evidence the workflow chose from is in its history, and it is the store's.
    assert_eq!(
        evidence_in_history(&app, &segment).await,
        std::slice::from_ref(&before)
    );
    let attempt = &result.attempts[0];
    let v = attempt.variation.as_ref().expect("a recorded variation");
    assert_eq!(v.chosen_by, ChosenBy::Adaptive);
    assert_eq!(v.arms, ["cfg_scale-"]);
    assert_eq!(v.targets, ["face_melt"]);
    let why = v.why.as_deref().unwrap();
    assert!(
        why.starts_with("cfg_scale-: fixed face_melt in 30 of 40 earlier attempts"),
        "{why}"
    );
    // What it generated with is the pure choice over that evidence, within the policy's bounds.
    let req = RetryRequest::parse(&input).unwrap();
    let policy = RetryPolicy::resolve(None, req.policy.as_ref()).unwrap();
    let adapt::Choice::Arm { params, .. } =
        adapt::choose(&policy, &req.params, &v.targets, &before, attempt.seed)
    else {
        panic!("enough evidence for a choice");
    };
    assert_eq!(attempt.params, params);
    let cfg = attempt.params.number("cfg_scale").unwrap();
    assert!((7.0..=7.25).contains(&cfg), "{cfg}");
    assert_eq!(attempt.params.number("denoise_strength"), Some(0.6));
    assert!(
        result.report.contains("[adaptive: cfg_scale −"),
        "{}",
        result.report
    );
    // And it is evidence for the next one: one more cfg_scale- attempt on face_melt.
    let after = app.store.evidence("dialogue", &query).await.unwrap();
    let count = |e: &Evidence| e.of("cfg_scale-", &["face_melt".to_owned()]);
    assert_eq!(count(&after).0, count(&before).0 + 1);
    assert_eq!(
        count(&after).1,
        count(&before).1 + u32::from(attempt.passed)
    );
}

#[tokio::test]
async fn without_evidence_an_adaptive_attempt_reseeds_with_jitter_and_says_so() {
    let app = spawn_app().await;
    let segment = format!("{}-cold", app.tag);
    let input = request(&segment, "p1", Some(adaptive_policy()));

    let result = app.retry(input.clone()).await;

    assert_eq!(
        evidence_in_history(&app, &segment).await,
        [Evidence::default()]
    );
    let attempt = &result.attempts[0];
    let v = attempt.variation.as_ref().unwrap();
    assert_eq!(v.chosen_by, ChosenBy::ColdStart);
    assert!(v.why.as_deref().unwrap().contains("0 earlier attempts"));
    // Exactly the fixed ladder's reseed_jitter attempt.
    let mut fixed = input.clone();
    fixed["policy"]["ladder"] = json!(["reseed_jitter"]);
    let predicted = crate::harness::predict(&fixed);
    assert_eq!(attempt.seed, predicted[0].seed);
    assert_eq!(attempt.params, predicted[0].params);
    assert_eq!(attempt.jitter, predicted[0].jitter);
}

#[tokio::test]
async fn insights_show_each_failure_and_variation_with_its_pass_rate() {
    let app = spawn_app().await;
    record_evidence(&app, 40, 30).await;

    let out = retake(&app, &["insights", "dialogue", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["window"], 2000);
    let rows = doc["insights"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    // Best pass rate first.
    assert_eq!(rows[0]["arm"], "cfg_scale-");
    assert_eq!(rows[0]["attempts"], 40);
    assert_eq!(rows[0]["passes"], 30);
    let (low, high) = adapt::wilson(30, 40);
    assert_eq!(rows[0]["low"], low);
    assert_eq!(rows[0]["high"], high);

    let text = stdout(&retake(&app, &["insights", "dialogue", "--window", "50"]).await);
    assert!(text.contains("the latest 50 scored attempts"), "{text}");
    // The 50 latest attempts are the last ones recorded: all of reseed's 40, 10 of the arm before.
    assert!(text.contains("reseed"), "{text}");
    assert!(!text.contains("cfg_scale-"), "{text}");

    let bad = retake(&app, &["insights", "dialogue", "--window", "0"]).await;
    assert!(!bad.status.success());
}

#[tokio::test]
async fn the_api_serves_insights_to_viewers_and_metrics_count_variations() {
    let app = spawn_app().await;
    record_evidence(&app, 40, 30).await;
    let api = crate::api::api_for(&app).await;

    let (status, doc) = api
        .get(
            "/scene-types/dialogue/retry-insights?window=100",
            Some(crate::api::VIEWER),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{doc}");
    assert_eq!(doc["window"], 100);
    // The latest 100: reseed's 40, denoise_strength-'s 40 and 20 of denoise_strength+.
    let arms: Vec<&str> = doc["insights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["arm"].as_str().unwrap())
        .collect();
    assert_eq!(arms.len(), 3, "{doc}");
    let (status, _) = api.get("/scene-types/dialogue/retry-insights", None).await;
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let (status, err) = api
        .get(
            "/scene-types/dialogue/retry-insights?window=0",
            Some(crate::api::VIEWER),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{err}");

    let (_, metrics) = api.get("/metrics", None).await;
    let text = metrics.as_str().unwrap();
    let series = "{scene_type=\"dialogue\",failure_kind=\"face_melt\",arm=\"cfg_scale-\"}";
    assert!(
        text.contains(&format!("retake_variation_attempts_total{series} 40")),
        "{text}"
    );
    assert!(
        text.contains(&format!("retake_variation_passes_total{series} 30")),
        "{text}"
    );
}
