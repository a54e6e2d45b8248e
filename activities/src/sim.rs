//! The simulator: the embedded default backend for `generate` and `score_qa`.
//!
//! Deterministic for a given (segment, seed, params), so runs are reproducible and a crashed attempt
//! re-run gives the same answer. It exists to make retry behaviour observable, not to pass.
//!
//! # Failure model
//!
//! Every segment has a hidden profile derived from `SHA-256("retake/sim/profile\0" ‖ segment_id)`:
//!
//! * **stochastic face failures** (most segments): `face = lo + 0.7·u − 0.04·|cfg_scale − 7.5|`,
//!   with `u` uniform per (segment, seed) and `lo` between 0.15 and 0.35 per segment. Against the
//!   default threshold 0.6 a fresh seed passes about 36–64 % of the time, so a retry often fixes it.
//! * **systematic face failures** (15 % of segments): `face = 0.2 + 0.25·u`, never above 0.45, so no
//!   seed fixes it and the segment is escalated.
//! * **directional face failures** (a quarter of the segments that are neither systematic, so
//!   about 19 % of all): the scene type's model is biased, and the face only comes out right when
//!   one parameter sits on the right side of where the failed generation had it. Which parameter
//!   and side is a property of the *scene type* (`SHA-256("retake/sim/bias\0" ‖ scene_type)`
//!   picks one of `cfg_scale ≤ 7.2`, `cfg_scale ≥ 7.8`, `denoise_strength ≥ 0.63`,
//!   `denoise_strength ≤ 0.57`; [`Simulator::bias`]): inside that region the face scores as a
//!   stochastic segment's, outside it `face = floor + 0.25·u` (below 0.6). The fixed ladder's
//!   symmetric jitter (±0.5 CFG, ±0.05 denoise from 7.5 / 0.6) lands in the region with
//!   probability 0.2 per attempt, only on the attempts that jitter; an attempt that moves the
//!   right parameter the right way by half to all of its range lands there with 0.8. So these
//!   segments are fixed mostly by a variation that learned the direction.
//! * **systematic motion failures** (10 % of segments): `motion = 0.1 + 0.3·u`, below the default
//!   0.5 threshold whatever the seed; other segments get `motion = 0.55 + 0.4·u`.
//!
//! Scores are rounded to 3 decimals. Generation "runs" on a simulated GPU for `gpu_ms`
//! (default 300 ms, `RETAKE_SIM_GPU_MS` overrides it) in 10 heartbeated steps, resuming from the
//! last checkpoint when an attempt is re-run after a crash.

use crate::io::{GenerateRequest, Generated, ScoreRequest, Scored};
use crate::ports::{BackendError, GenerationBackend, Progress, QaScorer};
use async_trait::async_trait;
use retake_domain::contract::{Params, Scores};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Default simulated GPU time per attempt.
pub const DEFAULT_GPU_MS: u64 = 300;
const STEPS: u32 = 10;

/// Simulated generation and QA.
#[derive(Debug, Clone)]
pub struct Simulator {
    gpu_ms: u64,
    qa_ms: u64,
    /// Every generation fails after its first step with this infrastructure error (a broken
    /// GPU); `None`: a healthy machine.
    broken: Option<String>,
}

impl Default for Simulator {
    fn default() -> Self {
        Self::new(DEFAULT_GPU_MS)
    }
}

/// The hidden profile of a segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub systematic_face: bool,
    pub systematic_motion: bool,
    /// Its face passes only inside its scene type's [`Bias`] region.
    pub directional: bool,
    /// Lowest face score of a stochastic segment (0.15..0.35).
    pub face_floor: f64,
}

fn unit(parts: &[&[u8]]) -> f64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn round3(x: f64) -> f64 {
    (x.clamp(0.0, 1.0) * 1000.0).round() / 1000.0
}

/// Where a scene type's directional segments come out right: `param` at or beyond `bound`, on the
/// side `up` says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bias {
    pub param: &'static str,
    pub up: bool,
    pub bound: f64,
}

impl Bias {
    /// Whether `params` (the default 7.5 CFG / 0.6 denoise when absent) lie in the region.
    pub fn holds(&self, params: &Params) -> bool {
        let default = if self.param == "cfg_scale" { 7.5 } else { 0.6 };
        let v = params.number(self.param).unwrap_or(default);
        if self.up {
            v >= self.bound - 1e-9
        } else {
            v <= self.bound + 1e-9
        }
    }

    /// `cfg_scale-` / `denoise_strength+`: the adaptive arm that moves into the region.
    pub fn arm(&self) -> String {
        format!("{}{}", self.param, if self.up { '+' } else { '-' })
    }
}

