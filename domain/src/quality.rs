//! Quality scores with a breakdown: one score per category with the scorer's feedback, the overall
//! score derived from them, and the lowest-scoring category (what a partial rewrite targets).
//!
//! Every score is normalised to 0..=1 (a scorer speaking 0-100 is divided by 100 by its adapter);
//! prompts show them on the 0-100 scale people use.

use crate::scores::{CategoryScore, QaScores, Scores};

/// The metric name of the overall score.
pub const OVERALL: &str = "overall";

/// Fill the score map from the breakdown: every category becomes a metric of its own (unless the
/// scorer already reported one of that name), and `overall` is the mean of the categories when the
/// scorer gave none. Thresholds can then name any category or `overall`.
pub fn normalise(mut qa: QaScores) -> QaScores {
    if qa.breakdown.is_empty() {
        return qa;
    }
    for c in &qa.breakdown {
        qa.scores.entry(c.category.clone()).or_insert(c.score);
    }
    if !qa.scores.contains_key(OVERALL) {
        let mean = qa.breakdown.iter().map(|c| c.score).sum::<f64>() / qa.breakdown.len() as f64;
        qa.scores.insert(OVERALL.to_owned(), mean);
    }
    qa
}

/// The lowest-scoring category; ties go to the category named first in alphabetical order, so
/// the choice never depends on the scorer's ordering.
pub fn lowest(breakdown: &[CategoryScore]) -> Option<&CategoryScore> {
    breakdown.iter().min_by(|a, b| {
        a.score
            .total_cmp(&b.score)
            .then_with(|| a.category.cmp(&b.category))
    })
}

/// The overall score of a score map: `overall` when present, else the mean of all scores.
pub fn overall(scores: &Scores) -> Option<f64> {
    if let Some(s) = scores.get(OVERALL) {
        return Some(*s);
    }
    (!scores.is_empty()).then(|| scores.values().sum::<f64>() / scores.len() as f64)
}

/// A 0..=1 score on the 0-100 scale, rounded to a whole number.
pub fn percent(score: f64) -> u32 {
    // Scores are validated to 0..=1, so the cast cannot truncate.
    (score.clamp(0.0, 1.0) * 100.0).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(category: &str, score: f64) -> CategoryScore {
        CategoryScore {
            category: category.into(),
            score,
            feedback: format!("{category} feedback"),
        }
    }

    #[test]
    fn categories_become_metrics_and_overall_is_their_mean() {
        let qa = normalise(QaScores {
            breakdown: vec![cat("plot_consistency", 0.8), cat("narrative_quality", 0.6)],
            ..Default::default()
        });
        assert_eq!(qa.scores["plot_consistency"], 0.8);
        assert!((qa.scores[OVERALL] - 0.7).abs() < 1e-12);
    }

    #[test]
    fn an_overall_score_given_by_the_scorer_is_kept() {
        let mut qa = QaScores {
            breakdown: vec![cat("a", 0.2)],
            ..Default::default()
        };
        qa.scores.insert(OVERALL.into(), 0.9);
        assert_eq!(normalise(qa).scores[OVERALL], 0.9);
    }

    #[test]
    fn the_lowest_category_is_found_and_ties_go_to_the_first_name() {
        let b = [cat("setting", 0.5), cat("plot", 0.5), cat("voice", 0.9)];
        assert_eq!(lowest(&b).unwrap().category, "plot");
        assert!(lowest(&[]).is_none());
    }

    #[test]
    fn scores_show_on_the_hundred_scale() {
        assert_eq!(percent(0.625), 63);
        assert_eq!(percent(0.75), 75);
    }
}
