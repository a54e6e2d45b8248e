//! Prompts of the text strategies and the user-intervention message, in Korean (the novel
//! pipeline's default; 화 = chapter, 수정 = revise) and English. Templates use `{placeholder}`s
//! (see [`PLACEHOLDERS`]; `{{` and `}}` for literal braces) and can be overridden per strategy in
//! the policy's `prompts`.

use crate::quality;
use crate::scores::CategoryScore;
use crate::strategy::{Language, Profile, Strategy};

/// Every placeholder a template may use.
pub const PLACEHOLDERS: [&str; 11] = [
    "chapter",
    "segment",
    "threshold",
    "score",
    "feedback",
    "target",
    "target_score",
    "target_feedback",
    "attempt",
    "attempts",
    "best_score",
];

/// The placeholders filled from the scorer's category breakdown: a template using one says
/// nothing sensible about a draft that has none.
pub const BREAKDOWN_PLACEHOLDERS: [&str; 4] =
    ["feedback", "target", "target_score", "target_feedback"];

/// Whether `template` uses the category breakdown (see [`BREAKDOWN_PLACEHOLDERS`]).
pub fn uses_breakdown(template: &str) -> bool {
    let mut used = false;
    let _ = render_with(template, |name| {
        used |= BREAKDOWN_PLACEHOLDERS.contains(&name);
        Ok(String::new())
    });
    used
}

/// What a prompt is about. Scores are 0..=1 and shown on the 0-100 scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptContext {
    /// The chapter number (`params.chapter`), else the segment id.
    pub chapter: String,
    pub segment: String,
    /// The pass threshold, already in words (`75`, or `face 60, motion 50`).
    pub threshold: String,
    /// Overall score of the draft being revised.
    pub score: Option<f64>,
    /// Its breakdown, with feedback.
    pub breakdown: Vec<CategoryScore>,
    /// This attempt (1-based).
    pub attempt: u32,
    /// Attempts made before this one.
    pub attempts: u32,
    /// The best score so far on what the policy gates on, in words: `75` when it gates on
    /// `overall`, else the best reached per thresholded metric (`face 62, motion 80`), on the
    /// 0-100 scale; `?` before any attempt was scored.
    pub best_score: String,
}

/// The built-in template of `strategy` (`None` for the media strategies, which need no prompt).
pub fn default_template(
    language: Language,
    profile: Profile,
    strategy: Strategy,
) -> Option<&'static str> {
    use Language::{En, Ko};
    use Strategy::*;
    Some(match (language, strategy, profile) {
        (_, Reseed | ReseedJitter | Adaptive, _) => return None,
        (Ko, Revise, _) => {
            "{chapter}화를 수정해 주세요. 현재 점수는 {score}점으로 기준 점수 {threshold}점에 미달합니다. \
             전체적인 문장과 전개를 다듬어 완성도를 높여 주세요."
        }
        (Ko, ReviseWithFeedback, _) => {
            "{chapter}화를 수정해 주세요. 현재 점수는 {score}점이며 기준 점수는 {threshold}점입니다.\n\
             항목별 평가와 피드백:\n{feedback}\n위 피드백을 모두 반영하여 수정해 주세요."
        }
        (Ko, PartialRewrite, _) => {
            "{chapter}화에서 점수가 가장 낮은 항목은 {target}({target_score}점)입니다.\n\
             피드백: {target_feedback}\n이 항목과 관련된 부분만 다시 써 주세요. 나머지 내용은 그대로 \
             유지해 주세요. (현재 점수 {score}점, 기준 점수 {threshold}점)"
        }
        (Ko, UserIntervention, Profile::Text) => {
            "{chapter}화는 {attempts}번의 자동 수정 시도 후에도 기준 점수 {threshold}점에 도달하지 \
             못했습니다 (최고 점수 {best_score}점). 작가의 직접 검토가 필요합니다."
        }
        (Ko, UserIntervention, Profile::Media) => {
            "세그먼트 {segment}는 {attempts}번의 재시도 후에도 품질 기준({threshold})을 통과하지 \
             못했습니다 (최고 {best_score}점). 사람의 검토가 필요합니다."
        }
        (En, Revise, _) => {
            "Revise chapter {chapter}. It scored {score}, below the pass threshold of {threshold}. \
             Polish the prose and pacing to raise its overall quality."
        }
        (En, ReviseWithFeedback, _) => {
            "Revise chapter {chapter}. It scored {score}; the pass threshold is {threshold}.\n\
             Scores and feedback by category:\n{feedback}\nAddress every point of the feedback."
        }
        (En, PartialRewrite, _) => {
            "The lowest-scoring category of chapter {chapter} is {target} ({target_score}).\n\
             Feedback: {target_feedback}\nRewrite only the parts this concerns and keep everything \
             else unchanged. (Current score {score}, threshold {threshold}.)"
        }
        (En, UserIntervention, Profile::Text) => {
            "Chapter {chapter} did not reach the pass threshold of {threshold} after {attempts} \
             automatic attempts (best score {best_score}). It needs a human review."
        }
        (En, UserIntervention, Profile::Media) => {
            "Segment {segment} did not pass QA ({threshold}) after {attempts} attempts \
             (best {best_score}). It needs a human review."
        }
    })
}

