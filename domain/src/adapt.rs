//! Adaptive retries: what each attempt varied, in a form that can be counted, and the choice of
//! the next variation from what fixed the same failure before.
//!
//! Every attempt records a [`Variation`]: its *arms* (`reseed` when no parameter moved, else
//! `<param>+` / `<param>-` for each parameter it moved up or down, or the text strategy it used),
//! the failure kinds it set out to fix (its *targets*: the failures of the draft it started from)
//! and how it was chosen. The store counts arms per scene type × failure kind ([`ArmStats`]); the
//! fixed ladder's symmetric jitter is a randomised experiment, so its records are evidence too.
//!
//! # The choice (algorithm version 1)
//!
//! An `adaptive` rung considers the arms `reseed` and, for each parameter the policy varies and
//! the request sets to a number, `<param>+` (unless at its maximum) and `<param>-` (unless at its
//! minimum). Each arm's evidence is the sum over the attempt's target kinds of the attempts and
//! passes recorded for that kind and arm ([`Evidence`], fetched by an activity, so it is in the
//! workflow history). With less than the policy's `min_evidence` attempts among the candidate
//! arms, the rung plans exactly as `reseed_jitter` does (cold start). Otherwise it samples
//! (Thompson sampling) `θ ~ Beta(1 + passes, 1 + failures)` per arm, in arm-name order, from a
//! ChaCha8 stream keyed like the jitter's but with the attempt seed XOR [`STREAM`], and takes the
//! arm with the highest `θ` (ties: the first name). `Beta(a, b)` for whole `a, b` is
//! `X / (X + Y)` with `X = Σ_a −ln(1 − u)` and `Y = Σ_b −ln(1 − u)`, each `u = (x >> 11) / 2^53`
//! for one drawn `u64` `x` — written out here so the draw never changes with a crate upgrade. A
//! parameter arm then draws one more `u` and moves the parameter by `range · (1 + u) / 2` in its
//! direction from the failed generation's value, clamped to the policy's bounds and rounded to 4
//! decimals; the other parameters stay as they were. Every attempt gets its own derived seed, as
//! on every rung.

use crate::contract::Params;
use crate::params::ParamChange;
use crate::policy::RetryPolicy;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The arm of an attempt that moved no parameter.
pub const RESEED: &str = "reseed";

/// XORed into the attempt seed for the choice's random stream, so it is independent of the
/// attempt's jitter stream.
pub const STREAM: u64 = 0x6164_6170_7469_7665; // "adaptive"

/// How an attempt's variation was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChosenBy {
    /// The fixed ladder's rung (its seed and symmetric jitter).
    #[default]
    Ladder,
    /// An `adaptive` rung with too little evidence: planned as `reseed_jitter`.
    ColdStart,
    /// An `adaptive` rung, from the evidence.
    Adaptive,
}

impl ChosenBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ChosenBy::Ladder => "ladder",
            ChosenBy::ColdStart => "cold_start",
            ChosenBy::Adaptive => "adaptive",
        }
    }
}

/// One parameter an attempt moved, and by how much (its value minus the failed generation's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Move {
    pub param: String,
    pub delta: f64,
}

/// What an attempt varied, in the form insights count.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Variation {
    /// `reseed`, `<param>+` / `<param>-` per moved parameter, or the text strategy.
    pub arms: Vec<String>,
    /// The parameters moved and by how much.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<Move>,
    /// The failure kinds the attempt set out to fix: those of the draft it started from.
    pub targets: Vec<String>,
    pub chosen_by: ChosenBy,
    /// Why this variation (adaptive choices): the evidence it was chosen on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The policy's evidence scope (e.g. a model version) the attempt counts under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The attempt's quality (by the policy's measure) minus that of the draft it started from;
    /// set once it is scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain: Option<f64>,
}

impl Variation {
    /// The variation of an attempt that changed `changes` (a strategy without parameters is
    /// counted under its own name: `text_arm`).
    pub fn of(changes: &[ParamChange], text_arm: Option<&str>) -> Self {
        let moves: Vec<Move> = changes
            .iter()
            .map(|c| Move {
                param: c.param.clone(),
                delta: round4(c.value - c.original),
            })
            .filter(|m| m.delta != 0.0)
            .collect();
        let mut arms: Vec<String> = moves.iter().map(arm_of).collect();
        if let Some(text) = text_arm {
            arms.insert(0, text.to_owned());
        }
        if arms.is_empty() {
            arms.push(RESEED.to_owned());
        }
        Self {
            arms,
            moves,
            ..Self::default()
        }
    }