impl Simulator {
    pub fn new(gpu_ms: u64) -> Self {
        Self {
            gpu_ms,
            qa_ms: 0,
            broken: None,
        }
    }

    /// A broken machine: every generation fails after its first step with the infrastructure
    /// error `message` (e.g. `CUDA out of memory`), billed the step it ran
    /// (`RETAKE_SIM_INFRASTRUCTURE_FAILURE`).
    pub fn broken(mut self, message: impl Into<String>) -> Self {
        self.broken = Some(message.into());
        self
    }

    /// Scoring takes `qa_ms` (default 0; `RETAKE_SIM_QA_MS`), e.g. to observe a crash mid-QA.
    pub fn with_qa_ms(mut self, qa_ms: u64) -> Self {
        self.qa_ms = qa_ms;
        self
    }

    /// Simulated GPU time per attempt in milliseconds.
    pub fn gpu_ms(&self) -> u64 {
        self.gpu_ms
    }

    /// The hidden profile of `segment_id`.
    pub fn profile(segment_id: &str) -> Profile {
        let s = segment_id.as_bytes();
        let systematic_face = unit(&[b"retake/sim/profile", s, b"face"]) < 0.15;
        let systematic_motion = unit(&[b"retake/sim/profile", s, b"motion"]) < 0.10;
        Profile {
            systematic_face,
            systematic_motion,
            directional: !systematic_face
                && !systematic_motion
                && unit(&[b"retake/sim/profile", s, b"direction"]) < 0.25,
            face_floor: 0.15 + 0.2 * unit(&[b"retake/sim/profile", s, b"floor"]),
        }
    }

    /// The region where the scene type's directional segments pass (see the module docs).
    pub fn bias(scene_type: &str) -> Bias {
        let u = unit(&[b"retake/sim/bias", scene_type.as_bytes()]);
        match (u * 4.0) as u32 {
            0 => Bias {
                param: "cfg_scale",
                up: false,
                bound: 7.2,
            },
            1 => Bias {
                param: "cfg_scale",
                up: true,
                bound: 7.8,
            },
            2 => Bias {
                param: "denoise_strength",
                up: true,
                bound: 0.63,
            },
            _ => Bias {
                param: "denoise_strength",
                up: false,
                bound: 0.57,
            },
        }
    }

    /// QA scores of the output generated for (scene type, segment, seed, params).
    pub fn scores(scene_type: &str, segment_id: &str, seed: u64, params: &Params) -> Scores {
        let profile = Self::profile(segment_id);
        let seed_bytes = seed.to_be_bytes();
        let s = segment_id.as_bytes();
        let u_face = unit(&[b"retake/sim/face", s, &seed_bytes]);
        let u_motion = unit(&[b"retake/sim/motion", s, &seed_bytes]);
        let cfg = params.number("cfg_scale").unwrap_or(7.5);
        let face = if profile.systematic_face {
            0.2 + 0.25 * u_face
        } else if profile.directional && !Self::bias(scene_type).holds(params) {
            profile.face_floor + 0.25 * u_face
        } else {
            profile.face_floor + 0.7 * u_face - 0.04 * (cfg - 7.5).abs()
        };
        let motion = if profile.systematic_motion {
            0.1 + 0.3 * u_motion
        } else {
            0.55 + 0.4 * u_motion
        };
        Scores::from([
            ("face".to_owned(), round3(face)),
            ("motion".to_owned(), round3(motion)),
        ])
    }
}

#[async_trait]
impl GenerationBackend for Simulator {
    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let step_ms = self.gpu_ms / u64::from(STEPS);
        if let Some(message) = &self.broken {
            tokio::time::sleep(Duration::from_millis(step_ms)).await;
            return Err(BackendError::Infrastructure(format!(
                "{message} (simulated GPU of segment {}, seed {})",
                req.segment_id, req.seed
            ))
            .after(step_ms));
        }
        for done in progress.resume_from().min(STEPS)..STEPS {
            // At 0 GPU ms nothing waits: even a zero sleep costs a timer tick (~1 ms) per step.
            if step_ms > 0 {
                tokio::time::sleep(Duration::from_millis(step_ms)).await;
            }
            // Stopped (an abort, the budget): the simulated GPU ran every step so far.
            progress
                .checkpoint(done + 1, STEPS)
                .await
                .map_err(|e| e.after(u64::from(done + 1) * step_ms))?;
        }
        Ok(Generated {
            output_uri: format!("sim://{}/{}.mp4", req.segment_id, req.seed),
            gpu_ms: self.gpu_ms,
            worker: None,
        })
    }
}

