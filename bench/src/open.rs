//! `open`: `workflows` retries parked in their human-review wait (every attempt fails, review
//! window one hour), for the Rust worker and then the Python peer; the worker's memory with all of
//! them open. Afterwards they are terminated.

use crate::harness::{Live, WorkerProc, machine, request, write};
use indicatif::{ProgressBar, ProgressStyle};
use retake_testkit::DevServer;
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};
use temporalio_client::Client;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Retries to park.
    #[arg(long, default_value_t = 1000)]
    workflows: u64,
    /// Only the Rust worker.
    #[arg(long)]
    skip_python: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    worker: &'static str,
    parked: u64,
    secs_to_park: f64,
    rss_idle_mib: f64,
    rss_parked_mib: f64,
    peak_rss_mib: f64,
    rss_per_parked_workflow_kib: f64,
    worker_cpu_secs: f64,
}

/// Every attempt fails (a metric no scorer reports), then a one-hour review wait.
fn parking_policy() -> serde_json::Value {
    json!({"enabled": true, "max_attempts": 3, "thresholds": {"bench_never": 0.5},
           "retry_on": ["face_melt", "low_bench_never"], "review_window_secs": 3600, "est_gpu_ms_per_attempt": 0})
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let client = retake::connect::temporal(Some(server.address())).await?;
    let dir = crate::harness::scratch_dir()?;
    let mut rows = Vec::new();
    let rust = WorkerProc::rust(
        &args.live.retake_bin()?,
        server.address(),
        "bench-open-rust",
        &dir.path().join("rust.db"),
        0,
    )?;
    rows.push(park(&server, &client, &rust, "bench-open-rust", args.workflows).await?);
    drop(rust);
    if !args.skip_python {
        let py = WorkerProc::python(server.address(), "bench-open-python", 0).await?;
        rows.push(park(&server, &client, &py, "bench-open-python", args.workflows).await?);
    }
    let ratio = match rows.as_slice() {
        [r, p] if p.rss_parked_mib > 0.0 => Some(r.rss_parked_mib / p.rss_parked_mib),
        _ => None,
    };
    let doc = json!({"scenario": "open", "machine": machine(), "workflows": args.workflows,
        "parked_on": "the human-review wait (durable timer + condition) after 3 failed attempts",
        "rows": rows, "rust_to_python_rss": ratio});
    let mut md = format!(
        "# Open workflows: {} retries parked in their review wait\n\n\
         | worker | parked | seconds to park | RSS idle MiB | RSS parked MiB | peak RSS MiB | KiB per parked workflow | worker CPU s |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.workflows
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            r.worker,
            r.parked,
            r.secs_to_park,
            r.rss_idle_mib,
            r.rss_parked_mib,
            r.peak_rss_mib,
            r.rss_per_parked_workflow_kib,
            r.worker_cpu_secs
        ));
    }
    if let Some(q) = ratio {
        md.push_str(&format!(
            "\nRust/Python RSS with every retry parked: {q:.2} (target ≤ 0.33).\n"
        ));
    }
    write(&args.live.out, "open", &doc, &md)
}

async fn park(
    server: &DevServer,
    client: &Client,
    worker: &WorkerProc,
    queue: &str,
    n: u64,
) -> anyhow::Result<Row> {
    // One retry first, so "idle" is a worker that has connected and run a workflow.
    let warm = retake_client::start(
        client,
        queue,
        request(&format!("{queue}-warm"), crate::throughput::policy()),
    )
    .await?;
    retake_client::result(&warm).await?;
    let idle = worker.usage();
    let bar = ProgressBar::new(n).with_style(ProgressStyle::with_template(
        "{prefix:8} {bar:30} {pos}/{len} {msg}",
    )?);
    bar.set_prefix(worker.label);
    bar.set_message("starting");
    let started = Instant::now();
    let nonce = std::process::id();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16u64 {
        let (client, queue) = (client.clone(), queue.to_owned());
        tasks.spawn(async move {
            for i in (chunk..n).step_by(16) {
                let seg = format!("{queue}-{nonce}-{i}");
                retake_client::start(&client, &queue, request(&seg, parking_policy())).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    bar.set_message("waiting until every retry awaits review");
    let query = format!("TaskQueue = '{queue}' AND RetryOutcome = 'awaiting_review'");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let parked = server.count(&query).await?;
        bar.set_position(parked);
        if parked >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {parked} of {n} retries parked in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs_to_park = started.elapsed().as_secs_f64();
    // Let the worker settle (no workflow task left to run), then read its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parked = worker.usage();
    bar.finish_and_clear();
    server
        .cli(&[
            "workflow",
            "terminate",
            "--query",
            &format!("TaskQueue = '{queue}'"),
            "--reason",
            "benchmark over",
            "--yes",
        ])
        .await?;
    Ok(Row {
        worker: worker.label,
        parked: n,
        secs_to_park,
        rss_idle_mib: idle.rss_mib,
        rss_parked_mib: parked.rss_mib,
        peak_rss_mib: parked.peak_rss_mib,
        rss_per_parked_workflow_kib: (parked.rss_mib - idle.rss_mib).max(0.0) * 1024.0 / n as f64,
        worker_cpu_secs: parked.cpu_secs,
    })
}
