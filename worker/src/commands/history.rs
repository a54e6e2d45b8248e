//! `retake history <segment>`: every recorded attempt, from the store.

use crate::cli::{Global, Output};
use crate::connect;
use clap::Args;
use serde_json::json;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Segment id.
    segment: String,
    #[command(flatten)]
    out: Output,
}

pub(crate) async fn run(g: &Global, args: HistoryArgs) -> anyhow::Result<()> {
    let segment = retake_domain::SegmentId::parse(&args.segment)?;
    let store = connect::store(&g.database_url).await?;
    let attempts = store.attempts(segment.as_str()).await?;
    let outcomes = store.outcomes(segment.as_str()).await?;
    if args.out.json {
        let doc = json!({"segment_id": segment.as_str(), "runs": outcomes, "attempts": attempts});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if attempts.is_empty() && outcomes.is_empty() {
        println!("Segment {segment}: no retries recorded");
        return Ok(());
    }
    for o in &outcomes {
        println!("{}", o.report);
        println!(
            "  run {} · outcome {} · review {} · {} GPU ms",
            o.run_id, o.outcome, o.review, o.gpu_ms_total
        );
    }
    println!(
        "{:<8} {:<18} {:<10} {:>8} {:>9}  {:<24} params",
        "attempt", "seed", "status", "gpu_ms", "selected", "scores"
    );
    for a in &attempts {
        let r = &a.record;
        let scores: Vec<String> = r
            .scores
            .iter()
            .map(|(m, s)| format!("{m} {s:.3}"))
            .collect();
        let jitter: Vec<String> = r
            .jitter
            .iter()
            .map(|c| format!("{} {}→{}", c.param, c.original, c.value))
            .collect();
        println!(
            "{:<8} {:<18} {:<10} {:>8} {:>9}  {:<24} {}",
            r.attempt,
            r.seed,
            r.status.as_str(),
            r.gpu_ms,
            if a.selected { "yes" } else { "" },
            scores.join(", "),
            jitter.join(", ")
        );
        if !r.failures.is_empty() {
            println!("{:<8} failures: {}", "", r.failures.join(", "));
        }
        if let Some(error) = &r.error {
            let kind = r.error_type.as_deref().unwrap_or("error");
            println!("{:<8} {kind}: {error}", "");
        }
        if let Some(v) = &r.variation {
            let gain = v
                .gain
                .map_or_else(String::new, |g| format!(" · gain {g:+.3}"));
            let why = v
                .why
                .as_deref()
                .map_or_else(String::new, |w| format!(" · {w}"));
            println!(
                "{:<8} variation: {} ({}) for {}{gain}{why}",
                "",
                v.words(),
                v.chosen_by.as_str(),
                v.targets.join(", ")
            );
        }
        if let Some(note) = &r.note {
            println!("{:<8} note: {note}", "");
        }
        if let Some(uri) = &r.output_uri {
            println!("{:<8} output: {uri}", "");
        }
        if let Some(worker) = &r.worker {
            println!("{:<8} worker: {worker}", "");
        }
        if let Some(strategy) = r.strategy {
            let revises = r
                .revises
                .map_or_else(String::new, |k| format!(" · revised attempt {k}"));
            println!("{:<8} strategy: {strategy}{revises}", "");
        }
        for c in &r.breakdown {
            println!("{:<8} {} {:.2}: {}", "", c.category, c.score, c.feedback);
        }
        if let Some(prompt) = &r.prompt {
            println!("{:<8} prompt: {}", "", prompt.replace('\n', " / "));
        }
    }
    Ok(())
}