/// Check a template: every `{placeholder}` is known and braces are balanced. The error says what
/// is wrong.
pub fn check(template: &str) -> Result<(), String> {
    render_with(template, |name| {
        PLACEHOLDERS
            .contains(&name)
            .then(String::new)
            .ok_or_else(|| {
                format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    PLACEHOLDERS.join(", ")
                )
            })
    })
    .map(drop)
}

/// Fill a template (checked with [`check`] when the policy was parsed; an unknown placeholder
/// here is left as it is).
pub fn render(template: &str, language: Language, ctx: &PromptContext) -> String {
    render_with(template, |name| {
        Ok(value(name, language, ctx).unwrap_or_else(|| format!("{{{name}}}")))
    })
    .unwrap_or_else(|_| template.to_owned())
}

fn value(name: &str, language: Language, ctx: &PromptContext) -> Option<String> {
    let pct =
        |s: Option<f64>| s.map_or_else(|| "?".to_owned(), |s| quality::percent(s).to_string());
    let target = quality::lowest(&ctx.breakdown);
    Some(match name {
        "chapter" => ctx.chapter.clone(),
        "segment" => ctx.segment.clone(),
        "threshold" => ctx.threshold.clone(),
        "score" => pct(ctx.score),
        "feedback" => feedback_lines(language, &ctx.breakdown),
        "target" => target.map_or_else(|| "?".to_owned(), |c| label(language, &c.category)),
        "target_score" => pct(target.map(|c| c.score)),
        "target_feedback" => target.map_or_else(String::new, |c| c.feedback.clone()),
        "attempt" => ctx.attempt.to_string(),
        "attempts" => ctx.attempts.to_string(),
        "best_score" => ctx.best_score.clone(),
        _ => return None,
    })
}

/// One line per category, lowest score first: `- 캐릭터 일관성 58점: …` / `- character consistency (58): …`.
fn feedback_lines(language: Language, breakdown: &[CategoryScore]) -> String {
    let mut sorted: Vec<&CategoryScore> = breakdown.iter().collect();
    sorted.sort_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then_with(|| a.category.cmp(&b.category))
    });
    let lines: Vec<String> = sorted
        .iter()
        .map(|c| {
            let name = label(language, &c.category);
            let pct = quality::percent(c.score);
            match language {
                Language::Ko => format!("- {name} {pct}점: {}", c.feedback),
                Language::En => format!("- {name} ({pct}): {}", c.feedback),
            }
        })
        .collect();
    if lines.is_empty() {
        match language {
            Language::Ko => "- (항목별 피드백 없음)".to_owned(),
            Language::En => "- (no feedback by category)".to_owned(),
        }
    } else {
        lines.join("\n")
    }
}

