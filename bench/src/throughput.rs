//! `throughput` and `open`: one worker process, Rust (`retake worker`) and then the Python SDK
//! peer, against the same dev server in the same run.
//!
//! * throughput: keep `concurrency` zero-GPU retries of 3 attempts in flight for `secs` seconds
//!   (after a warm-up), and read the worker's and the server's CPU time and the worker's peak RSS.
//! * open: park `workflows` retries in their human-review wait (every attempt fails, review window
//!   one hour) and read the worker's RSS with all of them open.

use crate::harness::{Live, Spread, Usage, WorkerProc, machine, percentile, request, write};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use retake_testkit::DevServer;
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant};
use temporalio_client::Client;

/// Server-scheduled activities of one retry of 3 attempts: 3 × (generate, score). The store steps
/// (settings, 3 × reserve, settle, record, and the outcome: 11) are local activities in both
/// workers.
const ACTIVITIES_PER_WORKFLOW: u64 = 6;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Measured seconds per worker.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Retries kept in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Only the Rust worker.
    #[arg(long)]
    skip_python: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    worker: &'static str,
    run: usize,
    workflows: u64,
    failed: u64,
    secs: f64,
    workflows_per_sec: f64,
    activities_per_sec: f64,
    worker_cpu_secs: f64,
    worker_cpu_secs_per_1000_workflows: f64,
    /// Share of one core the worker used.
    worker_cpu_share: f64,
    worker_peak_rss_mib: f64,
    server_cpu_secs: f64,
    server_cpu_share: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
}

pub(crate) fn policy() -> serde_json::Value {
    // best_of_n with every failure kind retried: always exactly 3 attempts.
    json!({"enabled": true, "max_attempts": 3, "selection": "best_of_n",
           "retry_on": ["face_melt", "motion_score"],
           "review_window_secs": 0, "est_gpu_ms_per_attempt": 0})
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let client = retake::connect::temporal(Some(server.address())).await?;
    let dir = crate::harness::scratch_dir()?;
    let mut rows = Vec::new();
    for run in 1..=args.live.runs.max(1) {
        let queue = format!("bench-tp-rust-{run}");
        let rust = WorkerProc::rust(
            &args.live.retake_bin()?,
            server.address(),
            &queue,
            &dir.path().join(format!("rust-{run}.db")),
            0,
        )?;
        rows.push(measure(&server, &client, &rust, &queue, run, args).await?);
        drop(rust);
        if !args.skip_python {
            let queue = format!("bench-tp-python-{run}");
            let db = dir.path().join(format!("python-{run}.db"));
            let py = WorkerProc::python(server.address(), &queue, &db, 0).await?;
            rows.push(measure(&server, &client, &py, &queue, run, args).await?);
        }
    }
    // Ratios within each run (same server, minutes apart), then their spread over the runs.
    let ratio = |f: fn(&Row) -> f64| {
        Spread::of(rows.iter().filter(|r| r.worker == "rust").filter_map(|r| {
            let p = rows
                .iter()
                .find(|p| p.worker == "python" && p.run == r.run)?;
            (f(p) > 0.0).then(|| f(r) / f(p))
        }))
    };
    let cpu_ratio = ratio(|r| r.worker_cpu_secs_per_1000_workflows);
    let rss_ratio = ratio(|r| r.worker_peak_rss_mib);
    let doc = json!({"scenario": "throughput", "machine": machine(), "secs": args.secs,
        "concurrency": args.concurrency, "runs": args.live.runs,
        "server_activities_per_workflow": ACTIVITIES_PER_WORKFLOW,
        "rows": rows, "rust_to_python": {"cpu_per_1000_workflows": cpu_ratio, "peak_rss": rss_ratio}});
    let mut md = format!(
        "# Throughput: zero-GPU retries of 3 attempts, {} in flight, {} s per worker, {} runs\n\n\
         Median (min–max) over the runs; activities are those the server schedules (generate, \
         score); both workers run the store steps as local activities writing SQLite.\n\n\
         | worker | workflows/s | activities/s | worker CPU s / 1000 wf | worker CPU (% of a core) | worker peak RSS MiB | server CPU (% of a core) | latency p50 ms | failed |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.concurrency, args.secs, args.live.runs
    );
    for worker in ["rust", "python"] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.worker == worker).collect();
        if mine.is_empty() {
            continue;
        }
        let s = |f: fn(&Row) -> f64| Spread::of(mine.iter().map(|r| f(r)));
        md.push_str(&format!(
            "| {worker} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            s(|r| r.workflows_per_sec).show(1, 1.0),
            s(|r| r.activities_per_sec).show(0, 1.0),
            s(|r| r.worker_cpu_secs_per_1000_workflows).show(1, 1.0),
            s(|r| r.worker_cpu_share).show(0, 100.0),
            s(|r| r.worker_peak_rss_mib).show(1, 1.0),
            s(|r| r.server_cpu_share).show(0, 100.0),
            s(|r| r.latency_p50_ms).show(0, 1.0),
            mine.iter().map(|r| r.failed).sum::<u64>(),
        ));
    }
    if !cpu_ratio.median.is_nan() {
        md.push_str(&format!(
            "\nRust/Python, per run: CPU per 1,000 workflows {} (target ≤ 0.20), peak RSS {} (target ≤ 0.33).\n",
            cpu_ratio.show(2, 1.0),
            rss_ratio.show(2, 1.0)
        ));
    }
    md.push_str(&bottleneck(&rows));
    write(&args.live.out, "throughput", &doc, &md)
}

