//! `retake demo`: a batch of failed segments through the simulator, with a progress bar, every
//! report line and the totals.

use crate::cli::Global;
use crate::{connect, retries, worker};
use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use retake_activities::sim::Simulator;
use retake_domain::contract::{Outcome, Params, QaScores, RetryResult};
use retake_domain::select::gate;
use retake_domain::{RetryPolicy, SceneType};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of failed segments.
    #[arg(long, default_value_t = 24)]
    segments: u32,
    /// Project the GPU time is charged to.
    #[arg(long, default_value = "demo")]
    project: String,
    /// Scene type; its policy is created (enabled, 3 attempts, first_pass) if none is stored.
    /// Escalations are recorded for review without waiting for a decision.
    #[arg(long, default_value = "demo")]
    scene_type: String,
    /// Retries running at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Use workers started elsewhere (`retake worker`) instead of one in this process.
    #[arg(long)]
    no_worker: bool,
    /// Simulated GPU time per attempt of the in-process worker, in milliseconds.
    #[arg(long, env = "RETAKE_SIM_GPU_MS", default_value_t = retake_activities::sim::DEFAULT_GPU_MS)]
    sim_gpu_ms: u64,
}

/// The failed generation of demo segment `i`: the first seed (from `i·1000 + 1`) whose simulated
/// output fails the policy's quality gate.
fn failed_segment(tag: &str, i: u32, project: &str, scene: &str, policy: &RetryPolicy) -> Value {
    let segment = format!("demo-{tag}-{i}");
    let gated = RetryPolicy {
        enabled: true,
        ..policy.clone()
    };
    let mut seed = u64::from(i) * 1000 + 1;
    let (params, qa) = loop {
        let params = json!({"seed": seed, "cfg_scale": 7.5, "denoise_strength": 0.6, "steps": 30, "sampler": "dpmpp_2m"});
        let p = Params::parse(&params).unwrap_or_else(|_| Params(serde_json::Map::new()));
        let scores = Simulator::scores(scene, &segment, seed, &p);
        let failures = gate(
            &gated,
            &QaScores {
                scores: scores.clone(),
                failures: vec![],
                ..Default::default()
            },
        );
        if !failures.is_empty() || seed > u64::from(i) * 1000 + 999 {
            break (params, json!({"scores": scores, "failures": failures}));
        }
        seed += 1;
    };
    // Escalated demo segments are flagged for review in the store but do not hold the batch open
    // waiting for a decision.
    json!({"segment_id": segment, "project_id": project, "scene_type": scene, "params": params,
           "failed_qa": qa, "policy": {"review_window_secs": 0}})
}

#[derive(Debug, Default)]
struct Totals {
    fixed: u32,
    escalated: u32,
    not_retried: u32,
    budget_exhausted: u32,
    failed: u32,
    attempts: usize,
    gpu_ms: u64,
}

impl Totals {
    fn add(&mut self, r: &RetryResult) {
        match r.outcome {
            Outcome::Passed => self.fixed += 1,
            Outcome::Escalated => self.escalated += 1,
            Outcome::NotRetried => self.not_retried += 1,
            Outcome::BudgetExhausted => self.budget_exhausted += 1,
            Outcome::Aborted => {}
        }
        self.attempts += r.attempts.len();
        self.gpu_ms += r.gpu_ms_total;
    }
}

pub(crate) async fn run(g: &Global, args: DemoArgs) -> anyhow::Result<()> {
    let scene = SceneType::parse(&args.scene_type)?;
    retake_domain::ProjectId::parse(&args.project)?;
    let store = connect::store(&g.database_url).await?;
    let policy = match store.policy(scene.as_str()).await? {
        Some(p) => RetryPolicy::resolve(Some(&p), None)?,
        None => {
            let p = RetryPolicy {
                enabled: true,
                ..RetryPolicy::default()
            };
            store
                .set_policy(scene.as_str(), &serde_json::to_value(&p)?, "demo")
                .await?;
            p
        }
    };
    let client = connect::temporal_for(g).await?;
    let tag = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let inputs: Vec<Value> = (1..=args.segments)
        .map(|i| failed_segment(&tag.to_string(), i, &args.project, scene.as_str(), &policy))
        .collect();
    println!(
        "retake demo: {} failed segments, scene type {scene} (max {} attempts, {}), simulated GPU {} ms/attempt",
        inputs.len(),
        policy.max_attempts,
        serde_json::to_value(policy.selection)?
            .as_str()
            .unwrap_or(""),
        args.sim_gpu_ms
    );
    let bar = ProgressBar::new(inputs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} segments · {msg}")
            .context("progress template")?,
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let batch = async {
        let mut totals = Totals::default();
        let mut results = futures::stream::iter(inputs)
            .map(|input| {
                let client = client.clone();
                let queue = g.task_queue.clone();
                async move { retries::run(&client, &queue, input).await }
            })
            .buffer_unordered(args.concurrency.max(1));
        while let Some(r) = results.next().await {
            match r {
                Ok(r) => {
                    bar.suspend(|| println!("{}", r.report));
                    totals.add(&r);
                }
                Err(e) => {
                    totals.failed += 1;
                    bar.suspend(|| eprintln!("error: {e:#}"));
                }
            }
            bar.set_message(format!(
                "{} fixed, {} escalated",
                totals.fixed, totals.escalated
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let _ = stop_tx.send(());
        totals
    };
    let totals = if args.no_worker {
        batch.await
    } else {
        let activities =
            worker::simulator_activities(store.clone(), Simulator::new(args.sim_gpu_ms));
        let shutdown = async {
            let _ = stop_rx.await;
        };
        let (ran, totals) = tokio::join!(
            worker::run(client.clone(), &g.task_queue, activities, shutdown),
            batch
        );
        ran?;
        totals
    };
    println!(
        "totals: {} fixed, {} escalated for review, {} not retried, {} budget exhausted; {} attempts, {:.1} GPU s",
        totals.fixed,
        totals.escalated,
        totals.not_retried,
        totals.budget_exhausted,
        totals.attempts,
        totals.gpu_ms as f64 / 1000.0
    );
    if totals.failed > 0 {
        anyhow::bail!("{} retries could not be run", totals.failed);
    }
    Ok(())
}
