//! `retake-bench`: benchmarks that report, never assert: `economics` (pure planning over a
//! simulated batch) and the live scenarios `overhead`, `throughput`, `open` and `recovery`, which
//! start their own dev server and worker processes.

mod adaptive_live;
mod economics;
mod harness;
mod open;
mod overhead;
mod parallel;
mod recovery;
mod simulate;
mod throughput;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "retake-bench",
    about = "retake benchmarks (results as JSON, Markdown and plots)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// GPU economics of the retry policies over a large simulated batch.
    Economics(economics::Args),
    /// Orchestration overhead against simulated GPU time.
    Overhead(overhead::Args),
    /// Retries per second and worker CPU/RSS, Rust worker against the Python SDK peer.
    Throughput(throughput::Args),
    /// Worker memory with many retries parked in their review wait, Rust against Python.
    Open(open::Args),
    /// Adaptive retries live: every evidence a workflow chose from checked against the store.
    AdaptiveLive(adaptive_live::Args),
    /// Seconds to resume after SIGKILL of the worker running an attempt, and GPU time lost.
    Recovery(recovery::Args),
    /// Parallel attempts and placement: best-of-3 latency, first-pass losers' GPU, a broken GPU.
    Parallel(parallel::Args),
    /// The decision core's simulator: a long campaign, or how fast a planted defect is caught.
    Simulate(simulate::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Economics(args) = &cli.scenario {
        return economics::run(args);
    }
    if let Scenario::Simulate(args) = &cli.scenario {
        return simulate::run(args);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match &cli.scenario {
            Scenario::Economics(_) | Scenario::Simulate(_) => unreachable!("handled above"),
            Scenario::Overhead(a) => overhead::run(a).await,
            Scenario::Throughput(a) => throughput::run(a).await,
            Scenario::Open(a) => open::run(a).await,
            Scenario::Recovery(a) => recovery::run(a).await,
            Scenario::AdaptiveLive(a) => adaptive_live::run(a).await,
            Scenario::Parallel(a) => parallel::run(a).await,
        }
    })
}