fn bottleneck(rows: &[Row]) -> String {
    let mut s = String::from("\n");
    for r in rows.iter().filter(|r| r.run == 1) {
        let who = if r.server_cpu_share > r.worker_cpu_share {
            "the server"
        } else {
            "the worker"
        };
        s.push_str(&format!(
            "Run 1, with the {} worker: {who} used more CPU ({:.0} % of a core against {:.0} %).\n",
            r.worker,
            100.0 * r.server_cpu_share.max(r.worker_cpu_share),
            100.0 * r.server_cpu_share.min(r.worker_cpu_share)
        ));
    }
    s
}

async fn measure(
    server: &DevServer,
    client: &Client,
    worker: &WorkerProc,
    queue: &str,
    run: usize,
    args: &Args,
) -> anyhow::Result<Row> {
    let bar = ProgressBar::new(args.secs).with_style(ProgressStyle::with_template(
        "{prefix:8} {bar:30} {pos}/{len} s {msg}",
    )?);
    bar.set_prefix(worker.label);
    bar.set_message("warming up");
    // Warm-up: the worker connects, registers and fills its caches before measuring.
    drive(
        client,
        queue,
        "warm",
        args.concurrency,
        Duration::from_secs(3),
    )
    .await?;
    let (w0, s0, t0) = (worker.usage(), Usage::of(server.pid()), Instant::now());
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    bar.set_message("measuring");
    let (latencies, failed) = drive(
        client,
        queue,
        "run",
        args.concurrency,
        Duration::from_secs(args.secs),
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let (w1, s1) = (worker.usage(), Usage::of(server.pid()));
    ticker.abort();
    bar.finish_and_clear();
    let n = latencies.len() as u64;
    let cpu = w1.cpu_secs - w0.cpu_secs;
    Ok(Row {
        worker: worker.label,
        run,
        workflows: n,
        failed,
        secs,
        workflows_per_sec: n as f64 / secs,
        activities_per_sec: (n * ACTIVITIES_PER_WORKFLOW) as f64 / secs,
        worker_cpu_secs: cpu,
        worker_cpu_secs_per_1000_workflows: if n > 0 {
            cpu * 1000.0 / n as f64
        } else {
            f64::NAN
        },
        worker_cpu_share: cpu / secs,
        worker_peak_rss_mib: w1.peak_rss_mib,
        server_cpu_secs: s1.cpu_secs - s0.cpu_secs,
        server_cpu_share: (s1.cpu_secs - s0.cpu_secs) / secs,
        latency_p50_ms: percentile(&latencies, 50.0),
        latency_p95_ms: percentile(&latencies, 95.0),
    })
}

/// Keep `concurrency` retries in flight until `for_` has passed; latencies (ms) of the finished
/// ones and how many failed.
async fn drive(
    client: &Client,
    queue: &str,
    tag: &str,
    concurrency: usize,
    for_: Duration,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let deadline = Instant::now() + for_;
    let nonce = std::process::id();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (client, queue, tag) = (client.clone(), queue.to_owned(), tag.to_owned());
        tasks.spawn(async move {
            let (mut lat, mut failed, mut i) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let seg = format!("{queue}-{tag}-{nonce}-{t}-{i}");
                i += 1;
                let started = Instant::now();
                let ok = match retake_client::start(&client, &queue, request(&seg, policy())).await
                {
                    Ok(h) => retake_client::result(&h).await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(started.elapsed().as_secs_f64() * 1000.0);
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        });
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    while let Some(done) = tasks.join_next().await {
        let (lat, f) = done.context("a driver task panicked")?;
        all.extend(lat);
        failed += f;
    }
    Ok((all, failed))
}
