//! The live view of a retry, answered by the workflow's `report` query and `retake status`.

use crate::contract::{AttemptRecord, Outcome, RetryResult};
use crate::event::CreatorEvent;
use crate::review::Phase;
use serde::{Deserialize, Serialize};

/// The result shape so far, plus the phase. While the workflow runs, `outcome` is `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub phase: Phase,
    pub segment_id: String,
    pub project_id: String,
    pub scene_type: String,
    pub outcome: Option<Outcome>,
    pub reason: String,
    pub selected_attempt: Option<u32>,
    /// The attempt in flight, if any (the lowest-numbered one when several run at once).
    pub running_attempt: Option<u32>,
    /// Every attempt in flight, in attempt order (several with a policy's `parallelism` > 1).
    #[serde(default, deserialize_with = "crate::null_as_default")]
    pub running_attempts: Vec<u32>,
    pub attempts: Vec<AttemptRecord>,
    pub gpu_ms_total: u64,
    pub report: String,
    pub decisions: Vec<CreatorEvent>,
    /// What is already known of each attempt in flight (its generation or scoring running),
    /// in attempt order: what a live card shows before the attempt is recorded.
    #[serde(default, deserialize_with = "crate::null_as_default")]
    pub in_flight: Vec<InFlight>,
}

/// An attempt in flight as the query tells it: planned, not yet recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InFlight {
    pub attempt: u32,
    pub seed: u64,
    /// The parameters sent to the generator (the jitter applied).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: crate::contract::Params,
    pub jitter: Vec<crate::params::ParamChange>,
    /// The ladder's strategy (`reseed`, `revise`, …), when it has one.
    pub strategy: Option<String>,
    /// `placing` (waiting for a worker's queue), `generating` or `scoring`.
    pub stage: String,
    /// The worker its generation was placed on by name, when it was.
    pub worker: Option<String>,
    /// Runs of its generation that failed on their machine and were re-run so far.
    pub reruns: u32,
}

impl Status {
    /// The status of a concluded retry (finished, or awaiting review with this provisional
    /// result).
    pub fn concluded(phase: Phase, result: &RetryResult) -> Self {
        Self {
            phase,
            segment_id: result.segment_id.to_string(),
            project_id: result.project_id.to_string(),
            scene_type: result.scene_type.to_string(),
            outcome: Some(result.outcome),
            reason: result.reason.clone(),
            selected_attempt: result.selected_attempt,
            running_attempt: None,
            running_attempts: vec![],
            attempts: result.attempts.clone(),
            gpu_ms_total: result.gpu_ms_total,
            report: result.report.clone(),
            decisions: result.decisions.clone(),
            in_flight: vec![],
        }
    }
}
