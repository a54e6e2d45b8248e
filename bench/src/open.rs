//! `open`: `workflows` retries parked in their human-review wait (every attempt fails, review
//! window one hour), for the Rust worker and then the Python peer; the worker's memory with all of
//! them open, and how long a creator's abort of a parked retry takes to finish it (with more
//! parked than the worker caches, such a retry was evicted and is replayed on demand).
//! Afterwards they are terminated.

use crate::harness::{Live, Spread, WorkerProc, machine, percentile, request, write};
use indicatif::{ProgressBar, ProgressStyle};
use retake_client::Creator;
use retake_domain::SegmentId;
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
    #[arg(long, default_value_t = DEFAULT_WORKFLOWS)]
    workflows: u64,
    /// Only the Rust worker.
    #[arg(long)]
    skip_python: bool,
}

/// Retries parked unless `--workflows` says otherwise.
const DEFAULT_WORKFLOWS: u64 = 1000;

/// Parked retries a decision is sent to, one after another, after all are parked.
const DECISIONS: u64 = 10;

#[derive(Debug, Serialize)]
struct Row {
    worker: &'static str,
    run: usize,
    parked: u64,
    secs_to_park: f64,
    rss_idle_mib: f64,
    rss_parked_mib: f64,
    peak_rss_mib: f64,
    rss_per_parked_workflow_kib: f64,
    worker_cpu_secs: f64,
    /// From signalling `abort` to a parked retry to having its result, ms.
    decision_ms_p50: f64,
    decision_ms_max: f64,
}

/// The Rust worker's workflow cache: its default, or what `RETAKE_MAX_CACHED_WORKFLOWS` (which
/// the worker processes inherit) sets.
fn rust_cache() -> String {
    std::env::var("RETAKE_MAX_CACHED_WORKFLOWS")
        .unwrap_or_else(|_| retake::worker::DEFAULT_MAX_CACHED_WORKFLOWS.to_string())
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
    for run in 1..=args.live.runs.max(1) {
        let queue = format!("bench-open-rust-{run}");
        let mut rust = WorkerProc::rust(
            &args.live.retake_bin()?,
            server.address(),
            &queue,
            &dir.path().join(format!("rust-{run}.db")),
            0,
        )?;
        rows.push(park(&server, &client, &mut rust, &queue, run, args.workflows).await?);
        drop(rust);
        if !args.skip_python {
            let queue = format!("bench-open-python-{run}");
            let db = dir.path().join(format!("python-{run}.db"));
            let mut py = WorkerProc::python(server.address(), &queue, &db, 0).await?;
            rows.push(park(&server, &client, &mut py, &queue, run, args.workflows).await?);
        }
    }
    let ratio = Spread::of(rows.iter().filter(|r| r.worker == "rust").filter_map(|r| {
        let p = rows
            .iter()
            .find(|p| p.worker == "python" && p.run == r.run)?;
        (p.rss_parked_mib > 0.0).then(|| r.rss_parked_mib / p.rss_parked_mib)
    }));
    let doc = json!({"scenario": "open", "machine": machine(), "workflows": args.workflows,
        "runs": args.live.runs,
        "rust_max_cached_workflows": rust_cache(),
        "python_max_cached_workflows": 1000,
        "parked_on": "the human-review wait (durable timer + condition) after 3 failed attempts",
        "rows": rows, "rust_to_python_rss": ratio});
    let mut md = format!(
        "# Open workflows: {} retries parked in their review wait, {} runs\n\n\
         Median (min–max) over the runs. The Rust worker caches at most {} workflows (`retake worker \
         --max-cached-workflows`), the Python SDK 1,000 (its default); an abort of a retry not in \
         the cache replays its history first.\n\n\
         | worker | seconds to park | RSS idle MiB | RSS parked MiB | peak RSS MiB | KiB per parked workflow | worker CPU s | abort to result p50 / max ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.workflows,
        args.live.runs,
        rust_cache()
    );
    for worker in ["rust", "python"] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.worker == worker).collect();
        if mine.is_empty() {
            continue;
        }
        let s = |f: fn(&Row) -> f64| Spread::of(mine.iter().map(|r| f(r)));
        md.push_str(&format!(
            "| {worker} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            s(|r| r.secs_to_park).show(1, 1.0),
            s(|r| r.rss_idle_mib).show(1, 1.0),
            s(|r| r.rss_parked_mib).show(1, 1.0),
            s(|r| r.peak_rss_mib).show(1, 1.0),
            s(|r| r.rss_per_parked_workflow_kib).show(1, 1.0),
            s(|r| r.worker_cpu_secs).show(1, 1.0),
            s(|r| r.decision_ms_p50).show(0, 1.0),
            s(|r| r.decision_ms_max).show(0, 1.0),
        ));
    }
    if !ratio.median.is_nan() {
        md.push_str(&format!(
            "\nRust/Python RSS with every retry parked, per run: {} (target ≤ 0.33).\n",
            ratio.show(2, 1.0)
        ));
    }
    // `open.*` holds the default 1,000; other counts get files of their own (`open-10000.*`).
    let name = if args.workflows == DEFAULT_WORKFLOWS {
        "open".to_owned()
    } else {
        format!("open-{}", args.workflows)
    };
    write(&args.live.out, &name, &doc, &md)
}

async fn park(
    server: &DevServer,
    client: &Client,
    worker: &mut WorkerProc,
    queue: &str,
    run: usize,
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
    // 15 minutes, or a quarter of a second per retry if longer: on the 2-core machines
    // here the dev server parks 7–17 retries a second, so 10,000 take 10–22 minutes.
    let limit = Duration::from_secs(900.max(n / 4));
    let deadline = Instant::now() + limit;
    loop {
        let parked = server.count(&query).await?;
        bar.set_position(parked);
        if parked >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {parked} of {n} retries parked in {} s",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs_to_park = started.elapsed().as_secs_f64();
    // Let the worker settle (no workflow task left to run), then read its memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parked = worker.usage();
    // A creator's abort of parked retries, one at a time (the Python peer has no `decide`
    // update; an abort wakes the same review wait): the ones parked first are long out of the
    // Rust worker's cache.
    bar.set_message("deciding");
    let mut decisions = Vec::new();
    for i in (0..n).step_by(usize::try_from((n / DECISIONS).max(1))?) {
        let seg = SegmentId::parse(format!("{queue}-{nonce}-{i}"))?;
        let t = Instant::now();
        retake_client::signal(client, &seg, Creator::Abort, "benchmark", "bench").await?;
        retake_client::result(&retake_client::handle(client, &seg)).await?;
        decisions.push(t.elapsed().as_secs_f64() * 1000.0);
    }
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
        run,
        parked: n,
        secs_to_park,
        rss_idle_mib: idle.rss_mib,
        rss_parked_mib: parked.rss_mib,
        peak_rss_mib: parked.peak_rss_mib,
        rss_per_parked_workflow_kib: (parked.rss_mib - idle.rss_mib).max(0.0) * 1024.0 / n as f64,
        worker_cpu_secs: parked.cpu_secs,
        decision_ms_p50: percentile(&decisions, 50.0),
        decision_ms_max: percentile(&decisions, 100.0),
    })
}
