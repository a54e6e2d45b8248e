//! The LLM judge: asks a chat model for a score per category as JSON and checks the answer
//! strictly before it becomes [`QaScores`].

use super::{ChatRequest, Endpoint, JudgeConfig, Message};
use crate::backends::artifacts::Artifacts;
use crate::backends::config::ConfigError;
use crate::io::{ScoreRequest, Scored};
use crate::ports::{BackendError, QaScorer};
use async_trait::async_trait;
use retake_domain::contract::{QaScores, validate_scores};
use retake_domain::quality;
use retake_domain::scores::CategoryScore;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const WHAT: &str = "LLM judge";

/// The categories scored when the configuration names none.
pub const DEFAULT_CATEGORIES: [&str; 4] = [
    "narrative_quality",
    "plot_consistency",
    "character_consistency",
    "setting_adherence",
];

const SYSTEM: &str = "You are a strict, fair editor scoring chapters of a serialised novel. \
    Answer with one JSON object and nothing else.";

/// Scores a chapter with an OpenAI-compatible chat model acting as a judge.
///
/// The model is asked (JSON mode, temperature 0, the request's seed) for
/// `{"categories":[{"category":..,"score":0-100,"feedback":".."}]}` covering exactly the
/// configured categories. Every category must be present once with a number within 0..=100 and
/// a feedback string (extra categories are ignored); anything else is a rejection. Scores are
/// divided by 100 into the breakdown, each category becomes a metric and `overall` is their mean.
#[derive(Debug)]
pub struct LlmJudge {
    endpoint: Endpoint,
    categories: Vec<String>,
    artifacts: Artifacts,
}

impl LlmJudge {
    /// Check the configuration (category names: letters, digits and `_`, no duplicates, not
    /// `overall`) and read the API key.
    pub fn new(config: JudgeConfig, artifacts: Artifacts) -> Result<Self, ConfigError> {
        let categories = match config.categories {
            Some(list) => {
                check_categories(&list)?;
                list
            }
            None => DEFAULT_CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
        };
        let timeout = Duration::from_secs(config.request_timeout_secs.unwrap_or(300).max(1));
        let endpoint = Endpoint::new(
            &config.base_url,
            &config.model,
            config.api_key_env.as_deref(),
            timeout,
        )?;
        Ok(Self {
            endpoint,
            categories,
            artifacts,
        })
    }

    /// The categories this judge scores, in order.
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    fn prompt(&self, brief: Option<&str>, chapter: &str) -> String {
        let list: Vec<String> = self
            .categories
            .iter()
            .map(|c| match describe(c) {
                Some(d) => format!("- {c}: {d}"),
                None => format!("- {c}"),
            })
            .collect();
        let shape: Vec<String> = self
            .categories
            .iter()
            .map(|c| format!(r#"{{"category": "{c}", "score": <0-100>, "feedback": "<...>"}}"#))
            .collect();
        let mut out = format!(
            "Score the chapter below in each of these categories, from 0 (unusable) to 100 \
             (excellent):\n{}\n\nAnswer with exactly this JSON shape, one entry per category, \
             and nothing else:\n{{\"categories\": [\n  {}\n]}}\n\nscore is a number from 0 to \
             100. feedback says in one to three sentences what lowers the score and what to fix, \
             in the language of the chapter.\n",
            list.join("\n"),
            shape.join(",\n  ")
        );
        if let Some(brief) = brief {
            out.push_str(&format!("\n<brief>\n{}\n</brief>\n", brief.trim_end()));
        }
        out.push_str(&format!("\n<chapter>\n{}\n</chapter>", chapter.trim_end()));
        out
    }
}

#[async_trait]
impl QaScorer for LlmJudge {
    async fn score(&self, req: &ScoreRequest) -> Result<Scored, BackendError> {
        let chapter = self.artifacts.get_text(&req.output_uri).await?;
        if chapter.trim().is_empty() {
            return Err(BackendError::Rejected(format!(
                "{}: the chapter is empty",
                req.output_uri
            )));
        }
        let brief = req
            .params
            .0
            .get("prompt")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        let body = ChatRequest {
            model: &self.endpoint.model,
            messages: vec![
                Message::system(SYSTEM),
                Message::user(self.prompt(brief, &chapter)),
            ],
            seed: req.seed,
            temperature: Some(0.0),
            top_p: None,
            max_tokens: None,
            response_format: Some(json!({"type": "json_object"})),
            stream: false,
        };
        // Not the generator's key: both may talk to the same server.
        let key = format!("{}/judge", req.key.idempotency_key());
        let completion = self.endpoint.complete(WHAT, &body, &key).await?;
        parse_judgement(&completion.text, &self.categories)
            .map_err(|e| BackendError::Rejected(format!("LLM judge answer: {e}")))
    }
}

/// Check the judge's answer and turn it into scores: the breakdown in the order of
/// `categories`, each category a metric, `overall` their mean.
pub(super) fn parse_judgement(content: &str, categories: &[String]) -> Result<QaScores, String> {
    let text = unfence(content);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let start: String = content.trim().chars().take(80).collect();
        format!("not JSON ({e}); it starts {start:?}")
    })?;
    let items = value
        .as_object()
        .and_then(|o| o.get("categories"))
        .and_then(Value::as_array)
        .ok_or("`categories` must be an array of {category, score, feedback} objects")?;
    let mut found: BTreeMap<&str, CategoryScore> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("categories[{i}] must be an object, got {item}"))?;
        let name = obj
            .get("category")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("categories[{i}].category must be a string"))?;
        let Some(wanted) = categories.iter().find(|c| c.as_str() == name) else {
            continue;
        };
        if found.contains_key(name) {
            return Err(format!("category {name} given twice"));
        }
        found.insert(wanted.as_str(), entry(name, obj)?);
    }
    let missing: Vec<&str> = categories
        .iter()
        .map(String::as_str)
        .filter(|c| !found.contains_key(c))
        .collect();
    match missing.as_slice() {
        [] => {}
        [one] => return Err(format!("category {one} missing")),
        many => return Err(format!("categories {} missing", many.join(", "))),
    }
    let breakdown = categories
        .iter()
        .filter_map(|c| found.remove(c.as_str()))
        .collect();
    let qa = quality::normalise(QaScores {
        breakdown,
        ..Default::default()
    });
    validate_scores(&qa).map_err(|e| e.to_string())?;
    Ok(qa)
}

