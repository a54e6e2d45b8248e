use super::{Reply, key, message, serve};
use crate::backends::artifacts::Artifacts;
use crate::backends::openai::judge::parse_judgement;
use crate::backends::openai::{JudgeConfig, LlmJudge};
use crate::io::ScoreRequest;
use crate::ports::{BackendError, QaScorer};
use retake_domain::contract::{Params, QaScores};
use serde_json::{Value, json};

fn config(base_url: &str) -> JudgeConfig {
    JudgeConfig {
        base_url: base_url.to_owned(),
        model: "judge-model".into(),
        api_key_env: None,
        categories: None,
        request_timeout_secs: Some(30),
    }
}

fn answer(scores: [(&str, Value); 4]) -> String {
    let categories: Vec<Value> = scores
        .into_iter()
        .map(|(c, s)| json!({"category": c, "score": s, "feedback": format!("{c} 피드백")}))
        .collect();
    json!({ "categories": categories }).to_string()
}

fn good() -> String {
    answer([
        ("narrative_quality", json!(80)),
        ("plot_consistency", json!(70)),
        ("character_consistency", json!(58)),
        ("setting_adherence", json!(92.5)),
    ])
}

/// Score a chapter with a judge whose model answers `content`; the result and the request sent.
async fn judge(content: &str) -> (Result<QaScores, BackendError>, super::Seen) {
    let (url, fake) = serve(Reply::content(content)).await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = Artifacts::new(dir.path());
    let output_uri = artifacts
        .put(&key(), "md", "# 12화\n\n스승은 웃었다.".as_bytes())
        .await
        .unwrap();
    let req = ScoreRequest {
        key: key(),
        segment_id: "ch-12".parse().unwrap(),
        scene_type: "chapter".parse().unwrap(),
        seed: 77,
        params: Params(
            json!({"seed": 77, "prompt": "12화: 재회"})
                .as_object()
                .unwrap()
                .clone(),
        ),
        output_uri,
    };
    let result = LlmJudge::new(config(&url), artifacts)
        .unwrap()
        .score(&req)
        .await;
    (result, fake.one())
}

