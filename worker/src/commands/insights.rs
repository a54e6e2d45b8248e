//! `retake insights <scene-type>`: which variations fixed which failures, from the store.

use crate::cli::{Global, Output};
use crate::connect;
use clap::Args;

#[derive(Debug, Args)]
pub struct InsightsArgs {
    /// Scene type.
    scene_type: String,
    /// Count the latest N scored attempts (default: the stored policy's `adaptive.window`, else
    /// 2000).
    #[arg(long)]
    window: Option<u32>,
    /// Count only attempts recorded under this scope (default: the stored policy's
    /// `adaptive.scope`).
    #[arg(long)]
    scope: Option<String>,
    #[command(flatten)]
    out: Output,
}

pub(crate) async fn run(g: &Global, args: InsightsArgs) -> anyhow::Result<()> {
    let scene = retake_domain::SceneType::parse(&args.scene_type)?;
    if let Some(w) = args.window {
        anyhow::ensure!(
            retake_domain::policy::ADAPTIVE_WINDOW_RANGE.contains(&w),
            "--window must be between 1 and 10000, got {w}"
        );
    }
    let store = connect::store(&g.database_url).await?;
    let found =
        retake_activities::stats::insights(store.as_ref(), &scene, args.window, args.scope).await?;
    if args.out.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    let scope = found
        .scope
        .as_deref()
        .map_or_else(String::new, |s| format!(" in scope {s}"));
    if found.insights.is_empty() {
        println!(
            "Scene type {scene}: no scored attempts with a recorded variation among the latest {}{scope}",
            found.window
        );
        return Ok(());
    }
    println!(
        "Scene type {scene}: the latest {} scored attempts{scope}",
        found.window
    );
    println!(
        "{:<20} {:<24} {:>8} {:>7} {:>6}  {:<13} {:>9}",
        "failure", "variation", "attempts", "passed", "rate", "95% interval", "mean gain"
    );
    for i in &found.insights {
        println!(
            "{:<20} {:<24} {:>8} {:>7} {:>5.0}%  {:>4.0}%–{:>4.0}%   {:>+9.3}",
            i.failure_kind,
            i.arm,
            i.attempts,
            i.passes,
            i.pass_rate * 100.0,
            i.low * 100.0,
            i.high * 100.0,
            i.mean_gain
        );
    }
    Ok(())
}
