//! Planning with the strategy ladder: which strategy attempt `k` uses, what it generates with
//! (seed, jitter, the draft it revises and its prompt) and the user-intervention message that ends
//! a ladder.

use crate::adapt::{self, ChosenBy, Evidence, Variation};
use crate::contract::{AttemptRecord, AttemptStatus, RetryRequest};
use crate::jitter;
use crate::plan::{self, AttemptPlan};
use crate::policy::RetryPolicy;
use crate::prompt::{self, PromptContext};
use crate::quality;
use crate::scores::CategoryScore;
use crate::seed;
use crate::select;
use crate::stop::Stop;
use crate::strategy::{self, Strategy};
use serde_json::Value;
use std::collections::BTreeMap;

/// A draft a text strategy can revise: the failed generation (attempt 0) or a scored attempt.
#[derive(Debug, Clone, PartialEq)]
struct Draft<'a> {
    attempt: u32,
    quality: f64,
    overall: Option<f64>,
    breakdown: &'a [CategoryScore],
    uri: Option<String>,
}

/// The next attempt and its plan, or why to stop: [`plan::next`] plus the ladder. Running out of
/// attempts, or reaching a `user_intervention` rung, stops with [`Stop::UserIntervention`]. A
/// policy's cost rule stops before an attempt expected to save less GPU time than it costs. A
/// round a reviewer started with `retry_with` (`round_start` > 0) climbs the ladder from its first
/// rung again; seeds still follow the attempt number, so they never repeat.
pub fn next(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    round_start: u32,
) -> Result<AttemptPlan, Stop> {
    let k = match plan::next(policy, attempts, round_start) {
        Ok(k) => k,
        Err(Stop::AttemptsUsed) => {
            let k = plan::made(attempts);
            return Err(intervention(req, policy, attempts, k.saturating_add(1)));
        }
        Err(stop) => return Err(stop),
    };
    if let Some(rule) = &policy.cost_rule {
        let saving_ms = rule.expected_saving_ms(k);
        if saving_ms < policy.est_gpu_ms_per_attempt as f64 {
            return Err(Stop::NotWorthIt {
                attempt: k,
                chance: rule.chance(k),
                cost_ms: policy.est_gpu_ms_per_attempt,
                saving_ms,
            });
        }
    }
    match strategy::rung(&policy.ladder, k - round_start.min(k - 1)) {
        Strategy::UserIntervention => Err(intervention(req, policy, attempts, k)),
        s => Ok(plan_attempt(req, policy, attempts, k, s)),
    }
}

/// Seed, parameters and (for text strategies) the draft and prompt of attempt `k`.
pub fn plan_attempt(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    k: u32,
    strategy: Strategy,
) -> AttemptPlan {
    let seed = seed::attempt_seed(
        req.segment_id.as_str(),
        req.params.seed(),
        k,
        policy.seed_bits,
    );
    let no_jitter = BTreeMap::new();
    let vary = if strategy.jitters() {
        &policy.vary
    } else {
        &no_jitter
    };
    let (params, jitter) = jitter::apply(&req.params, vary, seed);
    let (targets, base_quality) = state(req, policy, attempts);
    let mut variation = Variation::of(&jitter, strategy.revises().then_some(strategy.as_str()));
    variation.targets = targets;
    variation.scope = policy.adaptive.scope.clone();
    if strategy == Strategy::Adaptive {
        // Until `adapt` sees the evidence, the rung is `reseed_jitter`.
        variation.chosen_by = ChosenBy::ColdStart;
        variation.why = Some("no evidence was read: reseed with jitter".to_owned());
    }
    let mut plan = AttemptPlan {
        attempt: k,
        seed,
        params,
        original_params: req.params.clone(),
        jitter,
        strategy: Some(strategy),
        prompt: None,
        revises: None,
        revise_uri: None,
        note: None,
        variation: Some(variation),
        base_quality,
    };
    if strategy.revises() {
        let base = best_draft(req, policy, attempts);
        let ctx = context(req, policy, attempts, k, &base);
        let mut chosen = template(policy, strategy);
        // A template built on the category breakdown would be rendered with holes (`?`, empty
        // feedback) for a draft the scorer gave none: revise without it, and say so.
        if base.breakdown.is_empty() && chosen.as_deref().is_some_and(prompt::uses_breakdown) {
            chosen = template(policy, Strategy::Revise)
                .filter(|t| !prompt::uses_breakdown(t))
                .or_else(|| {
                    prompt::default_template(policy.language, policy.profile, Strategy::Revise)
                        .map(str::to_owned)
                });
            plan.note = Some(format!(
                "{strategy} needs the scorer's category breakdown and draft {} has none: \
                 used the revise prompt instead",
                base.attempt
            ));
        }
        plan.prompt = chosen.map(|t| prompt::render(&t, policy.language, &ctx));
        plan.revises = Some(base.attempt);
        plan.revise_uri = base.uri;
    }
    plan
}