    /// `cfg_scale −0.4, denoise_strength +0.03`, or the arms when nothing moved.
    pub fn words(&self) -> String {
        if self.moves.is_empty() {
            return self.arms.join(", ");
        }
        self.moves
            .iter()
            .map(|m| {
                let sign = if m.delta < 0.0 { '−' } else { '+' };
                format!("{} {sign}{}", m.param, m.delta.abs())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn arm_of(m: &Move) -> String {
    format!("{}{}", m.param, if m.delta < 0.0 { '-' } else { '+' })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Recorded attempts of one failure kind and arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArmStats {
    pub failure_kind: String,
    pub arm: String,
    pub attempts: u32,
    pub passes: u32,
    /// Sum of the attempts' quality gains (see [`Variation::gain`]).
    pub gain_sum: f64,
}

/// What an adaptive choice asks the store for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceQuery {
    /// The most recent scored attempts of the scene type counted (older evidence fades out).
    pub window: u32,
    /// Only attempts recorded under this scope.
    pub scope: Option<String>,
}

/// The evidence an adaptive choice used: per failure kind and arm, the attempts among the
/// scene type's latest `window` scored attempts (in `scope`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evidence {
    pub rows: Vec<ArmStats>,
}

impl Evidence {
    /// Attempts and passes of `arm` summed over `kinds`.
    pub fn of(&self, arm: &str, kinds: &[String]) -> (u32, u32) {
        self.rows
            .iter()
            .filter(|r| r.arm == arm && kinds.contains(&r.failure_kind))
            .fold((0, 0), |(n, p), r| {
                (n.saturating_add(r.attempts), p.saturating_add(r.passes))
            })
    }
}

/// What an adaptive rung decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Too little evidence: plan as `reseed_jitter` does.
    ColdStart { why: String },
    /// Generate with `params` (the failed generation's, with at most one parameter moved).
    Arm {
        arm: String,
        params: Params,
        changes: Vec<ParamChange>,
        why: String,
    },
}

/// The arms an adaptive rung chooses among for `original` under `policy`, in name order.
pub fn candidates(policy: &RetryPolicy, original: &Params) -> Vec<String> {
    let mut arms = vec![RESEED.to_owned()];
    for (param, spec) in &policy.vary {
        let Some(v) = original.number(param) else {
            continue;
        };
        if spec.range <= 0.0 {
            continue;
        }
        if spec.max.is_none_or(|max| v < max) {
            arms.push(format!("{param}+"));
        }
        if spec.min.is_none_or(|min| v > min) {
            arms.push(format!("{param}-"));
        }
    }
    arms.sort();
    arms
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Σ_n −ln(1 − u)`: a Gamma(n, 1) draw for whole `n`.
fn gamma(n: u32, rng: &mut ChaCha8Rng) -> f64 {
    (0..n).map(|_| -(1.0 - unit(rng)).ln()).sum()
}

fn beta(a: u32, b: u32, rng: &mut ChaCha8Rng) -> f64 {
    let x = gamma(a, rng);
    let y = gamma(b, rng);
    if x + y == 0.0 { 0.5 } else { x / (x + y) }
}

/// The variation of an adaptive attempt with seed `seed` that sets out to fix `targets`, given
/// the evidence (see the module documentation).
pub fn choose(
    policy: &RetryPolicy,
    original: &Params,
    targets: &[String],
    evidence: &Evidence,
    seed: u64,
) -> Choice {
    let arms = candidates(policy, original);
    let stats: Vec<(u32, u32)> = arms.iter().map(|a| evidence.of(a, targets)).collect();
    let seen: u32 = stats.iter().map(|(n, _)| *n).sum();
    let kinds = targets.join(", ");
    if seen < policy.adaptive.min_evidence {
        return Choice::ColdStart {
            why: format!(
                "{seen} earlier attempts on {kinds} (fewer than {}): reseed with jitter",
                policy.adaptive.min_evidence
            ),
        };
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(seed ^ STREAM).to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut best: Option<(usize, f64)> = None;
    for (i, (n, p)) in stats.iter().enumerate() {
        let theta = beta(1 + p, 1 + (n - p.min(n)), &mut rng);
        if best.is_none_or(|(_, t)| theta > t) {
            best = Some((i, theta));
        }
    }
    let (i, theta) = best.unwrap_or((0, 0.0));
    let arm = arms[i].clone();
    let (n, p) = stats[i];
    let why = format!(
        "{arm}: fixed {kinds} in {p} of {n} earlier attempts (Thompson draw {theta:.2}; \
         {seen} attempts over {} arms)",
        arms.len()
    );
    let mut params = original.clone();
    params.0.insert("seed".to_owned(), Value::from(seed));
    let mut changes = Vec::new();
    if let Some((param, up)) = arm
        .strip_suffix('+')
        .map(|p| (p, true))
        .or_else(|| arm.strip_suffix('-').map(|p| (p, false)))
        && let (Some(spec), Some(from)) = (policy.vary.get(param), original.number(param))
    {
        let size = spec.range * (1.0 + unit(&mut rng)) / 2.0;
        let mut value = if up { from + size } else { from - size };
        if let Some(min) = spec.min {
            value = value.max(min);
        }
        if let Some(max) = spec.max {
            value = value.min(max);
        }
        let value = round4(value);
        params.0.insert(param.to_owned(), Value::from(value));
        changes.push(ParamChange {
            param: param.to_owned(),
            original: from,
            value,
        });
    }
    Choice::Arm {
        arm,
        params,
        changes,
        why,
    }
}

/// What the store's counts say about one failure kind and arm, for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Insight {
    pub failure_kind: String,
    pub arm: String,
    pub attempts: u32,
    pub passes: u32,
    /// passes / attempts.
    pub pass_rate: f64,
    /// The 95 % Wilson score interval of the pass rate.
    pub low: f64,
    pub high: f64,
    /// Mean quality gain of the attempts.
    pub mean_gain: f64,
}

/// The 95 % Wilson score interval of `passes` in `attempts` (0..=1; `(0, 1)` with no attempts).
pub fn wilson(passes: u32, attempts: u32) -> (f64, f64) {
    if attempts == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = f64::from(attempts);
    let p = f64::from(passes.min(attempts)) / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let margin = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - margin) / denom).max(0.0),
        ((centre + margin) / denom).min(1.0),
    )
}

/// What a scene type's records say, as `retake insights` and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Insights {
    pub scene_type: String,
    /// The latest scored attempts counted.
    pub window: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Per failure kind, every arm tried, best pass rate first.
    pub insights: Vec<Insight>,
}

/// Insights from the store's counts, best pass rate first within each failure kind.
pub fn insights(rows: &[ArmStats]) -> Vec<Insight> {
    let mut out: Vec<Insight> = rows
        .iter()
        .filter(|r| r.attempts > 0)
        .map(|r| {
            let (low, high) = wilson(r.passes, r.attempts);
            Insight {
                failure_kind: r.failure_kind.clone(),
                arm: r.arm.clone(),
                attempts: r.attempts,
                passes: r.passes,
                pass_rate: f64::from(r.passes) / f64::from(r.attempts),
                low,
                high,
                mean_gain: r.gain_sum / f64::from(r.attempts),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.failure_kind
            .cmp(&b.failure_kind)
            .then(b.pass_rate.total_cmp(&a.pass_rate))
            .then(b.attempts.cmp(&a.attempts))
            .then(a.arm.cmp(&b.arm))
    });
    out
}

/// Per failure kind, how many attempts of each arm and how many passed, from `attempts`'
/// variations (the same counts the store makes, for the simulator bench and tests).
pub fn tally<'a>(
    attempts: impl IntoIterator<Item = &'a crate::contract::AttemptRecord>,
) -> Vec<ArmStats> {
    let mut by: BTreeMap<(String, String), ArmStats> = BTreeMap::new();
    for a in attempts {
        let Some(v) = &a.variation else { continue };
        if !matches!(
            a.status,
            crate::contract::AttemptStatus::Passed | crate::contract::AttemptStatus::Failed
        ) {
            continue;
        }
        for kind in &v.targets {
            for arm in &v.arms {
                let s = by
                    .entry((kind.clone(), arm.clone()))
                    .or_insert_with(|| ArmStats {
                        failure_kind: kind.clone(),
                        arm: arm.clone(),
                        attempts: 0,
                        passes: 0,
                        gain_sum: 0.0,
                    });
                s.attempts += 1;
                s.passes += u32::from(a.passed);
                s.gain_sum += v.gain.unwrap_or(0.0);
            }
        }
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests;
