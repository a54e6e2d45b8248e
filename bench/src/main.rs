//! `retake-bench`: benchmarks that report, never assert. Today: `economics`.

mod economics;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Economics(args) => economics::run(&args),
    }
}