/// An `adaptive` attempt planned by [`next`] (as `reseed_jitter`), re-planned with the evidence:
/// its parameters, jitter and variation as [`adapt::choose`] decides. Any other plan is returned
/// as it is.
pub fn adapt(policy: &RetryPolicy, mut plan: AttemptPlan, evidence: &Evidence) -> AttemptPlan {
    if plan.strategy != Some(Strategy::Adaptive) {
        return plan;
    }
    let Some(variation) = plan.variation.as_mut() else {
        return plan;
    };
    match adapt::choose(
        policy,
        &plan.original_params,
        &variation.targets,
        evidence,
        plan.seed,
    ) {
        adapt::Choice::ColdStart { why } => variation.why = Some(why),
        adapt::Choice::Arm {
            arm,
            params,
            changes,
            why,
        } => {
            let mut chosen = Variation::of(&changes, None);
            if chosen.arms != [arm.clone()] {
                // A parameter arm clamped back to where it was moves nothing: a reseed.
                chosen.arms = vec![arm];
            }
            chosen.targets = std::mem::take(&mut variation.targets);
            chosen.scope = variation.scope.take();
            chosen.chosen_by = ChosenBy::Adaptive;
            chosen.why = Some(why);
            *variation = chosen;
            plan.params = params;
            plan.jitter = changes;
        }
    }
    plan
}

/// The failure kinds an attempt sets out to fix and the quality of the draft it starts from: the
/// latest scored attempt's (its retryable failures), else the failed generation's.
fn state(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
) -> (Vec<String>, f64) {
    let original = || {
        let scores = quality::normalise(req.failed_qa.clone()).scores;
        (&req.failed_qa.failures, select::quality(policy, &scores))
    };
    let (failures, base) = attempts
        .iter()
        .rev()
        .find(|a| scored(a) && !a.failures.is_empty())
        .map_or_else(original, |a| {
            (&a.failures, select::quality(policy, &a.scores))
        });
    let mut targets: Vec<String> = policy
        .retryable(failures)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        targets.clone_from(failures);
    }
    targets.sort();
    targets.dedup();
    (targets, base)
}

/// The escalation that ends the ladder before attempt `k`, with the user-intervention message.
pub fn intervention(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    k: u32,
) -> Stop {
    let base = best_draft(req, policy, attempts);
    let ctx = context(req, policy, attempts, k, &base);
    let message = template(policy, Strategy::UserIntervention)
        .map(|t| prompt::render(&t, policy.language, &ctx))
        .unwrap_or_default();
    Stop::UserIntervention {
        attempt: k,
        message,
    }
}

fn template(policy: &RetryPolicy, strategy: Strategy) -> Option<String> {
    policy.prompts.get(&strategy).cloned().or_else(|| {
        prompt::default_template(policy.language, policy.profile, strategy).map(str::to_owned)
    })
}

fn context(
    req: &RetryRequest,
    policy: &RetryPolicy,
    attempts: &[AttemptRecord],
    k: u32,
    base: &Draft<'_>,
) -> PromptContext {
    let chapter = match req.params.0.get("chapter") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => req.segment_id.to_string(),
    };
    let original = quality::normalise(req.failed_qa.clone()).scores;
    let best_score = policy
        .best_words(attempts.iter().filter(|a| scored(a)).map(|a| &a.scores))
        .or_else(|| policy.best_words(std::iter::once(&original)))
        .unwrap_or_else(|| "?".to_owned());
    PromptContext {
        chapter,
        segment: req.segment_id.to_string(),
        threshold: policy.threshold_words(),
        score: base.overall,
        breakdown: base.breakdown.to_vec(),
        attempt: k,
        attempts: u32::try_from(attempts.len()).unwrap_or(u32::MAX),
        best_score,
    }
}

fn scored(a: &AttemptRecord) -> bool {
    matches!(a.status, AttemptStatus::Passed | AttemptStatus::Failed)
}

/// The best draft so far by the policy's quality measure, the later one on a tie (the most
/// refined); the failed generation the retry started from counts as attempt 0, its output taken
/// from `params.output_uri` when the pipeline gave one.
fn best_draft<'a>(
    req: &'a RetryRequest,
    policy: &RetryPolicy,
    attempts: &'a [AttemptRecord],
) -> Draft<'a> {
    let original_scores = quality::normalise(req.failed_qa.clone()).scores;
    let original = Draft {
        attempt: 0,
        quality: select::quality(policy, &original_scores),
        overall: quality::overall(&original_scores),
        breakdown: &req.failed_qa.breakdown,
        uri: req
            .params
            .0
            .get("output_uri")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    attempts
        .iter()
        .filter(|a| scored(a))
        .map(|a| Draft {
            attempt: a.attempt,
            quality: select::quality(policy, &a.scores),
            overall: quality::overall(&a.scores),
            breakdown: &a.breakdown,
            uri: a.output_uri.clone(),
        })
        .fold(
            original,
            |best, d| {
                if d.quality >= best.quality { d } else { best }
            },
        )
}

#[cfg(test)]
mod tests;