fn entry(name: &str, obj: &Map<String, Value>) -> Result<CategoryScore, String> {
    let score = obj
        .get("score")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && (0.0..=100.0).contains(s))
        .ok_or_else(|| {
            let got = obj
                .get("score")
                .map_or_else(|| "nothing".to_owned(), Value::to_string);
            format!("category {name}: score must be a number within 0..=100, got {got}")
        })?;
    let feedback = obj.get("feedback").and_then(Value::as_str).ok_or_else(|| {
        let got = obj
            .get("feedback")
            .map_or_else(|| "nothing".to_owned(), Value::to_string);
        format!("category {name}: feedback must be a string, got {got}")
    })?;
    Ok(CategoryScore {
        category: name.to_owned(),
        score: score / 100.0,
        feedback: feedback.trim().to_owned(),
    })
}

/// The JSON inside a Markdown code fence (```` ```json ... ``` ````), or the text itself.
fn unfence(content: &str) -> &str {
    let t = content.trim();
    if t.starts_with('{') {
        return t;
    }
    let Some(start) = t.find("```") else {
        return t;
    };
    let after = &t[start + 3..];
    let body = after.find('\n').map_or(after, |i| &after[i + 1..]);
    body.find("```").map_or(body, |end| &body[..end]).trim()
}

fn describe(category: &str) -> Option<&'static str> {
    Some(match category {
        "narrative_quality" => "prose, pacing, scene craft and how engaging the chapter is",
        "plot_consistency" => "events follow logically from each other and from the brief",
        "character_consistency" => "characters keep their voices, motives and relationships",
        "setting_adherence" => "the world, its rules and the brief's setting are respected",
        _ => return None,
    })
}

fn check_categories(list: &[String]) -> Result<(), ConfigError> {
    let bad = |msg: String| Err(ConfigError::new("categories", msg));
    if list.is_empty() {
        return bad("must name at least one category".into());
    }
    for (i, c) in list.iter().enumerate() {
        let valid = !c.is_empty()
            && c.len() <= 64
            && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid {
            return bad(format!("{c:?} must be 1 to 64 letters, digits and _"));
        }
        if c == quality::OVERALL {
            return bad(format!(
                "{c:?} is the mean of the categories, not a category"
            ));
        }
        if list[..i].contains(c) {
            return bad(format!("{c:?} is named twice"));
        }
    }
    Ok(())
}
