//! `recovery`: two `retake worker` processes on one queue; the one running an attempt's
//! `generate` is SIGKILLed; how long until the attempt runs on the other, and how much GPU work
//! was lost (done since the last heartbeat the server recorded, which is where the re-run
//! resumes).

use crate::harness::{Live, Spread, machine, percentile, request, rust_worker, write};
use anyhow::Context;
use retake_domain::SegmentId;
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime};
use temporalio_client::{Client, WorkflowDescribeOptions};
use temporalio_protos::protos::temporal::api::enums::v1::PendingActivityState;
use temporalio_protos::protos::temporal::api::workflow::v1::PendingActivityInfo;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Simulated GPU milliseconds of the attempt (10 heartbeated steps).
    #[arg(long, default_value_t = 10_000)]
    gpu_ms: u64,
}

#[derive(Debug, Serialize)]
struct Run {
    resume_secs: f64,
    /// Work since the last recorded heartbeat at the kill: redone by the resumed attempt.
    wasted_gpu_secs: f64,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let client = retake::connect::temporal(Some(server.address())).await?;
    let bin = args.live.retake_bin()?;
    let dir = crate::harness::scratch_dir()?;
    let mut runs = Vec::new();
    for i in 0..args.live.runs.max(1) {
        let queue = format!("bench-recovery-{i}");
        let db = dir.path().join(format!("{i}.db"));
        let mut workers = [
            rust_worker(&bin, server.address(), &queue, &db, args.gpu_ms)?,
            rust_worker(&bin, server.address(), &queue, &db, args.gpu_ms)?,
        ];
        let seg = format!("{queue}-{}", std::process::id());
        let policy = json!({"enabled": true, "max_attempts": 1, "review_window_secs": 0});
        let handle = retake_client::start(&client, &queue, request(&seg, policy)).await?;
        let running = wait_for_generate(&client, &seg, |p| {
            p.state == PendingActivityState::Started as i32 && p.heartbeat_details.is_some()
        })
        .await?;
        let identity = running.last_worker_identity.clone();
        let victim = workers
            .iter()
            .position(|w| {
                w.pid()
                    .is_some_and(|pid| identity.starts_with(&format!("{pid}@")))
            })
            .with_context(|| format!("no worker matches the identity {identity:?}"))?;
        // Kill at a different point of the heartbeat cycle each run (the SDK sends heartbeats at
        // most every 0.8 × 3 s), not right after the first heartbeat landed.
        tokio::time::sleep(Duration::from_millis((i as u64 * 617 + 300) % 2400)).await;
        // The last heartbeat the server holds, just before the kill.
        let last_beat = wait_for_generate(&client, &seg, |_| true)
            .await?
            .last_heartbeat_time;
        let killed_at = SystemTime::now();
        let killed = Instant::now();
        workers[victim].kill().await?;
        wait_for_generate(&client, &seg, |p| {
            p.attempt > running.attempt && p.state == PendingActivityState::Started as i32
        })
        .await?;
        let resume_secs = killed.elapsed().as_secs_f64();
        let wasted_gpu_secs = last_beat
            .and_then(|t| {
                let beat = SystemTime::UNIX_EPOCH
                    + Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
                killed_at.duration_since(beat).ok()
            })
            .map_or(f64::NAN, |d| {
                d.as_secs_f64().min(args.gpu_ms as f64 / 1000.0)
            });
        retake_client::result(&handle).await?;
        eprintln!(
            "run {}: resumed after {resume_secs:.2} s, {wasted_gpu_secs:.2} GPU s lost",
            i + 1
        );
        runs.push(Run {
            resume_secs,
            wasted_gpu_secs,
        });
    }
    let resume: Vec<f64> = runs.iter().map(|r| r.resume_secs).collect();
    let wasted: Vec<f64> = runs.iter().map(|r| r.wasted_gpu_secs).collect();
    let doc = json!({"scenario": "recovery", "machine": machine(), "gpu_ms": args.gpu_ms,
        "heartbeat_timeout_secs": 3, "runs": runs,
        "resume_secs_median": percentile(&resume, 50.0), "resume_secs_max": percentile(&resume, 100.0),
        "wasted_gpu_secs_median": percentile(&wasted, 50.0), "wasted_gpu_secs_max": percentile(&wasted, 100.0)});
    let mut md = format!(
        "# Recovery: SIGKILL of the worker running `generate` ({} ms of simulated GPU, heartbeat timeout 3 s), another worker already polling\n\n\
         | run | seconds until the attempt runs elsewhere | GPU seconds lost |\n| ---: | ---: | ---: |\n",
        args.gpu_ms
    );
    for (i, r) in runs.iter().enumerate() {
        md.push_str(&format!(
            "| {} | {:.2} | {:.2} |\n",
            i + 1,
            r.resume_secs,
            r.wasted_gpu_secs
        ));
    }
    md.push_str(&format!(
        "\nSeconds to resume, median (min–max): {}; target ≤ heartbeat timeout + 2 s = 5 s. GPU seconds lost: {}.\n",
        Spread::of(resume.iter().copied()).show(2, 1.0),
        Spread::of(wasted.iter().copied()).show(2, 1.0)
    ));
    write(&args.live.out, "recovery", &doc, &md)
}

async fn wait_for_generate(
    client: &Client,
    segment: &str,
    want: impl Fn(&PendingActivityInfo) -> bool,
) -> anyhow::Result<PendingActivityInfo> {
    let handle = retake_client::handle(client, &SegmentId::parse(segment)?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(d) = handle.describe(WorkflowDescribeOptions::default()).await
            && let Some(p) = d.raw_description.pending_activities.into_iter().find(|a| {
                a.activity_type
                    .as_ref()
                    .is_some_and(|t| t.name == "generate")
            })
            && want(&p)
        {
            return Ok(p);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "generate of {segment} never got there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
