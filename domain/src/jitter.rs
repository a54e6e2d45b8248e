//! Per-attempt parameter jitter, drawn from a PRNG seeded by the attempt's seed.
//!
//! # Algorithm (version 1)
//!
//! A ChaCha8 stream cipher PRNG is keyed with the attempt seed as 8 little-endian bytes followed
//! by 24 zero bytes (`ChaCha8Rng::from_seed`). For every entry of the policy's `vary`, in
//! ascending order of parameter name, one `u64` is drawn (`x`), whether or not the request has
//! that parameter, so adding a parameter never shifts the others. Then:
//!
//! * `u = (x >> 11) / 2^53` (uniform in `[0, 1)`), `delta = (2u − 1) · range`;
//! * `value = clamp(original + delta, min, max)`, rounded to 4 decimal places (halves away from zero).
//!
//! Parameters that are absent or not numbers are left alone (and not reported as changed).

use crate::params::{ParamChange, Params};
use crate::policy::JitterSpec;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::BTreeMap;

fn rng_for(seed: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Apply `vary` to `original` for an attempt with `seed`. Returns the new parameters (with
/// `seed` set to the attempt seed) and the list of changed parameters.
pub fn apply(
    original: &Params,
    vary: &BTreeMap<String, JitterSpec>,
    seed: u64,
) -> (Params, Vec<ParamChange>) {
    let mut rng = rng_for(seed);
    let mut params = original.clone();
    params.0.insert("seed".to_owned(), Value::from(seed));
    let mut changes = Vec::new();
    for (name, spec) in vary {
        let x = rng.next_u64();
        let Some(orig) = original.number(name) else {
            continue;
        };
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut value = orig + (2.0 * u - 1.0) * spec.range;
        if let Some(lo) = spec.min {
            value = value.max(lo);
        }
        if let Some(hi) = spec.max {
            value = value.min(hi);
        }
        let value = round4(value);
        if let Some(n) = serde_json::Number::from_f64(value) {
            params.0.insert(name.clone(), Value::Number(n));
            changes.push(ParamChange {
                param: name.clone(),
                original: orig,
                value,
            });
        }
    }
    (params, changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RetryPolicy;
    use serde_json::json;

    fn params(v: Value) -> Params {
        Params::parse(&v).unwrap()
    }

    #[test]
    fn jitter_stays_within_the_policy_range() {
        let p = RetryPolicy::default();
        let orig = params(json!({"seed": 1, "cfg_scale": 7.0, "denoise_strength": 0.6}));
        for seed in 0..500 {
            let (_, changes) = apply(&orig, &p.vary, seed);
            for c in changes {
                let r = p.vary[&c.param].range;
                assert!((c.value - c.original).abs() <= r + 1e-9, "{c:?}");
            }
        }
    }

    #[test]
    fn jittered_values_are_clamped_to_the_valid_range() {
        let p = RetryPolicy::default();
        let orig = params(json!({"seed": 1, "cfg_scale": 1.0, "denoise_strength": 0.99}));
        let mut saw_low_clamp = false;
        for seed in 0..200 {
            let (out, _) = apply(&orig, &p.vary, seed);
            let cfg = out.number("cfg_scale").unwrap();
            let dn = out.number("denoise_strength").unwrap();
            assert!((1.0..=30.0).contains(&cfg), "cfg {cfg}");
            assert!((0.0..=1.0).contains(&dn), "denoise {dn}");
            saw_low_clamp |= cfg == 1.0;
        }
        assert!(
            saw_low_clamp,
            "half the draws go below 1.0 and must clamp to it"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_jitter_and_another_seed_another() {
        let p = RetryPolicy::default();
        let orig = params(json!({"seed": 1, "cfg_scale": 7.0, "denoise_strength": 0.6}));
        assert_eq!(apply(&orig, &p.vary, 99), apply(&orig, &p.vary, 99));
        assert_ne!(apply(&orig, &p.vary, 99).1, apply(&orig, &p.vary, 100).1);
    }

    #[test]
    fn jitter_matches_the_documented_golden_values() {
        let p = RetryPolicy::default();
        let orig = params(json!({"seed": 1234, "cfg_scale": 7.0, "denoise_strength": 0.6}));
        let (out, changes) = apply(&orig, &p.vary, 5_760_749_790_915_036);
        assert_eq!(out.seed(), 5_760_749_790_915_036);
        assert_eq!(changes.len(), 2);
        assert_eq!(
            (changes[0].param.as_str(), changes[0].value),
            ("cfg_scale", GOLDEN_CFG)
        );
        assert_eq!(
            (changes[1].param.as_str(), changes[1].value),
            ("denoise_strength", GOLDEN_DENOISE)
        );
    }

    // Cross-checked with an independent ChaCha8 implementation in Python (see README).
    const GOLDEN_CFG: f64 = 7.2014;
    const GOLDEN_DENOISE: f64 = 0.6468;

    #[test]
    fn other_params_are_kept_and_the_seed_is_replaced() {
        let p = RetryPolicy::default();
        let orig = params(json!({"seed": 1, "cfg_scale": 7.0, "sampler": "euler", "steps": 30}));
        let (out, changes) = apply(&orig, &p.vary, 77);
        assert_eq!(out.0["sampler"], "euler");
        assert_eq!(out.0["steps"], 30);
        assert_eq!(out.seed(), 77);
        assert_eq!(
            changes.len(),
            1,
            "denoise_strength is absent, so only cfg_scale changes"
        );
    }
}
