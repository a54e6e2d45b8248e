//! `retake-bench simulate`: a long campaign of the decision core's simulator
//! ([`retake_domain::simulate`]), and, with `--plant`, how fast it catches a defect planted on
//! purpose, with the shrunk scenario that shows it.

use anyhow::bail;
use retake_domain::simulate::{self, Defect};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Scenarios to run (seeds `from..from + scenarios`).
    #[arg(long, default_value_t = 100_000)]
    scenarios: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Plant a defect: `rerun-billed-twice`, `recorded-twice` or `start-after-abort`.
    #[arg(long)]
    plant: Option<String>,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let defect = match args.plant.as_deref().map(|p| (p, Defect::parse(p))) {
        None => None,
        Some((_, Some(d))) => Some(d),
        Some((p, None)) => {
            bail!("unknown defect {p:?}: rerun-billed-twice, recorded-twice or start-after-abort")
        }
    };
    let started = Instant::now();
    match simulate::campaign(args.from..args.from + args.scenarios, defect) {
        Ok((scenarios, steps)) => {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{scenarios} scenarios, {steps} steps, every invariant held: {secs:.1} s, \
                 {:.0} scenarios/s, {:.0} steps/s",
                scenarios as f64 / secs,
                steps as f64 / secs
            );
            if defect.is_some() {
                bail!("the planted defect was not caught");
            }
            Ok(())
        }
        Err((seed, explained)) => {
            println!(
                "scenario {seed} failed after {:.2} s (found and shrunk):\n{explained}",
                started.elapsed().as_secs_f64()
            );
            if defect.is_none() {
                bail!("an invariant broke");
            }
            Ok(())
        }
    }
}
