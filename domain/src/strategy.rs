//! The strategy ladder: what each attempt does differently, escalating per attempt
//! (reseed → revise with feedback → rewrite the weakest part → human).

use serde::{Deserialize, Serialize};

/// What one attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A new derived seed, the other parameters as they were.
    Reseed,
    /// A new derived seed and the policy's jitter on the parameters it names.
    ReseedJitter,
    /// A new derived seed and the variation the scene type's records say most often fixes the
    /// failure (Thompson sampling, see `adapt`); `reseed_jitter` until there is evidence.
    Adaptive,
    /// Refine the draft (text): "revise this chapter".
    Revise,
    /// Refine the draft carrying every category's feedback.
    ReviseWithFeedback,
    /// Rewrite only what the lowest-scoring category is about.
    PartialRewrite,
    /// Stop generating and escalate to human review.
    UserIntervention,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::Reseed,
        Strategy::ReseedJitter,
        Strategy::Adaptive,
        Strategy::Revise,
        Strategy::ReviseWithFeedback,
        Strategy::PartialRewrite,
        Strategy::UserIntervention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reseed => "reseed",
            Strategy::ReseedJitter => "reseed_jitter",
            Strategy::Adaptive => "adaptive",
            Strategy::Revise => "revise",
            Strategy::ReviseWithFeedback => "revise_with_feedback",
            Strategy::PartialRewrite => "partial_rewrite",
            Strategy::UserIntervention => "user_intervention",
        }
    }

    /// Whether the attempt jitters the parameters named in the policy's `vary`.
    pub fn jitters(self) -> bool {
        !matches!(self, Strategy::Reseed | Strategy::UserIntervention)
    }

    /// Whether the attempt works on an earlier draft with a prompt (the text strategies).
    pub fn revises(self) -> bool {
        matches!(
            self,
            Strategy::Revise | Strategy::ReviseWithFeedback | Strategy::PartialRewrite
        )
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which defaults a policy starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Video and images: face/motion thresholds, seed and CFG/denoise jitter,
    /// ladder reseed → reseed_jitter (→ human when the attempts run out).
    #[default]
    Media,
    /// LLM-written chapters: `overall` ≥ 0.75, ladder revise → revise_with_feedback →
    /// partial_rewrite → user_intervention, Korean prompts.
    Text,
}

/// Language of prompts and of the user-intervention message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Language {
    #[default]
    En,
    Ko,
}

impl Profile {
    /// The default ladder of the profile.
    pub fn ladder(self) -> Vec<Strategy> {
        match self {
            Profile::Media => vec![Strategy::Reseed, Strategy::ReseedJitter],
            Profile::Text => vec![
                Strategy::Revise,
                Strategy::ReviseWithFeedback,
                Strategy::PartialRewrite,
                Strategy::UserIntervention,
            ],
        }
    }

    pub fn language(self) -> Language {
        match self {
            Profile::Media => Language::En,
            Profile::Text => Language::Ko,
        }
    }
}

/// The strategy of attempt `attempt` (1-based): the ladder's rung at that index, the last rung
/// repeating when there are more attempts than rungs. An empty ladder reseeds with jitter.
pub fn rung(ladder: &[Strategy], attempt: u32) -> Strategy {
    let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    ladder
        .get(i)
        .or_else(|| ladder.last())
        .copied()
        .unwrap_or(Strategy::ReseedJitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_ladder_walks_to_user_intervention_at_the_fourth_attempt() {
        let l = Profile::Text.ladder();
        let walked: Vec<_> = (1..=5).map(|k| rung(&l, k)).collect();
        assert_eq!(
            walked,
            [
                Strategy::Revise,
                Strategy::ReviseWithFeedback,
                Strategy::PartialRewrite,
                Strategy::UserIntervention,
                Strategy::UserIntervention
            ]
        );
    }

    #[test]
    fn the_last_media_rung_repeats() {
        let l = Profile::Media.ladder();
        assert_eq!(rung(&l, 1), Strategy::Reseed);
        assert_eq!(rung(&l, 3), Strategy::ReseedJitter);
        assert_eq!(rung(&[], 2), Strategy::ReseedJitter);
    }

    #[test]
    fn strategies_use_their_snake_case_names_in_json() {
        for s in Strategy::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
