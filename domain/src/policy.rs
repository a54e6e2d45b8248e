//! The retry policy: a value type, stored per scene type, optionally overridden per request.
//!
//! Auto-retry is opt-in: the default policy has `enabled: false`, so a scene type with no stored
//! policy and no override is never retried.

use crate::error::{Errors, ValidationError};
use crate::strategy::{Language, Profile, Strategy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Allowed range of [`RetryPolicy::max_attempts`].
pub const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<u32> = 1..=10;
/// Allowed range of [`RetryPolicy::parallelism`]: attempts running at once.
pub const PARALLELISM_RANGE: std::ops::RangeInclusive<u32> = 1..=10;
/// Allowed range of [`RetryPolicy::seed_bits`]; 53 keeps seeds exact in JSON/JavaScript clients.
pub const SEED_BITS_RANGE: std::ops::RangeInclusive<u32> = 16..=53;
/// Allowed range of [`RetryPolicy::stop_after_same_refusals`]; 0 never stops early.
pub const SAME_REFUSALS_RANGE: std::ops::RangeInclusive<u32> = 0..=10;
/// Longest allowed [`RetryPolicy::review_window_secs`]: 30 days.
pub const MAX_REVIEW_WINDOW_SECS: u64 = 30 * 86_400;
/// Largest allowed [`RetryPolicy::est_gpu_ms_per_attempt`]: 30 days of GPU time
/// (2 592 000 000 ms). The store keeps GPU milliseconds as signed 64-bit integers and a
/// reservation adds the estimate to everything already reserved and spent, so the bound must
/// leave head-room: at 30 days an attempt, over 3.5 billion attempts fit below 2^63. No single
/// generation is expected to come near it; anything above is a typo or a unit mix-up.
pub const MAX_EST_GPU_MS_PER_ATTEMPT: u64 = 30 * 86_400 * 1_000;

/// How the final attempt is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Stop at the first passing attempt and select it. Default.
    #[default]
    FirstPass,
    /// Run every allowed attempt and select the highest-scoring passing one (ties: earliest).
    BestOfN,
}

/// Where the generations of a retry run (see `docs/policy.md#placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// On whichever worker takes the task; a generation that failed because of its machine
    /// (an infrastructure failure: CUDA out of memory, a lost device, NaN or empty output) is
    /// recorded as an error, like any other failed generation.
    Any,
    /// An infrastructure failure is re-run (same attempt, seed and parameters) on another
    /// worker, never the one that failed; quality retries go to whichever worker is free.
    /// Default.
    #[default]
    AvoidFailed,
    /// As `avoid_failed`, and each attempt after the first goes to the worker that generated the
    /// previous one while it is healthy (its model is loaded and warm).
    SameWorker,
}

/// What to do when a failed QA result (or an attempt) fails a kind the policy retries on *and* a
/// kind it does not (e.g. `face_melt` and `motion_score` with `retry_on: ["face_melt"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MixedFailures {
    /// Do not retry: the other failure may be systematic, and then no seed or jitter fixes the
    /// segment, so every retry would spend GPU time for nothing. The original failure is not
    /// retried; an attempt that fails this way stops the retry and escalates it. The reason says
    /// which failure kind stopped it. Default.
    #[default]
    Stop,
    /// Retry anyway, as long as at least one failure is retried on (retake before 0.2).
    Retry,
}

/// Pass threshold of one QA metric, and the failure kind reported when a score falls below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Minimum score (0..=1) to pass.
    pub min: f64,
    /// Failure kind reported below `min`, e.g. `face_melt` for the `face` metric.
    pub failure: String,
}

/// Either `0.6` (failure kind from [`default_failure_kind`]) or `{"min": 0.6, "failure": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
enum ThresholdSpec {
    Min(f64),
    Full(Threshold),
}

/// Jitter of one numeric generation parameter: uniform in `±range`, then clamped to `[min, max]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JitterSpec {
    /// Half-width of the uniform jitter interval (≥ 0).
    pub range: f64,
    /// Lowest valid value of the parameter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest valid value of the parameter, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// How an `adaptive` rung learns (see `adapt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveSettings {
    /// Recorded attempts on the failure kinds being fixed, over the candidate variations, needed
    /// before the evidence decides; with fewer the rung plans as `reseed_jitter`. Default: 30.
    pub min_evidence: u32,
    /// How many of the scene type's latest scored attempts count as evidence, 1..=10000: older
    /// ones fade out, so a new model is relearned. Default: 2000 (in the economics bench, 500 let
    /// noise pull the choice off the right variation for a while; 2000 held it).
    pub window: u32,
    /// Count only attempts recorded under this scope (e.g. a model version tag), and record new
    /// ones under it. Default: none (every attempt of the scene type recorded without a scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        Self {
            min_evidence: 30,
            window: 2000,
            scope: None,
        }
    }
}

