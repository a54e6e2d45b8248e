//! One structured log line per attempt as it starts and as it is recorded, and one per retry
//! outcome: no retry activity is silent in the logs, at the default level.
//!
//! Lines are logged by the activities, which run once per real step (a workflow's code replays,
//! so its logs would repeat). A generation that a killed worker left and another picked up logs
//! `attempt started` twice, with `resumed_from` on the second: that is what happened.

use crate::io::{GenerateRequest, RecordAttempt, RecordOutcome};
use retake_domain::contract::AttemptRecord;

/// `cfg_scale 7.5→7.21, denoise_strength 0.6→0.57`: what the attempt varied (`none`: the seed
/// only).
fn varied(record: &AttemptRecord) -> String {
    if record.jitter.is_empty() {
        return "none".to_owned();
    }
    record
        .jitter
        .iter()
        .map(|c| format!("{} {}→{}", c.param, c.original, c.value))
        .collect::<Vec<_>>()
        .join(", ")
}

fn scores(record: &AttemptRecord) -> String {
    record
        .scores
        .iter()
        .map(|(m, s)| format!("{m} {s:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn attempt_started(req: &GenerateRequest, resumed_from: u32) {
    tracing::info!(
        target: "retake_activities::attempt",
        segment = %req.segment_id,
        scene_type = %req.scene_type,
        attempt = req.key.attempt,
        workflow_id = %req.key.workflow_id,
        seed = req.seed,
        strategy = req.strategy.map(|s| s.as_str()).unwrap_or("reseed_jitter"),
        params = %serde_json::Value::Object(req.params.0.clone()),
        reserved_ms = req.budget.as_ref().map(|b| b.reserved_ms),
        resumed_from,
        "attempt started"
    );
}

pub(crate) fn attempt_recorded(rec: &RecordAttempt) {
    let r = &rec.record;
    tracing::info!(
        target: "retake_activities::attempt",
        segment = %rec.segment_id,
        scene_type = %rec.scene_type,
        project = %rec.project_id,
        attempt = r.attempt,
        workflow_id = %rec.key.workflow_id,
        status = r.status.as_str(),
        seed = r.seed,
        strategy = r.strategy.map(|s| s.as_str()),
        varied = %varied(r),
        scores = %scores(r),
        failures = %r.failures.join(", "),
        error_type = r.error_type.as_deref(),
        error = r.error.as_deref(),
        gpu_ms = r.gpu_ms,
        output_uri = r.output_uri.as_deref(),
        note = r.note.as_deref(),
        "attempt {}",
        r.status.as_str()
    );
}

pub(crate) fn outcome_recorded(out: &RecordOutcome) {
    let r = &out.result;
    tracing::info!(
        target: "retake_activities::retry",
        segment = %r.segment_id,
        scene_type = %r.scene_type,
        project = %r.project_id,
        workflow_id = %out.workflow_id,
        outcome = r.outcome.as_str(),
        review = out.review.as_str(),
        attempts = r.attempts.len(),
        selected_attempt = r.selected_attempt,
        gpu_ms_total = r.gpu_ms_total,
        reason = %r.reason,
        "{}",
        r.report
    );
}
