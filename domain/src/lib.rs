//! Pure, deterministic retry planning for retake.
//!
//! Everything that decides *what* a `SegmentRetryWorkflow` does lives here as plain functions over
//! plain values: the retry policy and its validation, seed derivation, parameter jitter, the quality
//! gate, best-of-N selection and the report text. Nothing here reads a clock, the environment or an
//! unseeded random source, so the workflow can call it freely and replay stays deterministic.

pub mod adapt;
pub mod budget;
pub mod contract;
pub mod error;
pub mod event;
pub mod ids;
pub mod jitter;
pub mod ladder;
pub mod machine;
pub mod parallel;
pub mod params;
pub mod plan;
pub mod policy;
pub mod prompt;
pub mod quality;
pub mod report;
pub mod review;
pub mod scores;
pub mod seed;
pub mod select;
pub mod simulate;
pub mod status;
pub mod stop;
pub mod strategy;

pub use contract::{
    AttemptRecord, AttemptStatus, FailedQa, Outcome, Params, QaScores, RetryRequest, RetryResult,
};
pub use error::{FieldError, ValidationError};
pub use ids::{ProjectId, SceneType, SegmentId};
pub use policy::{RetryPolicy, Selection};

/// Deserialize `null` as the type's default: JSON clients (the Go-based `temporal` CLI among them)
/// render empty lists as `null`.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Workflow type name of the retry workflow (part of the public contract).
pub const WORKFLOW_TYPE: &str = "SegmentRetryWorkflow";
/// Default task queue (part of the public contract).
pub const DEFAULT_TASK_QUEUE: &str = "segment-retry";

/// Workflow id for a segment: `segment-retry-<segment_id>` (part of the public contract).
pub fn workflow_id(segment: &SegmentId) -> String {
    format!("segment-retry-{}", segment.as_str())
}

/// The task queue every worker of `task_queue` takes generations from (runs with placement; part
/// of the public contract): `<task_queue>/generate`.
pub fn generate_queue(task_queue: &str) -> String {
    format!("{task_queue}/generate")
}

/// The queue of generations placed on worker `worker_id` by name:
/// `<task_queue>/generate/<worker_id>`.
pub fn worker_generate_queue(task_queue: &str, worker_id: &str) -> String {
    format!("{task_queue}/generate/{worker_id}")
}