/// Allowed range of [`AdaptiveSettings::window`].
pub const ADAPTIVE_WINDOW_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000;

/// The cost-effectiveness rule: stop retrying (and escalate) when another attempt is expected to
/// save less than it costs. Attempt `k` is made only while
/// `fix_chance[k-1] × review_cost_gpu_ms ≥ est_gpu_ms_per_attempt`, where `fix_chance[k-1]` is the
/// measured chance that attempt `k` fixes a segment no earlier attempt fixed (`retake-bench
/// economics` measures it; the last entry repeats) and the review cost is what a human review is
/// worth in GPU milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CostRule {
    pub review_cost_gpu_ms: u64,
    pub fix_chance: Vec<f64>,
}

impl CostRule {
    /// The chance that attempt `k` (1-based) fixes the segment.
    pub fn chance(&self, k: u32) -> f64 {
        let i = usize::try_from(k.saturating_sub(1)).unwrap_or(usize::MAX);
        self.fix_chance
            .get(i)
            .or(self.fix_chance.last())
            .copied()
            .unwrap_or(0.0)
    }

    /// Expected GPU milliseconds attempt `k` saves (its fix chance × the review cost).
    pub fn expected_saving_ms(&self, k: u32) -> f64 {
        self.chance(k) * self.review_cost_gpu_ms as f64
    }
}

/// Retry policy of a scene type. Every field has a default, so `{}` is a valid (disabled) policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Whether failed segments of this scene type are retried at all. Default: `false` (opt-in).
    pub enabled: bool,
    /// Attempts the workflow may make, 1..=10. Default: 3.
    pub max_attempts: u32,
    /// QA failure kinds that trigger a retry. Default: `["face_melt"]` (`motion_score` does not).
    pub retry_on: BTreeSet<String>,
    /// Pass threshold per QA metric. Default: `face` ≥ 0.6 (`face_melt`), `motion` ≥ 0.5
    /// (`motion_score`).
    pub thresholds: BTreeMap<String, Threshold>,
    /// Parameters jittered per attempt. Default: `cfg_scale` ±0.5 in [1, 30], `denoise_strength`
    /// ±0.05 in [0, 1].
    pub vary: BTreeMap<String, JitterSpec>,
    /// How the final attempt is chosen. Default: `first_pass`.
    pub selection: Selection,
    /// GPU milliseconds reserved against the project budget before each attempt, at most
    /// [`MAX_EST_GPU_MS_PER_ATTEMPT`] (30 days, 2592000000): the store adds reservations up in
    /// signed 64-bit integers. Default: 60000 (media), 30000 (text).
    pub est_gpu_ms_per_attempt: u64,
    /// Derived seeds are below `2^seed_bits`, 16..=53. Default: 53.
    pub seed_bits: u32,
    /// How long an escalated segment waits for a creator's decision before the workflow ends
    /// with outcome `escalated` (the review stays pending in the store). 0 ends at once, at most
    /// 30 days. Default: 86400 (one day).
    pub review_window_secs: u64,
    /// Which defaults the other fields start from: `media` (default) or `text`.
    pub profile: Profile,
    /// Strategy of each attempt, by attempt number; the last rung repeats. `user_intervention`
    /// stops and escalates. Default: the profile's ladder (media: reseed → reseed_jitter; text:
    /// revise → revise_with_feedback → partial_rewrite → user_intervention).
    pub ladder: Vec<Strategy>,
    /// Language of prompts and of the user-intervention message. Default: `en` (media), `ko`
    /// (text).
    pub language: Language,
    /// Prompt templates by strategy, replacing the built-in ones (see `prompt::PLACEHOLDERS`).
    pub prompts: BTreeMap<Strategy, String>,
    /// Stop early when another attempt costs more than it is expected to save. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_rule: Option<CostRule>,
    /// Failures of several kinds, some not retried on: `stop` (default) or `retry`; see
    /// [`MixedFailures`].
    pub mixed_failures: MixedFailures,
    /// How `adaptive` rungs learn. Default: see [`AdaptiveSettings`].
    pub adaptive: AdaptiveSettings,
    /// Attempts that may run at once, 1..=10 (never more than `max_attempts`). Each reserves its
    /// own budget before it starts. With `first_pass` the first passing attempt cancels the
    /// others; with `best_of_n` they all run. Seeds and parameters of attempt k do not depend on
    /// it. Text rungs that revise a draft wait for the attempts in flight (see `parallel`).
    /// Default: 1 (one after another).
    pub parallelism: u32,
    /// Where generations run and where one that failed because of its machine is re-run: `any`,
    /// `avoid_failed` (default) or `same_worker`; see [`Placement`].
    pub placement: Placement,
    /// Stop the round (escalated) once this many finished attempts in a row were refused by the
    /// backend (`BackendRejected`) with the same error: other seeds and jitter do not change
    /// what it refuses. 0 never stops early, 1 stops at the first refusal, 0..=10. Default: 2
    /// (the first refusal may be the jitter's doing, so it is retried once).
    pub stop_after_same_refusals: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            max_attempts: 3,
            retry_on: BTreeSet::from(["face_melt".to_owned()]),
            thresholds: BTreeMap::from([
                (
                    "face".to_owned(),
                    Threshold {
                        min: 0.6,
                        failure: "face_melt".to_owned(),
                    },
                ),
                (
                    "motion".to_owned(),
                    Threshold {
                        min: 0.5,
                        failure: "motion_score".to_owned(),
                    },
                ),
            ]),
            vary: BTreeMap::from([
                (
                    "cfg_scale".to_owned(),
                    JitterSpec {
                        range: 0.5,
                        min: Some(1.0),
                        max: Some(30.0),
                    },
                ),
                (
                    "denoise_strength".to_owned(),
                    JitterSpec {
                        range: 0.05,
                        min: Some(0.0),
                        max: Some(1.0),
                    },
                ),
            ]),
            selection: Selection::FirstPass,
            est_gpu_ms_per_attempt: 60_000,
            seed_bits: 53,
            review_window_secs: 86_400,
            profile: Profile::Media,
            ladder: Profile::Media.ladder(),
            language: Language::En,
            prompts: BTreeMap::new(),
            cost_rule: None,
            mixed_failures: MixedFailures::Stop,
            adaptive: AdaptiveSettings::default(),
            parallelism: 1,
            placement: Placement::AvoidFailed,
            stop_after_same_refusals: 2,
        }
    }
}