#[async_trait]
impl QaScorer for Simulator {
    async fn score(&self, req: &ScoreRequest) -> Result<Scored, BackendError> {
        if self.qa_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.qa_ms)).await;
        }
        Ok(Scored {
            scores: Self::scores(
                req.scene_type.as_str(),
                req.segment_id.as_str(),
                req.seed,
                &req.params,
            ),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retake_domain::contract::QaScores;
    use retake_domain::policy::RetryPolicy;
    use retake_domain::seed::attempt_seeds;
    use retake_domain::select::gate;
    use serde_json::{Value, json};

    fn params(seed: u64) -> Params {
        Params::parse(&json!({"seed": seed, "cfg_scale": 7.5})).unwrap()
    }

    #[test]
    fn scores_are_deterministic_per_segment_seed_and_params() {
        assert_eq!(
            Simulator::scores("dialogue", "7", 11, &params(11)),
            Simulator::scores("dialogue", "7", 11, &params(11))
        );
        assert_ne!(
            Simulator::scores("dialogue", "7", 11, &params(11)),
            Simulator::scores("dialogue", "7", 12, &params(12))
        );
    }

    #[test]
    fn a_directional_segment_passes_only_inside_its_scene_types_region() {
        let seg = (0..200)
            .map(|i| format!("s{i}"))
            .find(|s| Simulator::profile(s).directional)
            .expect("about a fifth of segments are directional");
        for scene in ["dialogue", "action", "crowd", "closeup"] {
            let bias = Simulator::bias(scene);
            let (inside, outside) = if bias.param == "cfg_scale" {
                let near = if bias.up { 7.9 } else { 7.1 };
                (json!({"cfg_scale": near}), json!({"cfg_scale": 7.5}))
            } else {
                let near = if bias.up { 0.64 } else { 0.56 };
                (
                    json!({"denoise_strength": near}),
                    json!({"denoise_strength": 0.6}),
                )
            };
            let with = |extra: &Value, seed: u64| {
                let mut p = json!({"seed": seed, "cfg_scale": 7.5, "denoise_strength": 0.6});
                for (k, v) in extra.as_object().unwrap() {
                    p[k] = v.clone();
                }
                Params::parse(&p).unwrap()
            };
            let best = |extra: &Value| {
                (0..200)
                    .map(|s| Simulator::scores(scene, &seg, s, &with(extra, s))["face"])
                    .fold(0.0, f64::max)
            };
            assert!(best(&outside) < 0.6, "{scene}: outside {bias:?}");
            assert!(best(&inside) >= 0.6, "{scene}: inside {bias:?}");
        }
    }

    #[test]
    fn a_systematic_face_segment_fails_for_every_seed() {
        let seg = (0..200)
            .map(|i| format!("s{i}"))
            .find(|s| Simulator::profile(s).systematic_face)
            .expect("15 % of segments are systematic");
        for seed in 0..100 {
            assert!(Simulator::scores("dialogue", &seg, seed, &params(seed))["face"] <= 0.45);
        }
    }

    #[test]
    fn the_failure_mix_matches_the_documented_model() {
        let policy = RetryPolicy {
            enabled: true,
            ..RetryPolicy::default()
        };
        let (mut sys_face, mut sys_motion, mut fixed, mut stochastic) = (0, 0, 0, 0);
        for i in 0..1000 {
            let seg = format!("seg-{i}");
            let p = Simulator::profile(&seg);
            sys_face += usize::from(p.systematic_face);
            sys_motion += usize::from(p.systematic_motion);
            if p.systematic_face || p.systematic_motion || p.directional {
                continue;
            }
            stochastic += 1;
            let passes = attempt_seeds(&seg, 1, 3, 53).into_iter().any(|s| {
                let qa = QaScores {
                    scores: Simulator::scores("dialogue", &seg, s, &params(s)),
                    failures: vec![],
                    ..Default::default()
                };
                gate(&policy, &qa).is_empty()
            });
            fixed += usize::from(passes);
        }
        assert!((100..200).contains(&sys_face), "systematic face {sys_face}");
        let directional = (0..1000)
            .filter(|i| Simulator::profile(&format!("seg-{i}")).directional)
            .count();
        assert!(
            (140..240).contains(&directional),
            "directional {directional}"
        );
        assert!(
            (60..140).contains(&sys_motion),
            "systematic motion {sys_motion}"
        );
        let rate = fixed as f64 / stochastic as f64;
        assert!(
            (0.7..0.97).contains(&rate),
            "three seeds fix {rate} of stochastic segments"
        );
    }
}