fn rejected(result: Result<QaScores, BackendError>) -> String {
    match result {
        Err(BackendError::Rejected(m)) => m,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_answer_is_normalised_with_the_overall_mean_and_the_feedback() {
    let (result, _) = judge(&good()).await;
    let qa = result.unwrap();
    let names: Vec<&str> = qa.breakdown.iter().map(|c| c.category.as_str()).collect();
    assert_eq!(
        names,
        [
            "narrative_quality",
            "plot_consistency",
            "character_consistency",
            "setting_adherence"
        ]
    );
    assert_eq!(qa.breakdown[2].score, 0.58);
    assert_eq!(qa.breakdown[2].feedback, "character_consistency 피드백");
    assert_eq!(qa.scores["setting_adherence"], 0.925);
    let mean = (0.8 + 0.7 + 0.58 + 0.925) / 4.0;
    assert!(
        (qa.scores["overall"] - mean).abs() < 1e-12,
        "{:?}",
        qa.scores
    );
    assert_eq!(qa.scores.len(), 5);
    assert!(qa.failures.is_empty());
}

#[tokio::test]
async fn the_judge_asks_for_a_json_object_at_temperature_zero_with_the_seed_and_every_category() {
    let (_, seen) = judge(&good()).await;
    assert_eq!(seen.body["model"], "judge-model");
    assert_eq!(seen.body["seed"], 77);
    assert_eq!(seen.body["temperature"], 0.0);
    assert_eq!(seen.body["response_format"], json!({"type": "json_object"}));
    assert_eq!(seen.body["stream"], false);
    let user = message(&seen, "user");
    for c in [
        "narrative_quality",
        "plot_consistency",
        "character_consistency",
        "setting_adherence",
    ] {
        assert!(
            user.contains(&format!("\"category\": \"{c}\"")),
            "{c} missing from {user}"
        );
    }
    assert!(user.contains("\"categories\""), "{user}");
    assert!(user.contains("<brief>\n12화: 재회\n</brief>"), "{user}");
    assert!(
        user.contains("<chapter>\n# 12화\n\n스승은 웃었다.\n</chapter>"),
        "{user}"
    );
    assert_eq!(
        seen.headers["idempotency-key"],
        "segment-retry-ch-12/run-1/2/judge"
    );
}

#[tokio::test]
async fn a_fenced_json_answer_is_accepted() {
    let (result, _) = judge(&format!("Here are the scores:\n```json\n{}\n```\n", good())).await;
    assert_eq!(result.unwrap().breakdown.len(), 4);
}

#[tokio::test]
async fn a_missing_category_is_rejected_naming_it() {
    let content = json!({"categories": [
        {"category": "narrative_quality", "score": 80, "feedback": ""},
        {"category": "character_consistency", "score": 80, "feedback": ""},
        {"category": "setting_adherence", "score": 80, "feedback": ""},
        {"category": "humour", "score": 10, "feedback": "unknown categories are ignored"}
    ]});
    let msg = rejected(judge(&content.to_string()).await.0);
    assert_eq!(msg, "LLM judge answer: category plot_consistency missing");
}

#[tokio::test]
async fn a_score_above_a_hundred_is_rejected() {
    let content = answer([
        ("narrative_quality", json!(140)),
        ("plot_consistency", json!(70)),
        ("character_consistency", json!(58)),
        ("setting_adherence", json!(90)),
    ]);
    let msg = rejected(judge(&content).await.0);
    assert!(
        msg.contains("narrative_quality") && msg.contains("140"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_non_json_answer_is_rejected() {
    let msg = rejected(judge("The chapter is good, I'd give it 85.").await.0);
    assert!(msg.starts_with("LLM judge answer: not JSON"), "{msg}");
}

fn categories() -> Vec<String> {
    ["a", "b"].map(String::from).to_vec()
}

#[test]
fn unknown_categories_are_ignored_and_the_breakdown_follows_the_configured_order() {
    let qa = parse_judgement(
        r#"{"categories": [{"category": "b", "score": 40, "feedback": "x"},
                          {"category": "zz", "score": "n/a"},
                          {"category": "a", "score": 60.0, "feedback": "y"}]}"#,
        &categories(),
    )
    .unwrap();
    assert_eq!(qa.breakdown[0].category, "a");
    assert_eq!(qa.scores["overall"], 0.5);
    assert!(!qa.scores.contains_key("zz"));
}

#[test]
fn malformed_entries_are_rejected_with_what_is_wrong() {
    let cases = [
        (r#"{"scores": {}}"#, "`categories` must be an array"),
        (r#"[1, 2]"#, "`categories` must be an array"),
        (r#"{"categories": [3]}"#, "categories[0] must be an object"),
        (
            r#"{"categories": [{"score": 3}]}"#,
            "categories[0].category must be a string",
        ),
        (
            r#"{"categories": [{"category": "a", "score": "80", "feedback": ""}, {"category": "b", "score": 1, "feedback": ""}]}"#,
            "category a: score must be a number within 0..=100, got \"80\"",
        ),
        (
            r#"{"categories": [{"category": "a", "score": -1, "feedback": ""}, {"category": "b", "score": 1, "feedback": ""}]}"#,
            "category a: score must be a number within 0..=100, got -1",
        ),
        (
            r#"{"categories": [{"category": "a", "score": 80}, {"category": "b", "score": 1, "feedback": ""}]}"#,
            "category a: feedback must be a string, got nothing",
        ),
        (
            r#"{"categories": [{"category": "a", "score": 80, "feedback": ""}, {"category": "a", "score": 1, "feedback": ""}]}"#,
            "category a given twice",
        ),
        (r#"{"categories": []}"#, "categories a, b missing"),
    ];
    for (content, want) in cases {
        let err = parse_judgement(content, &categories()).unwrap_err();
        assert!(err.contains(want), "{content}: {err}");
    }
}

#[test]
fn configured_categories_must_be_valid_distinct_names() {
    for (list, want) in [
        (vec![], "at least one"),
        (vec!["plot consistency"], "letters, digits and _"),
        (vec!["overall"], "mean"),
        (vec!["a", "a"], "twice"),
    ] {
        let mut c = config("http://127.0.0.1:9/v1");
        c.categories = Some(list.into_iter().map(String::from).collect());
        let err = LlmJudge::new(c, Artifacts::new("/x")).unwrap_err();
        assert_eq!(err.field, "categories");
        assert!(err.message.contains(want), "{err}");
    }
    let mut c = config("http://127.0.0.1:9/v1");
    c.categories = Some(vec!["pacing".into(), "voice_2".into()]);
    assert_eq!(
        LlmJudge::new(c, Artifacts::new("/x")).unwrap().categories(),
        ["pacing", "voice_2"]
    );
}