impl RetryPolicy {
    /// Jitter only the parameters the generator sends on (`taken`; `None`: every one). A varied
    /// parameter the backend never receives (a ComfyUI graph whose `inputs` do not map it) would
    /// be recorded and shown as a variation that never happened.
    pub fn vary_only(&mut self, taken: Option<&[String]>) {
        if let Some(taken) = taken {
            self.vary
                .retain(|param, _| taken.iter().any(|t| t == param));
        }
    }

    /// The defaults of a profile (`media` is [`RetryPolicy::default`]).
    pub fn for_profile(profile: Profile) -> Self {
        match profile {
            Profile::Media => Self::default(),
            Profile::Text => Self {
                retry_on: BTreeSet::from([BELOW_THRESHOLD.to_owned()]),
                thresholds: BTreeMap::from([(
                    crate::quality::OVERALL.to_owned(),
                    Threshold {
                        min: 0.75,
                        failure: BELOW_THRESHOLD.to_owned(),
                    },
                )]),
                vary: BTreeMap::new(),
                est_gpu_ms_per_attempt: 30_000,
                profile,
                ladder: profile.ladder(),
                language: profile.language(),
                ..Self::default()
            },
        }
    }

    /// The pass threshold in words: `75` when the policy thresholds `overall`, else every
    /// threshold (`face 60, motion 50`), on the 0-100 scale.
    pub fn threshold_words(&self) -> String {
        if let Some(t) = self.thresholds.get(crate::quality::OVERALL) {
            return crate::quality::percent(t.min).to_string();
        }
        let parts: Vec<String> = self
            .thresholds
            .iter()
            .map(|(m, t)| format!("{m} {}", crate::quality::percent(t.min)))
            .collect();
        parts.join(", ")
    }
}

