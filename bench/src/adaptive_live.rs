//! `adaptive-live`: failed segments through a dev server and a real `retake worker` (the
//! simulator), one retry at a time, under a stored policy whose ladder is `adaptive`. Then every
//! `load_evidence` answer in every workflow history is checked against the evidence recomputed
//! from the attempts the store holds (`adapt::tally` over the latest `window` scored attempts
//! before that attempt): the insights the workflows chose from are the store's.

use crate::harness::{Live, machine, rust_worker, write};
use indicatif::{ProgressBar, ProgressStyle};
use retake_activities::sim::Simulator;
use retake_domain::adapt::{self, ChosenBy, Evidence};
use retake_domain::contract::{AttemptRecord, AttemptStatus, FailedQa, Params, QaScores};
use retake_domain::select::gate;
use retake_domain::{RetryPolicy, SegmentId};
use serde_json::json;
use temporalio_client::WorkflowFetchHistoryOptions;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Failed segments, retried one after another.
    #[arg(long, default_value_t = 300)]
    segments: u32,
    /// Simulated GPU milliseconds per attempt.
    #[arg(long, default_value_t = 0)]
    gpu_ms: u64,
}

const SCENE: &str = "bench-adaptive";

/// The failed generation of segment `i`: its first seed whose output fails the gate.
fn failed(i: u32, gated: &RetryPolicy) -> serde_json::Value {
    let id = format!("live-{}-{i}", std::process::id());
    let mut seed = u64::from(i) * 1000 + 1;
    loop {
        let params = json!({"seed": seed, "cfg_scale": 7.5, "denoise_strength": 0.6});
        let p = Params::parse(&params).unwrap_or_else(|_| Params(Default::default()));
        let scores = Simulator::scores(SCENE, &id, seed, &p);
        let qa = QaScores {
            scores: scores.clone(),
            ..Default::default()
        };
        let failures = gate(gated, &qa);
        if !failures.is_empty() {
            return json!({"segment_id": id, "project_id": "bench", "scene_type": SCENE,
                "params": params, "failed_qa": FailedQa { scores, failures, ..Default::default() }});
        }
        seed += 1;
    }
}

/// The `load_evidence` answers in a workflow's history, in order.
async fn evidence_in_history(
    client: &temporalio_client::Client,
    segment: &SegmentId,
) -> anyhow::Result<Vec<Evidence>> {
    let events = retake_client::handle(client, segment)
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .into_events()
        .await?;
    Ok(retake_testkit::load_evidence_answers(events)?)
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let client = retake::connect::temporal(Some(server.address())).await?;
    let dir = crate::harness::scratch_dir()?;
    let db = dir.path().join("adaptive.db");
    let queue = "bench-adaptive";
    let _worker = rust_worker(
        &args.live.retake_bin()?,
        server.address(),
        queue,
        &db,
        args.gpu_ms,
    )?;
    let store =
        retake_activities::store::connect_any(&format!("sqlite://{}", db.display())).await?;
    let policy = json!({"enabled": true, "max_attempts": 3, "ladder": ["adaptive"],
        "review_window_secs": 0, "est_gpu_ms_per_attempt": 0});
    store.set_policy(SCENE, &policy, "bench").await?;
    let stored = RetryPolicy::parse(&policy)?;
    let gated = RetryPolicy {
        enabled: true,
        ..RetryPolicy::default()
    };
    let bar = ProgressBar::new(u64::from(args.segments)).with_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} segments",
    )?);
    let mut segments = Vec::new();
    for i in 0..args.segments {
        let input = failed(i, &gated);
        let h = retake_client::start(&client, queue, input.clone()).await?;
        let result = retake_client::result(&h).await?;
        segments.push((result.segment_id.clone(), result));
        bar.inc(1);
    }
    bar.finish_and_clear();

    // The store's scored records (what evidence counts), in the order they were made (one retry
    // at a time).
    let mut scored: Vec<AttemptRecord> = Vec::new();
    let (mut checked, mut matched, mut adaptive, mut cold) = (0u32, 0u32, 0u32, 0u32);
    let mut thirds = [[0u32; 2]; 3];
    let n = segments.len().max(1);
    for (i, (segment, result)) in segments.iter().enumerate() {
        let records: Vec<AttemptRecord> = store
            .attempts(segment.as_str())
            .await?
            .into_iter()
            .map(|s| s.record)
            .collect();
        let used = evidence_in_history(&client, segment).await?;
        anyhow::ensure!(
            used.len() == records.len(),
            "segment {segment}: {} load_evidence answers for {} attempts",
            used.len(),
            records.len()
        );
        for (answer, record) in used.iter().zip(&records) {
            let recent = &scored[scored.len().saturating_sub(stored.adaptive.window as usize)..];
            let expected = adapt::tally(recent);
            checked += 1;
            let same = expected.len() == answer.rows.len()
                && expected.iter().zip(&answer.rows).all(|(e, a)| {
                    (&e.failure_kind, &e.arm, e.attempts, e.passes)
                        == (&a.failure_kind, &a.arm, a.attempts, a.passes)
                        && (e.gain_sum - a.gain_sum).abs() < 1e-6
                });
            matched += u32::from(same);
            match record.variation.as_ref().map(|v| v.chosen_by) {
                Some(ChosenBy::Adaptive) => adaptive += 1,
                Some(ChosenBy::ColdStart) => cold += 1,
                _ => {}
            }
            if matches!(record.status, AttemptStatus::Passed | AttemptStatus::Failed) {
                scored.push(record.clone());
            }
        }
        let profile = Simulator::profile(segment.as_str());
        if profile.directional {
            let t = &mut thirds[i * 3 / n];
            t[0] += 1;
            t[1] += u32::from(result.outcome == retake_domain::contract::Outcome::Passed);
        }
    }
    let rate = |t: [u32; 2]| {
        if t[0] == 0 {
            0.0
        } else {
            100.0 * f64::from(t[1]) / f64::from(t[0])
        }
    };
    let doc = json!({
        "scenario": "adaptive-live", "machine": machine(), "segments": args.segments,
        "gpu_ms": args.gpu_ms, "policy": policy, "evidence_checked": checked,
        "evidence_matching_the_store": matched, "adaptive_attempts": adaptive,
        "cold_start_attempts": cold,
        "directional_fixed_by_third": thirds.iter().map(|t| json!({"retried": t[0], "fixed": t[1]})).collect::<Vec<_>>(),
    });
    let md = format!(
        "# Adaptive retries, live: {} failed segments through a dev server and `retake worker`\n\n\
         One retry at a time, scene type `{SCENE}`, stored policy `{policy}`.\n\n\
         - `load_evidence` answers in the workflow histories checked against the evidence \
         recomputed from the store's attempts: {matched} of {checked} identical.\n\
         - attempts chosen from evidence: {adaptive}; cold start (too little evidence): {cold}.\n\
         - directional failures fixed, first / middle / last third of the batch: {:.0} % / {:.0} % / {:.0} % \
         (of {} / {} / {}).\n",
        args.segments,
        rate(thirds[0]),
        rate(thirds[1]),
        rate(thirds[2]),
        thirds[0][0],
        thirds[1][0],
        thirds[2][0],
    );
    write(&args.live.out, "adaptive-live", &doc, &md)?;
    anyhow::ensure!(
        matched == checked,
        "{} load_evidence answers differ from the store",
        checked - matched
    );
    Ok(())
}