/// A category's name for people: Korean labels for the chapter categories, otherwise the name
/// with spaces.
pub fn label(language: Language, category: &str) -> String {
    let ko = match category {
        "narrative_quality" => Some("서사 완성도"),
        "plot_consistency" => Some("플롯 일관성"),
        "character_consistency" => Some("캐릭터 일관성"),
        "setting_adherence" => Some("설정 준수"),
        "face" => Some("얼굴"),
        "motion" => Some("움직임"),
        "artifacting" => Some("아티팩트"),
        _ => None,
    };
    match (language, ko) {
        (Language::Ko, Some(l)) => l.to_owned(),
        _ => category.replace('_', " "),
    }
}

/// Expand `{name}` with `lookup`, `{{`/`}}` to braces; an unclosed or stray brace is an error.
fn render_with(
    template: &str,
    mut lookup: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(body) = tail.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed {{ at byte {}", template.len() - tail.len()))?;
            out.push_str(&lookup(&body[..end])?);
            rest = &body[end + 1..];
        } else {
            return Err(format!(
                "stray }} at byte {} (write }}}} for a literal brace)",
                template.len() - tail.len()
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> PromptContext {
        PromptContext {
            chapter: "12".into(),
            segment: "novel-1-ch12".into(),
            threshold: "75".into(),
            score: Some(0.62),
            breakdown: vec![
                CategoryScore {
                    category: "character_consistency".into(),
                    score: 0.58,
                    feedback: "멘토의 말투가 장면마다 바뀝니다".into(),
                },
                CategoryScore {
                    category: "plot_consistency".into(),
                    score: 0.71,
                    feedback: "복선이 회수되지 않았습니다".into(),
                },
            ],
            attempt: 2,
            attempts: 1,
            best_score: "66".to_owned(),
        }
    }

    fn built(language: Language, strategy: Strategy) -> String {
        let t = default_template(language, Profile::Text, strategy).unwrap();
        render(t, language, &ctx())
    }

    #[test]
    fn the_korean_revise_prompt_names_the_chapter_score_and_threshold() {
        assert_eq!(
            built(Language::Ko, Strategy::Revise),
            "12화를 수정해 주세요. 현재 점수는 62점으로 기준 점수 75점에 미달합니다. \
             전체적인 문장과 전개를 다듬어 완성도를 높여 주세요."
        );
    }

    #[test]
    fn the_feedback_prompt_carries_every_category_lowest_first() {
        let p = built(Language::Ko, Strategy::ReviseWithFeedback);
        assert!(
            p.contains(
                "- 캐릭터 일관성 58점: 멘토의 말투가 장면마다 바뀝니다\n- 플롯 일관성 71점: 복선이"
            ),
            "{p}"
        );
    }

    #[test]
    fn the_partial_rewrite_targets_the_lowest_category() {
        let p = built(Language::En, Strategy::PartialRewrite);
        assert!(
            p.starts_with(
                "The lowest-scoring category of chapter 12 is character consistency (58)."
            ),
            "{p}"
        );
    }

    #[test]
    fn the_user_intervention_message_states_threshold_and_attempts() {
        let p = built(Language::Ko, Strategy::UserIntervention);
        assert!(
            p.contains("1번의 자동 수정 시도") && p.contains("기준 점수 75점"),
            "{p}"
        );
        let p = built(Language::En, Strategy::UserIntervention);
        assert!(
            p.contains("threshold of 75 after 1 automatic attempts"),
            "{p}"
        );
    }

    #[test]
    fn media_strategies_have_no_prompt() {
        assert!(default_template(Language::En, Profile::Media, Strategy::Reseed).is_none());
    }

    #[test]
    fn every_built_in_template_passes_its_own_check() {
        for language in [Language::En, Language::Ko] {
            for profile in [Profile::Media, Profile::Text] {
                for s in Strategy::ALL {
                    if let Some(t) = default_template(language, profile, s) {
                        check(t).unwrap();
                    }
                }
            }
        }
    }

    #[test]
    fn an_unknown_placeholder_or_stray_brace_is_reported() {
        assert!(
            check("{chaptr}화")
                .unwrap_err()
                .contains("unknown placeholder {chaptr}")
        );
        assert!(check("a } b").unwrap_err().contains("stray }"));
        assert!(check("a {chapter").unwrap_err().contains("unclosed"));
        assert_eq!(render("{{x}} {chapter}", Language::En, &ctx()), "{x} 12");
    }
}