impl RetryPolicy {
    /// The best score reached on what this policy gates on, in the words of
    /// [`threshold_words`](Self::threshold_words): `75` (the best `overall`) when it gates on
    /// `overall`, else the best of each thresholded metric (`face 62, motion 80`), each taken
    /// over every scored attempt; metrics no attempt scored are left out. `None` when nothing was
    /// scored. Quoting the gated metrics (not a mean over every metric) keeps an escalation from
    /// suggesting a segment came closer to passing than it did.
    pub fn best_words<'a>(
        &self,
        scored: impl Iterator<Item = &'a crate::scores::Scores> + Clone,
    ) -> Option<String> {
        let pct = crate::quality::percent;
        if self.thresholds.contains_key(crate::quality::OVERALL) {
            return scored
                .filter_map(crate::quality::overall)
                .max_by(f64::total_cmp)
                .map(|s| pct(s).to_string());
        }
        let parts: Vec<String> = self
            .thresholds
            .keys()
            .filter_map(|m| {
                let best = scored
                    .clone()
                    .filter_map(|s| s.get(m).copied())
                    .max_by(f64::total_cmp)?;
                Some(format!("{m} {}", pct(best)))
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Failure kind of the text profile's `overall` threshold.
pub const BELOW_THRESHOLD: &str = "below_threshold";

/// The failure kind a shorthand threshold (`"face": 0.6`) reports.
pub fn default_failure_kind(metric: &str) -> String {
    match metric {
        "face" => "face_melt".to_owned(),
        "motion" => "motion_score".to_owned(),
        "artifacts" => "artifacting".to_owned(),
        other => format!("low_{other}"),
    }
}

/// The wire form of a policy (a stored policy, or a request's override): every field of
/// [`RetryPolicy`] optional, unknown fields rejected (a typo must not pass silently). A threshold
/// may be a bare minimum (`"face": 0.6`). Public so the HTTP API can describe what it accepts.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default, deny_unknown_fields)]
pub struct PolicyInput {
    enabled: Option<bool>,
    max_attempts: Option<u32>,
    retry_on: Option<BTreeSet<String>>,
    thresholds: Option<BTreeMap<String, ThresholdSpec>>,
    vary: Option<BTreeMap<String, JitterSpec>>,
    selection: Option<Selection>,
    est_gpu_ms_per_attempt: Option<u64>,
    seed_bits: Option<u32>,
    review_window_secs: Option<u64>,
    profile: Option<Profile>,
    ladder: Option<Vec<Strategy>>,
    language: Option<Language>,
    prompts: Option<BTreeMap<Strategy, String>>,
    cost_rule: Option<CostRule>,
    mixed_failures: Option<MixedFailures>,
    adaptive: Option<AdaptiveSettings>,
    parallelism: Option<u32>,
    placement: Option<Placement>,
    stop_after_same_refusals: Option<u32>,
}

impl RetryPolicy {
    /// Parse a policy from JSON; missing fields take their defaults. Errors name the field.
    pub fn parse(value: &Value) -> Result<Self, ValidationError> {
        if !value.is_object() {
            return Err(ValidationError::single(
                "",
                "a policy must be a JSON object",
            ));
        }
        let raw: PolicyInput = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { String::new() } else { path };
            ValidationError::single(field, e.inner().to_string())
        })?;
        let d = Self::for_profile(raw.profile.unwrap_or_default());
        let policy = Self {
            enabled: raw.enabled.unwrap_or(d.enabled),
            max_attempts: raw.max_attempts.unwrap_or(d.max_attempts),
            retry_on: raw.retry_on.unwrap_or(d.retry_on),
            thresholds: raw
                .thresholds
                .map(|t| {
                    t.into_iter()
                        .map(|(metric, spec)| {
                            let threshold = match spec {
                                ThresholdSpec::Min(min) => Threshold {
                                    min,
                                    failure: default_failure_kind(&metric),
                                },
                                ThresholdSpec::Full(t) => t,
                            };
                            (metric, threshold)
                        })
                        .collect()
                })
                .unwrap_or(d.thresholds),
            vary: raw.vary.unwrap_or(d.vary),
            selection: raw.selection.unwrap_or(d.selection),
            est_gpu_ms_per_attempt: raw
                .est_gpu_ms_per_attempt
                .unwrap_or(d.est_gpu_ms_per_attempt),
            seed_bits: raw.seed_bits.unwrap_or(d.seed_bits),
            review_window_secs: raw.review_window_secs.unwrap_or(d.review_window_secs),
            profile: d.profile,
            ladder: raw.ladder.unwrap_or(d.ladder),
            language: raw.language.unwrap_or(d.language),
            prompts: raw.prompts.unwrap_or(d.prompts),
            cost_rule: raw.cost_rule.or(d.cost_rule),
            mixed_failures: raw.mixed_failures.unwrap_or(d.mixed_failures),
            adaptive: raw.adaptive.unwrap_or(d.adaptive),
            parallelism: raw.parallelism.unwrap_or(d.parallelism),
            placement: raw.placement.unwrap_or(d.placement),
            stop_after_same_refusals: raw
                .stop_after_same_refusals
                .unwrap_or(d.stop_after_same_refusals),
        };
        policy.validate()
    }

    /// The scene type's stored policy (or the disabled default) with a request's override merged
    /// over it as a JSON merge patch (RFC 7386): fields the override names replace the stored ones,
    /// maps (`thresholds`, `vary`) merge key by key, `null` removes a key.
    pub fn resolve(
        stored: Option<&Value>,
        override_: Option<&Value>,
    ) -> Result<Self, ValidationError> {
        // Without a stored policy the base is the defaults of the profile the override names.
        let profile = override_
            .and_then(|o| o.get("profile"))
            .and_then(|p| serde_json::from_value::<Profile>(p.clone()).ok())
            .unwrap_or_default();
        let mut merged = stored.cloned().unwrap_or_else(|| {
            serde_json::to_value(Self::for_profile(profile)).unwrap_or(Value::Null)
        });
        if let Some(patch) = override_ {
            if !patch.is_object() {
                return Err(ValidationError::single("policy", "must be a JSON object"));
            }
            merge_patch(&mut merged, patch);
        }
        Self::parse(&merged).map_err(|e| e.within("policy"))
    }

    /// Check every field; all problems are reported at once.
    pub fn validate(self) -> Result<Self, ValidationError> {
        let mut errs = Errors::default();
        if !MAX_ATTEMPTS_RANGE.contains(&self.max_attempts) {
            errs.push(
                "max_attempts",
                format!("must be between 1 and 10, got {}", self.max_attempts),
            );
        }
        if !PARALLELISM_RANGE.contains(&self.parallelism) {
            errs.push(
                "parallelism",
                format!("must be between 1 and 10, got {}", self.parallelism),
            );
        }
        if !SAME_REFUSALS_RANGE.contains(&self.stop_after_same_refusals) {
            errs.push(
                "stop_after_same_refusals",
                format!(
                    "must be between 0 (never stop early) and 10, got {}",
                    self.stop_after_same_refusals
                ),
            );
        }
        if !SEED_BITS_RANGE.contains(&self.seed_bits) {
            errs.push(
                "seed_bits",
                format!("must be between 16 and 53, got {}", self.seed_bits),
            );
        }
        if self.est_gpu_ms_per_attempt > MAX_EST_GPU_MS_PER_ATTEMPT {
            errs.push(
                "est_gpu_ms_per_attempt",
                format!(
                    "must be at most {MAX_EST_GPU_MS_PER_ATTEMPT} (30 days of GPU time; the budget \
                     adds reservations up in signed 64-bit integers), got {}",
                    self.est_gpu_ms_per_attempt
                ),
            );
        }
        if self.review_window_secs > MAX_REVIEW_WINDOW_SECS {
            errs.push(
                "review_window_secs",
                format!(
                    "must be at most {MAX_REVIEW_WINDOW_SECS} (30 days), got {}",
                    self.review_window_secs
                ),
            );
        }
        if self.enabled && self.retry_on.is_empty() {
            errs.push(
                "retry_on",
                "an enabled policy must name at least one failure kind to retry on",
            );
        }
        for kind in &self.retry_on {
            if !is_name(kind) {
                errs.push("retry_on", format!("{kind:?} is not a valid failure kind"));
            }
        }
        for (metric, t) in &self.thresholds {
            let field = format!("thresholds.{metric}");
            if !is_name(metric) {
                errs.push(&field, "metric names are letters, digits and _");
            }
            if !(t.min.is_finite() && (0.0..=1.0).contains(&t.min)) {
                errs.push(
                    format!("{field}.min"),
                    format!("must be within 0..=1, got {}", t.min),
                );
            }
            if !is_name(&t.failure) {
                errs.push(
                    format!("{field}.failure"),
                    "must be a failure kind like face_melt",
                );
            }
        }
        for (param, j) in &self.vary {
            let field = format!("vary.{param}");
            if param == "seed" {
                errs.push(
                    &field,
                    "the seed is derived per attempt, it cannot be jittered",
                );
            } else if !is_name(param) {
                errs.push(&field, "parameter names are letters, digits and _");
            }
            if !(j.range.is_finite() && j.range >= 0.0) {
                errs.push(
                    format!("{field}.range"),
                    format!("must be a finite number ≥ 0, got {}", j.range),
                );
            }
            for (name, bound) in [("min", j.min), ("max", j.max)] {
                if bound.is_some_and(|b| !b.is_finite()) {
                    errs.push(format!("{field}.{name}"), "must be a finite number");
                }
            }
            if let (Some(lo), Some(hi)) = (j.min, j.max)
                && lo > hi
            {
                errs.push(
                    format!("{field}.min"),
                    format!("min {lo} is above max {hi}"),
                );
            }
        }
        if let Some(rule) = &self.cost_rule {
            if rule.fix_chance.is_empty() {
                errs.push("cost_rule.fix_chance", "must give at least one chance");
            }
            for (i, c) in rule.fix_chance.iter().enumerate() {
                if !(c.is_finite() && (0.0..=1.0).contains(c)) {
                    errs.push(
                        format!("cost_rule.fix_chance[{i}]"),
                        format!("must be within 0..=1, got {c}"),
                    );
                }
            }
        }
        if !ADAPTIVE_WINDOW_RANGE.contains(&self.adaptive.window) {
            errs.push(
                "adaptive.window",
                format!("must be between 1 and 10000, got {}", self.adaptive.window),
            );
        }
        if let Some(scope) = &self.adaptive.scope
            && crate::ids::SceneType::parse(scope).is_err()
        {
            errs.push(
                "adaptive.scope",
                "must be 1 to 128 ASCII letters, digits and - _ . :",
            );
        }
        if self.ladder.is_empty() {
            errs.push("ladder", "must name at least one strategy");
        }
        for (strategy, template) in &self.prompts {
            let field = format!("prompts.{strategy}");
            if !(strategy.revises() || *strategy == Strategy::UserIntervention) {
                errs.push(&field, "this strategy sends no prompt");
            } else if let Err(e) = crate::prompt::check(template) {
                errs.push(&field, e);
            }
        }
        errs.finish(self)
    }

    /// The failure kinds in `failures` that stop a retry: under [`MixedFailures::Stop`] every
    /// kind not retried on; under `retry` all of them, but only when none is retried on.
    pub fn blocking<'a>(&self, failures: &'a [String]) -> Vec<&'a str> {
        let others: Vec<&str> = failures
            .iter()
            .filter(|f| !self.retry_on.contains(f.as_str()))
            .map(String::as_str)
            .collect();
        match self.mixed_failures {
            MixedFailures::Stop => others,
            MixedFailures::Retry if others.len() == failures.len() => others,
            MixedFailures::Retry => vec![],
        }
    }

    /// The failure kinds in `failures` that this policy retries on, in order.
    pub fn retryable<'a>(&self, failures: &'a [String]) -> Vec<&'a str> {
        failures
            .iter()
            .filter(|f| self.retry_on.contains(f.as_str()))
            .map(String::as_str)
            .collect()
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_parameters_the_generator_takes_are_jittered() {
        let mut p = RetryPolicy::default();
        assert!(p.vary.contains_key("denoise_strength") && p.vary.contains_key("cfg_scale"));
        p.vary_only(Some(&["cfg_scale".to_owned(), "steps".to_owned()]));
        assert_eq!(p.vary.keys().collect::<Vec<_>>(), ["cfg_scale"]);
        let mut every = RetryPolicy::default();
        every.vary_only(None);
        assert_eq!(every.vary, RetryPolicy::default().vary);
    }
    use serde_json::json;

    #[test]
    fn the_default_policy_is_disabled_with_three_attempts() {
        let p = RetryPolicy::parse(&json!({})).unwrap();
        assert!(!p.enabled);
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.selection, Selection::FirstPass);
        assert!(p.retry_on.contains("face_melt"));
        assert!(!p.retry_on.contains("motion_score"));
        assert_eq!(p.vary["cfg_scale"].range, 0.5);
        assert_eq!(p.vary["denoise_strength"].range, 0.05);
        assert_eq!(p.seed_bits, 53);
        assert_eq!(p.review_window_secs, 86_400);
        assert_eq!(p.stop_after_same_refusals, 2);
    }

    #[test]
    fn stop_after_same_refusals_out_of_range_or_mistyped_is_rejected_naming_the_field() {
        for bad in [json!(11), json!(-1), json!("two"), json!(1.5)] {
            let err = RetryPolicy::parse(&json!({"stop_after_same_refusals": bad})).unwrap_err();
            assert_eq!(
                err.first_field(),
                "stop_after_same_refusals",
                "{bad}: {err}"
            );
        }
        for ok in [0, 1, 10] {
            let p = RetryPolicy::parse(&json!({"stop_after_same_refusals": ok})).unwrap();
            assert_eq!(p.stop_after_same_refusals, ok);
        }
        let err =
            RetryPolicy::resolve(None, Some(&json!({"stop_after_same_refusals": 99}))).unwrap_err();
        assert_eq!(err.first_field(), "policy.stop_after_same_refusals");
    }

    #[test]
    fn a_policy_with_zero_attempts_is_rejected() {
        let err = RetryPolicy::parse(&json!({"max_attempts": 0})).unwrap_err();
        assert_eq!(err.first_field(), "max_attempts");
    }

    #[test]
    fn a_policy_with_eleven_attempts_is_rejected() {
        assert!(RetryPolicy::parse(&json!({"max_attempts": 11})).is_err());
        assert!(RetryPolicy::parse(&json!({"max_attempts": 10})).is_ok());
    }

    #[test]
    fn a_wrongly_typed_field_is_named_in_the_error() {
        let err =
            RetryPolicy::parse(&json!({"vary": {"cfg_scale": {"range": "big"}}})).unwrap_err();
        assert_eq!(err.first_field(), "vary.cfg_scale.range");
    }

    #[test]
    fn a_negative_estimated_cost_is_rejected_naming_the_field() {
        let err = RetryPolicy::parse(&json!({"est_gpu_ms_per_attempt": -5})).unwrap_err();
        assert_eq!(err.first_field(), "est_gpu_ms_per_attempt");
    }

    #[test]
    fn an_estimated_cost_beyond_thirty_days_is_rejected_naming_the_field() {
        for huge in [json!(9_223_372_036_854_775_808_u64), json!(u64::MAX)] {
            let err = RetryPolicy::parse(&json!({"est_gpu_ms_per_attempt": huge})).unwrap_err();
            assert_eq!(err.first_field(), "est_gpu_ms_per_attempt", "{err}");
        }
        let err =
            RetryPolicy::parse(&json!({"est_gpu_ms_per_attempt": MAX_EST_GPU_MS_PER_ATTEMPT + 1}))
                .unwrap_err();
        assert!(err.to_string().contains("30 days"), "{err}");
        assert!(
            RetryPolicy::parse(&json!({"est_gpu_ms_per_attempt": MAX_EST_GPU_MS_PER_ATTEMPT}))
                .is_ok()
        );
    }

    #[test]
    fn an_override_with_a_huge_estimated_cost_is_rejected_under_policy() {
        let err = RetryPolicy::resolve(
            None,
            Some(&json!({"enabled": true, "est_gpu_ms_per_attempt": u64::MAX})),
        )
        .unwrap_err();
        assert_eq!(err.first_field(), "policy.est_gpu_ms_per_attempt");
    }

    #[test]
    fn an_unknown_field_is_rejected_instead_of_ignored() {
        let err = RetryPolicy::parse(&json!({"max_attempt": 4})).unwrap_err();
        assert!(err.to_string().contains("max_attempt"), "{err}");
    }

    #[test]
    fn a_negative_jitter_range_and_inverted_bounds_are_both_reported() {
        let err = RetryPolicy::parse(&json!({
            "vary": {"cfg_scale": {"range": -1.0, "min": 5.0, "max": 2.0}}
        }))
        .unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["vary.cfg_scale.range", "vary.cfg_scale.min"]);
    }

    #[test]
    fn a_threshold_outside_zero_to_one_is_rejected() {
        let err = RetryPolicy::parse(&json!({"thresholds": {"face": 1.5}})).unwrap_err();
        assert_eq!(err.first_field(), "thresholds.face.min");
    }

    #[test]
    fn a_nan_produced_outside_json_is_rejected() {
        let mut p = RetryPolicy::default();
        p.vary.get_mut("cfg_scale").unwrap().range = f64::NAN;
        assert_eq!(
            p.validate().unwrap_err().first_field(),
            "vary.cfg_scale.range"
        );
    }

    #[test]
    fn jittering_the_seed_is_rejected() {
        let err = RetryPolicy::parse(&json!({"vary": {"seed": {"range": 1.0}}})).unwrap_err();
        assert_eq!(err.first_field(), "vary.seed");
    }

    #[test]
    fn a_shorthand_threshold_gets_the_known_failure_kind() {
        let p =
            RetryPolicy::parse(&json!({"thresholds": {"face": 0.7, "sharpness": 0.3}})).unwrap();
        assert_eq!(p.thresholds["face"].failure, "face_melt");
        assert_eq!(p.thresholds["sharpness"].failure, "low_sharpness");
    }

    #[test]
    fn an_override_merges_over_the_stored_policy() {
        let stored = serde_json::to_value(RetryPolicy {
            enabled: true,
            max_attempts: 4,
            ..RetryPolicy::default()
        })
        .unwrap();
        let p = RetryPolicy::resolve(
            Some(&stored),
            Some(&json!({"selection": "best_of_n", "vary": {"cfg_scale": {"range": 1.0}}})),
        )
        .unwrap();
        assert!(p.enabled);
        assert_eq!(p.max_attempts, 4);
        assert_eq!(p.selection, Selection::BestOfN);
        assert_eq!(p.vary["cfg_scale"].range, 1.0);
        assert_eq!(p.vary["cfg_scale"].min, Some(1.0), "bounds not named stay");
        assert!(p.vary.contains_key("denoise_strength"));
    }

    #[test]
    fn no_stored_policy_and_no_override_resolves_to_the_disabled_default() {
        assert_eq!(
            RetryPolicy::resolve(None, None).unwrap(),
            RetryPolicy::default()
        );
    }

    #[test]
    fn an_invalid_override_is_reported_under_policy() {
        let err = RetryPolicy::resolve(None, Some(&json!({"max_attempts": 99}))).unwrap_err();
        assert_eq!(err.first_field(), "policy.max_attempts");
    }

    #[test]
    fn an_unknown_field_in_an_override_is_named_under_policy() {
        let err = RetryPolicy::resolve(None, Some(&json!({"max_attemps": 2}))).unwrap_err();
        assert_eq!(err.first_field(), "policy.max_attemps");
    }

    #[test]
    fn a_policy_survives_a_json_round_trip() {
        let p = RetryPolicy {
            enabled: true,
            selection: Selection::BestOfN,
            ..RetryPolicy::default()
        };
        let back = RetryPolicy::parse(&serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn the_text_profile_thresholds_overall_at_75_with_the_korean_ladder() {
        let p = RetryPolicy::parse(&json!({"profile": "text"})).unwrap();
        assert_eq!(p.thresholds["overall"].min, 0.75);
        assert!(p.retry_on.contains(BELOW_THRESHOLD));
        assert!(p.vary.is_empty());
        assert_eq!(p.language, Language::Ko);
        assert_eq!(p.ladder, Profile::Text.ladder());
        assert_eq!(p.threshold_words(), "75");
        assert_eq!(
            RetryPolicy::default().threshold_words(),
            "face 60, motion 50"
        );
    }

    #[test]
    fn an_override_naming_the_text_profile_starts_from_its_defaults() {
        let p =
            RetryPolicy::resolve(None, Some(&json!({"profile": "text", "enabled": true}))).unwrap();
        assert!(p.enabled && p.thresholds.contains_key("overall"));
        assert!(!p.thresholds.contains_key("face"));
    }

    #[test]
    fn a_bad_prompt_template_and_an_empty_ladder_are_named() {
        let err = RetryPolicy::parse(&json!({
            "ladder": [], "prompts": {"revise": "{chapterr}", "reseed": "x"}
        }))
        .unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["ladder", "prompts.reseed", "prompts.revise"]);
    }

    #[test]
    fn an_unknown_strategy_is_rejected_naming_the_ladder() {
        let err = RetryPolicy::parse(&json!({"ladder": ["reseed", "pray"]})).unwrap_err();
        assert!(err.first_field().starts_with("ladder"), "{err}");
    }

    #[test]
    fn a_cost_rule_repeats_its_last_chance_and_rejects_impossible_ones() {
        let p = RetryPolicy::parse(&json!({
            "cost_rule": {"review_cost_gpu_ms": 600000, "fix_chance": [0.39, 0.3, 0.07]}
        }))
        .unwrap();
        let rule = p.cost_rule.unwrap();
        assert_eq!(
            (rule.chance(1), rule.chance(3), rule.chance(9)),
            (0.39, 0.07, 0.07)
        );
        assert!((rule.expected_saving_ms(3) - 42_000.0).abs() < 1e-6);
        let err = RetryPolicy::parse(&json!({
            "cost_rule": {"review_cost_gpu_ms": 1, "fix_chance": [1.5]}
        }))
        .unwrap_err();
        assert_eq!(err.first_field(), "cost_rule.fix_chance[0]");
    }
}
