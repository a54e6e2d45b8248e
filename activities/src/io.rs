//! Inputs and outputs of the activities. They cross Temporal as JSON, so a worker written in
//! another language can implement the same activities.

use retake_domain::adapt::EvidenceQuery;
use retake_domain::contract::{AttemptRecord, Params, QaScores, RetryResult};
use retake_domain::strategy::Strategy;
use retake_domain::{ProjectId, SceneType, SegmentId};
use serde::{Deserialize, Serialize};

/// Identifies one attempt of one workflow run. Every side effect of an attempt (reservation,
/// generation, record) is keyed by it, so a re-run activity never acts twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptKey {
    pub workflow_id: String,
    pub run_id: String,
    pub attempt: u32,
}

impl AttemptKey {
    /// `<workflow id>/<run id>/<attempt>`: the idempotency key sent to backends.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.workflow_id, self.run_id, self.attempt)
    }
}

/// Input of `load_settings`: the scene type whose settings a run plans with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadPolicy {
    pub scene_type: SceneType,
}

/// Input of `place_generation`: where to re-run a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceGeneration {
    /// The workflow's task queue (workers register under it).
    pub task_queue: String,
    /// Workers not to use: those the generation already failed on.
    pub avoid: Vec<String>,
    /// The worker to use when it qualifies (policy `same_worker`).
    pub prefer: Option<String>,
}

/// Output of `place_generation`: a worker and its own generate queue, or none qualified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub worker: Option<String>,
    pub queue: Option<String>,
}

/// Input of `load_evidence`: which of the scene type's records an adaptive attempt chooses from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadEvidence {
    pub scene_type: SceneType,
    pub query: EvidenceQuery,
}

/// Output of `load_settings`: what a run plans with, read once at its start (and so in its history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The scene type's stored policy as JSON (validated by the workflow), or `None`.
    pub policy: Option<serde_json::Value>,
    /// The widest seed the scene type's generator really uses, in bits: the workflow derives
    /// seeds below `2^min(policy seed_bits, this)`, so the seed it records is the seed the backend
    /// generated with (llama.cpp, for one, keeps only the low 32 bits).
    pub seed_bits: u32,
    /// The parameters the scene type's generator sends on, when it sends only some (see
    /// `GenerationBackend::params_taken`); absent: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_taken: Option<Vec<String>>,
}

/// GPU time a generation used before it stopped (cancelled, failed, or stopped by the budget),
/// as the backend reported it; the `details` of the activity's failure or cancellation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Used {
    pub gpu_ms: u64,
    /// The worker that ran it: a cancellation carries no worker identity of Temporal's, and an
    /// aborted attempt's record must still say where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// What it produced before it stopped, when it finished anyway (an abort landing in
    /// ComfyUI's last node pays for a finished prompt, whose output is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_uri: Option<String>,
}

/// The reservation `reserve_attempt` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveBudget {
    pub key: AttemptKey,
    pub project_id: ProjectId,
    /// The policy's estimate: the least reserved.
    pub gpu_ms: u64,
    /// The scene type whose recorded attempts the reservation learns from (the workflow always
    /// names it; absent: the estimate is reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scene_type: Option<SceneType>,
}

/// Input of `reserve_attempt`: a reservation, and whether the generation would run eagerly on
/// this worker if it has a GPU free.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReserveAttempt {
    pub budget: ReserveBudget,
    pub eager: bool,
}

/// Output of `reserve_attempt`: the reservation, and whether this worker promised a GPU to the
/// attempt's generation (it is not cooling down and had one free), so the workflow schedules it
/// on its own task queue for the server to hand back at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedAttempt {
    pub reservation: Reservation,
    pub eager: bool,
}

/// A reservation's answer (in `reserve_attempt`'s output). A refusal is a normal result, not an
/// error: retrying it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reservation {
    Granted {
        gpu_ms: u64,
    },
    Refused {
        limit_ms: u64,
        /// Reserved plus spent when the reservation was refused.
        committed_ms: u64,
        requested_ms: u64,
    },
}

/// Input of `generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub key: AttemptKey,
    pub segment_id: SegmentId,
    pub scene_type: SceneType,
    pub seed: u64,
    pub params: Params,
    /// The ladder's strategy (the workflow always sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The prompt of a text strategy (`revise`, `revise_with_feedback`, `partial_rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The draft a text strategy revises (a reference, never the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revise_uri: Option<String>,
    /// The project whose budget the attempt's reservation is held against, and how much it
    /// holds: the activity raises the reservation as the GPU time grows past it, and stops the
    /// attempt when the budget refuses (the workflow always sends it; absent: the generation
    /// is not metered, as when an adapter is exercised on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<HeldBudget>,
    /// Scheduled on the workflow's own task queue for the worker that promised it a GPU
    /// (`reserve_attempt`); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eager: bool,
    /// Which run of the attempt's generation this is: 0 the first, n after n runs failed on
    /// their machine and were re-run (policy `placement`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl GenerateRequest {
    /// The key backends deduplicate this run by: the attempt's key, and `/run-<n>` for a re-run.
    /// A re-run is a new job, not the failed one found again; and what an adapter finds of its
    /// own earlier tries under this key (a Temporal retry of the same run, a worker that died
    /// mid-prompt) belongs to this run alone, since the workflow bills each failed run itself.
    pub fn idempotency_key(&self) -> String {
        match self.run {
            0 => self.key.idempotency_key(),
            n => format!("{}/run-{}", self.key.idempotency_key(), n + 1),
        }
    }
}

/// The reservation an attempt generates under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBudget {
    pub project_id: ProjectId,
    pub reserved_ms: u64,
}

/// Output of `generate`: a reference to the output (never the bytes) and the GPU time used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub output_uri: String,
    pub gpu_ms: u64,
    /// The worker that generated it (set by the `generate` activity, not by backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// Input of `score_qa`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreRequest {
    pub key: AttemptKey,
    pub segment_id: SegmentId,
    pub scene_type: SceneType,
    pub seed: u64,
    pub params: Params,
    pub output_uri: String,
}

/// Output of `score_qa`: scores by metric and failures found by the scorer itself. A low score is
/// a normal result; the workflow applies the policy's thresholds.
pub type Scored = QaScores;

/// Input of `record_attempt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordAttempt {
    pub key: AttemptKey,
    pub segment_id: SegmentId,
    pub project_id: ProjectId,
    pub scene_type: SceneType,
    pub record: AttemptRecord,
}

/// Input of `record_settled`: the attempt to record and the GPU time its reservation settles to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordSettled {
    pub attempt: RecordAttempt,
    pub gpu_ms: u64,
}

/// Human review state of a run, as stored (decided by the workflow's decision core).
pub use retake_domain::review::Review;

/// Input of `record_outcome`: how the run ended, or where it stands while a review is pending
/// (the same row is updated by later calls of the same run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordOutcome {
    pub workflow_id: String,
    pub run_id: String,
    pub result: RetryResult,
    #[serde(default)]
    pub review: Review,
}
