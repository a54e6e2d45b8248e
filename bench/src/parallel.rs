//! `parallel`: what parallel attempts and placement buy, with `retake worker` processes acting as
//! one GPU each (`--max-concurrent-generations 1`, simulated GPU time).
//!
//! 1. Latency of a best-of-3 retry, one attempt at a time against three at once, on one worker
//!    and on three.
//! 2. `first_pass` with three at once: GPU time spent on the losers that the first pass
//!    cancelled, against one at a time.
//! 3. One of three workers broken (every generation fails with CUDA out of memory): fix rate and
//!    GPU per fixed segment with `placement: any` against `avoid_failed`.

use crate::harness::{Live, Spread, machine, request, scratch_dir, write};
use retake_domain::contract::{AttemptStatus, Outcome, RetryResult};
use retake_testkit::WorkerProcess;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;
use temporalio_client::Client;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    live: Live,
    /// Simulated GPU milliseconds per generation.
    #[arg(long, default_value_t = 3_000)]
    gpu_ms: u64,
    /// Segments per `first_pass` and placement measurement.
    #[arg(long, default_value_t = 24)]
    segments: usize,
}

/// One-GPU workers on `queue`, one per entry of `gpu_ms` (its generation time), the last
/// `broken` of them failing every generation; `cool_down_after` as `retake worker` takes it.
#[allow(clippy::too_many_arguments)]
fn gpus(
    bin: &Path,
    address: &str,
    queue: &str,
    db: &Path,
    gpu_ms: &[u64],
    broken: usize,
    cool_down_after: u32,
) -> anyhow::Result<Vec<WorkerProcess>> {
    let db_url = format!("sqlite://{}", db.display());
    let n = gpu_ms.len();
    gpu_ms
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            let mut w = WorkerProcess::builder(bin, address, queue, &db_url)
                .sim_gpu_ms(*ms)
                .max_concurrent_generations(1)
                .worker_id(&format!("gpu-{i}"))
                .env("RETAKE_COOL_DOWN_AFTER", cool_down_after.to_string());
            if i >= n - broken {
                w = w.sim_infrastructure_failure("CUDA out of memory (simulated)");
            }
            Ok(w.spawn()?)
        })
        .collect()
}

/// Start every request at once; their results, and the seconds until the last one ended.
async fn run_all(
    client: &Client,
    queue: &str,
    requests: Vec<Value>,
) -> anyhow::Result<(Vec<RetryResult>, f64)> {
    let started = Instant::now();
    let mut handles = Vec::new();
    for r in requests {
        handles.push(retake_client::start(client, queue, r).await?);
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(retake_client::result(&h).await?);
    }
    Ok((results, started.elapsed().as_secs_f64()))
}

