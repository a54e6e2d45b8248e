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
        }
    }
}
