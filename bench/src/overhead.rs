//! `overhead`: N retries of 3 attempts with simulated GPU time G per attempt (G = 0 and 2000 ms by
//! default) on one `retake worker`: wall time against the GPU time, orchestration per attempt,
//! and the share of wall time that is orchestration.

use crate::harness::{Live, Spread, machine, percentile, request, rust_worker, write};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Retries per GPU time.
    #[arg(long, default_value_t = 20)]
    workflows: usize,
    /// Simulated GPU milliseconds per attempt to measure with.
    #[arg(long, value_delimiter = ',', default_value = "0,2000")]
    gpu_ms: Vec<u64>,
    /// Retries in flight at once: 1 measures orchestration latency alone, more measures it under
    /// load.
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    concurrency: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct Row {
    run: usize,
    gpu_ms_per_attempt: u64,
    concurrency: usize,
    workflows: usize,
    attempts: usize,
    /// Sum over retries of their wall time (start to result), seconds.
    wall_secs: f64,
    gpu_secs: f64,
    overhead_per_attempt_ms_p50: f64,
    overhead_per_attempt_ms_p95: f64,
    orchestration_share: f64,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let client = retake::connect::temporal(Some(server.address())).await?;
    let dir = crate::harness::scratch_dir()?;
    let mut rows = Vec::new();
    let configs: Vec<(u64, usize)> = args
        .gpu_ms
        .iter()
        .flat_map(|&g| args.concurrency.iter().map(move |&c| (g, c)))
        .collect();
    for (run, &(g, c)) in
        (1..=args.live.runs.max(1)).flat_map(|r| configs.iter().map(move |x| (r, x)))
    {
        let queue = format!("bench-overhead-{g}-{c}-{run}");
        let _worker = rust_worker(
            &args.live.retake_bin()?,
            server.address(),
            &queue,
            &dir.path().join(format!("{g}-{c}-{run}.db")),
            g,
        )?;
        // Warm-up: the worker is polling and its caches are filled.
        let warm = retake_client::start(
            &client,
            &queue,
            request(&format!("{queue}-warm"), crate::throughput::policy()),
        )
        .await?;
        retake_client::result(&warm).await?;
        let bar = ProgressBar::new(args.workflows as u64).with_style(ProgressStyle::with_template(
            "G={prefix} ms {bar:30} {pos}/{len}",
        )?);
        bar.set_prefix(g.to_string());
        let nonce = std::process::id();
        let one = |i: usize| {
            let (client, queue, bar) = (client.clone(), queue.clone(), bar.clone());
            async move {
                let started = Instant::now();
                let seg = format!("{queue}-{nonce}-{i}");
                let policy = crate::throughput::policy();
                let h = retake_client::start(&client, &queue, request(&seg, policy)).await?;
                let r = retake_client::result(&h).await?;
                bar.inc(1);
                anyhow::Ok((started.elapsed().as_secs_f64(), r))
            }
        };
        let done: Vec<_> = futures::stream::iter(0..args.workflows)
            .map(one)
            .buffer_unordered(c.max(1))
            .collect()
            .await;
        let (mut wall, mut gpu, mut attempts, mut per_attempt) = (0.0, 0.0, 0, Vec::new());
        for d in done {
            let (secs, r) = d?;
            let gpu_secs = r.gpu_ms_total as f64 / 1000.0;
            let n = r.attempts.len().max(1);
            wall += secs;
            gpu += gpu_secs;
            attempts += r.attempts.len();
            per_attempt.push((secs - gpu_secs) * 1000.0 / n as f64);
        }
        bar.finish_and_clear();
        rows.push(Row {
            run,
            gpu_ms_per_attempt: g,
            concurrency: c,
            workflows: args.workflows,
            attempts,
            wall_secs: wall,
            gpu_secs: gpu,
            overhead_per_attempt_ms_p50: percentile(&per_attempt, 50.0),
            overhead_per_attempt_ms_p95: percentile(&per_attempt, 95.0),
            orchestration_share: if wall > 0.0 {
                (wall - gpu) / wall
            } else {
                f64::NAN
            },
        });
    }
    let doc = json!({"scenario": "overhead", "machine": machine(), "runs": args.live.runs, "rows": rows,
        "method": "per retry: wall time from start to result minus its GPU time, divided by its attempts; all retries of a row run concurrently on one worker"});
    let mut md = format!(
        "# Orchestration overhead: retries of 3 attempts on one worker, {} runs\n\n\
         Median (min–max) over the runs. Per retry: wall time from start to result minus its GPU \
         time, divided by its attempts.\n\n\
         | GPU ms per attempt | in flight | retries | overhead per attempt p50 ms | p95 ms | orchestration share of wall time (%) |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.live.runs
    );
    for &(g, c) in &configs {
        let mine: Vec<&Row> = rows
            .iter()
            .filter(|r| r.gpu_ms_per_attempt == g && r.concurrency == c)
            .collect();
        let s = |f: fn(&Row) -> f64| Spread::of(mine.iter().map(|r| f(r)));
        md.push_str(&format!(
            "| {g} | {c} | {} | {} | {} | {} |\n",
            args.workflows,
            s(|r| r.overhead_per_attempt_ms_p50).show(0, 1.0),
            s(|r| r.overhead_per_attempt_ms_p95).show(0, 1.0),
            s(|r| r.orchestration_share).show(1, 100.0),
        ));
    }
    md.push_str("\nTarget: orchestration ≤ 2 % of wall time at 2 s GPU per attempt.\n");
    write(&args.live.out, "overhead", &doc, &md)
}
