//! Choosing simulator segments with a wanted behaviour, and predicting their attempts with the
//! same pure planning functions the workflow uses (the strategy ladder: new runs plan with it).

use super::app::TEST_GPU_MS;
use retake_activities::sim::Simulator;
use retake_domain::RetryPolicy;
use retake_domain::contract::{AttemptRecord, QaScores, RetryRequest};
use retake_domain::ladder;
use retake_domain::review::Decision;
use serde_json::{Value, json};

/// A workflow argument: a segment whose generation (seed 1234, cfg 7.5, denoise 0.6) failed on
/// face_melt.
pub fn request(segment: &str, project: &str, policy: Option<Value>) -> Value {
    let mut v = json!({
        "segment_id": segment,
        "project_id": project,
        "scene_type": "dialogue",
        "params": {"seed": 1234, "cfg_scale": 7.5, "denoise_strength": 0.6, "sampler": "euler"},
        "failed_qa": {"scores": {"face": 0.42, "motion": 0.81}, "failures": ["face_melt"]}
    });
    if let Some(mut p) = policy {
        // Escalations end at once unless a test asks for a review window.
        if p.get("review_window_secs").is_none() {
            p["review_window_secs"] = json!(0);
        }
        v["policy"] = p;
    }
    v
}

/// The attempts the workflow will make for `input` with the simulator (no budget limit), on the
/// test's in-process worker.
pub fn predict(input: &Value) -> Vec<AttemptRecord> {
    let req = RetryRequest::parse(input).expect("valid request");
    let policy = RetryPolicy::resolve(None, req.policy.as_ref()).expect("valid policy");
    run_round(&req, &policy, Vec::new(), 0)
}

/// All attempts after a reviewer answers `first` (every attempt `predict` gave for `input`) with
/// the `retry_with` decision `decision` (the JSON of the `decide` update), planned as the
/// workflow plans a review round.
pub fn predict_retry_with(
    input: &Value,
    first: Vec<AttemptRecord>,
    decision: &Value,
) -> Vec<AttemptRecord> {
    let mut req = RetryRequest::parse(input).expect("valid request");
    let policy = RetryPolicy::resolve(None, req.policy.as_ref()).expect("valid policy");
    let Ok((Decision::RetryWith(retry), _)) = Decision::parse(decision, &policy, &first) else {
        panic!("not a valid retry_with decision: {decision}");
    };
    let made = u32::try_from(first.len()).expect("few attempts");
    let (new_params, policy) = retry.apply(&req.params, &policy, made);
    req.params = new_params;
    run_round(&req, &policy, first, made)
}

/// Plan and score attempts after `attempts` until the plan stops.
fn run_round(
    req: &RetryRequest,
    policy: &RetryPolicy,
    mut attempts: Vec<AttemptRecord>,
    round_start: u32,
) -> Vec<AttemptRecord> {
    while let Ok(a) = ladder::next(req, policy, &attempts, round_start) {
        let scores = Simulator::scores(
            req.scene_type.as_str(),
            req.segment_id.as_str(),
            a.seed,
            &a.params,
        );
        let output = format!("sim://{}/{}.mp4", req.segment_id, a.seed);
        let mut record = a.scored(
            policy,
            QaScores {
                scores,
                failures: vec![],
                ..Default::default()
            },
            TEST_GPU_MS,
            Some(output),
        );
        // The test's in-process worker generates them (worker processes: see `comparable`).
        record.worker = Some(retake::worker::default_worker_id());
        attempts.push(record);
    }
    attempts
}

/// The first segment `<tag>-<name>-<i>` whose predicted attempts satisfy `want`, with them.
pub fn find_segment(
    tag: &str,
    name: &str,
    policy: &Value,
    want: impl Fn(&[AttemptRecord]) -> bool,
) -> (String, Vec<AttemptRecord>) {
    for i in 0..10_000 {
        let segment = format!("{tag}-{name}-{i}");
        let attempts = predict(&request(&segment, "p1", Some(policy.clone())));
        if want(&attempts) {
            return (segment, attempts);
        }
    }
    panic!("no simulator segment behaves as the test {name} needs");
}

/// Attempts as an uninterrupted run makes them, ignoring the simulated GPU time (a resumed or
/// stopped generation's time differs; what it generated must not) and which worker ran them.
pub fn comparable(attempts: &[AttemptRecord]) -> Vec<AttemptRecord> {
    attempts
        .iter()
        .cloned()
        .map(|mut a| {
            a.gpu_ms = 0;
            a.worker = None;
            a
        })
        .collect()
}