#[derive(Debug, Serialize)]
struct Latency {
    workers: usize,
    parallelism: u32,
    seconds: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct FirstPass {
    parallelism: u32,
    seconds: f64,
    passed: usize,
    gpu_ms_total: u64,
    gpu_ms_cancelled: u64,
    cancelled: usize,
}

#[derive(Debug, Serialize)]
struct Routing {
    placement: &'static str,
    cool_down_after: u32,
    segments: usize,
    fixed: usize,
    gpu_ms_total: u64,
    infrastructure_errors: usize,
    re_runs: usize,
    seconds: f64,
}

pub(crate) async fn run(args: &Args) -> anyhow::Result<()> {
    let server = args.live.start_server()?;
    let address = server.address().to_owned();
    let client = retake::connect::temporal(Some(&address)).await?;
    let bin = args.live.retake_bin()?;
    let dir = scratch_dir()?;
    let tag = std::process::id();
    let mut n = 0;
    let mut fresh = |name: &str| {
        n += 1;
        (
            format!("bench-par-{name}-{n}"),
            dir.path().join(format!("{name}-{n}.db")),
        )
    };

    // 1. Latency of best of three.
    let mut latency = Vec::new();
    for (workers, parallelism) in [(1, 1), (1, 3), (3, 1), (3, 3)] {
        let mut seconds = Vec::new();
        for run in 0..args.live.runs.max(1) {
            let (queue, db) = fresh("latency");
            let _w = gpus(
                &bin,
                &address,
                &queue,
                &db,
                &vec![args.gpu_ms; workers],
                0,
                3,
            )?;
            let policy = json!({"enabled": true, "selection": "best_of_n", "max_attempts": 3,
                "parallelism": parallelism, "review_window_secs": 0});
            let seg = format!("{queue}-{tag}-{run}");
            let (results, secs) = run_all(&client, &queue, vec![request(&seg, policy)]).await?;
            anyhow::ensure!(results[0].attempts.len() == 3, "{}", results[0].report);
            eprintln!("{workers} worker(s), parallelism {parallelism}: {secs:.2} s");
            seconds.push(secs);
        }
        latency.push(Latency {
            workers,
            parallelism,
            seconds,
        });
    }

    // 2. First pass: the losers' GPU time, on GPUs of different speeds (half, same, one and a
    // half times `gpu_ms`): with equal ones every attempt finishes at once, nothing is left to
    // cancel, and every loser is paid in full.
    let speeds = [args.gpu_ms / 2, args.gpu_ms, args.gpu_ms * 3 / 2];
    let mut first = Vec::new();
    for parallelism in [1, 3] {
        let (queue, db) = fresh("first");
        let _w = gpus(&bin, &address, &queue, &db, &speeds, 0, 3)?;
        let policy = json!({"enabled": true, "max_attempts": 3, "parallelism": parallelism,
            "review_window_secs": 0});
        let mut totals = FirstPass {
            parallelism,
            seconds: 0.0,
            passed: 0,
            gpu_ms_total: 0,
            gpu_ms_cancelled: 0,
            cancelled: 0,
        };
        // One segment at a time, the same segments for both: each has the three GPUs to itself.
        for i in 0..args.segments {
            let seg = format!("bench-first-{tag}-{i}");
            let (results, secs) =
                run_all(&client, &queue, vec![request(&seg, policy.clone())]).await?;
            let r = &results[0];
            totals.seconds += secs;
            totals.passed += usize::from(r.outcome == Outcome::Passed);
            totals.gpu_ms_total += r.gpu_ms_total;
            for a in r
                .attempts
                .iter()
                .filter(|a| a.status == AttemptStatus::Cancelled)
            {
                totals.cancelled += 1;
                totals.gpu_ms_cancelled += a.gpu_ms;
            }
        }
        eprintln!("first_pass, parallelism {parallelism}: {totals:?}");
        first.push(totals);
    }

    // 3. One broken GPU of three.
    let mut routing = Vec::new();
    for (cool_down_after, placement) in [
        (0, "any"),
        (0, "avoid_failed"),
        (3, "any"),
        (3, "avoid_failed"),
    ] {
        let (queue, db) = fresh("route");
        let _w = gpus(
            &bin,
            &address,
            &queue,
            &db,
            &[args.gpu_ms; 3],
            1,
            cool_down_after,
        )?;
        let policy = json!({"enabled": true, "max_attempts": 3, "placement": placement,
            "review_window_secs": 0});
        let requests = (0..args.segments)
            .map(|i| request(&format!("bench-route-{tag}-{i}"), policy.clone()))
            .collect();
        let (results, seconds) = run_all(&client, &queue, requests).await?;
        let attempts = results.iter().flat_map(|r| &r.attempts);
        let r = Routing {
            placement,
            cool_down_after,
            segments: results.len(),
            fixed: results
                .iter()
                .filter(|r| r.outcome == Outcome::Passed)
                .count(),
            gpu_ms_total: results.iter().map(|r| r.gpu_ms_total).sum(),
            infrastructure_errors: attempts
                .clone()
                .filter(|a| {
                    a.error_type.as_deref() == Some(retake_domain::contract::INFRASTRUCTURE_FAILURE)
                })
                .count(),
            re_runs: attempts
                .filter(|a| a.note.as_deref().is_some_and(|n| n.contains("re-run")))
                .count(),
            seconds,
        };
        eprintln!("{placement}: {r:?}");
        routing.push(r);
    }

    let median = |l: &Latency| Spread::of(l.seconds.iter().copied()).median;
    let find = |w: usize, p: u32| {
        latency
            .iter()
            .find(|l| l.workers == w && l.parallelism == p)
            .map_or(f64::NAN, median)
    };
    let ratio3 = find(3, 3) / find(3, 1);
    let doc = json!({"scenario": "parallel", "machine": machine(), "gpu_ms": args.gpu_ms,
        "segments": args.segments, "latency": latency, "ratio_parallel_serial_3_workers": ratio3,
        "first_pass": first, "routing": routing});
    let mut md = format!(
        "# Parallel attempts and placement ({} ms of simulated GPU per generation, one-GPU \
         worker processes)\n\n## Best of 3: seconds until the result\n\n\
         | workers | parallelism | seconds, median (min–max) |\n| ---: | ---: | ---: |\n",
        args.gpu_ms
    );
    for l in &latency {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            l.workers,
            l.parallelism,
            Spread::of(l.seconds.iter().copied()).show(2, 1.0)
        ));
    }
    md.push_str(&format!(
        "\nWith 3 workers, parallel / serial = **{ratio3:.2}** (target ≤ 0.4). With one worker \
         the attempts queue for its GPU: parallelism buys nothing.\n\n\
         ## first_pass, {} segments one after another, 3 workers of different speeds \
         ({}, {} and {} ms per generation)\n\n\
         | parallelism | seconds | passed | GPU s billed | cancelled losers | their GPU s |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.segments, speeds[0], speeds[1], speeds[2]
    ));
    for f in &first {
        md.push_str(&format!(
            "| {} | {:.1} | {} | {:.1} | {} | {:.1} |\n",
            f.parallelism,
            f.seconds,
            f.passed,
            f.gpu_ms_total as f64 / 1000.0,
            f.cancelled,
            f.gpu_ms_cancelled as f64 / 1000.0
        ));
    }
    md.push_str(&format!(
        "\n## One of three workers broken (CUDA out of memory), {} segments at once, first_pass, \
         3 attempts\n\n\
         | placement | cool-down after | fixed | GPU s billed | GPU s per fix | infrastructure \
         errors recorded | re-runs elsewhere | seconds |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.segments
    ));
    for r in &routing {
        md.push_str(&format!(
            "| `{}` | {} | {}/{} | {:.1} | {:.2} | {} | {} | {:.1} |\n",
            r.placement,
            match r.cool_down_after {
                0 => "never".to_owned(),
                n => format!("{n} in a row"),
            },
            r.fixed,
            r.segments,
            r.gpu_ms_total as f64 / 1000.0,
            r.gpu_ms_total as f64 / 1000.0 / r.fixed.max(1) as f64,
            r.infrastructure_errors,
            r.re_runs,
            r.seconds
        ));
    }
    write(&args.live.out, "parallel", &doc, &md)
}
