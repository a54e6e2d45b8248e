//! `retake runs versions`: the open retries of the task queue by behaviour version, so an
//! operator knows when an old path of the workflow may be removed (docs/versioning.md).

use crate::cli::{Global, Output};
use crate::connect;
use crate::retries;
use clap::Subcommand;
use retake_workflows::{BEHAVIOUR, BEHAVIOUR_ATTRIBUTE, BEHAVIOURS};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Count the open (Running) retries of the task queue per behaviour version (search
    /// attribute RetakeBehaviour). An old version's path may be removed from the workflow once
    /// no open run has it.
    Versions {
        #[command(flatten)]
        out: Output,
    },
}

pub(crate) async fn run(g: &Global, cmd: RunsCommand) -> anyhow::Result<()> {
    let RunsCommand::Versions { out } = cmd;
    let client = connect::temporal_for(g).await?;
    let counts = retries::open_runs_by_behaviour(&client, &g.task_queue).await?;
    if out.json {
        let doc = json!({
            "task_queue": g.task_queue,
            "current": BEHAVIOUR,
            "replayable": BEHAVIOURS,
            "versions": counts.versions,
            "unrecorded": counts.unrecorded,
            "unknown": counts.unknown(),
            "open": counts.open(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "Open retries on task queue {}, by behaviour version ({BEHAVIOUR_ATTRIBUTE}):",
        g.task_queue
    );
    let unknown = counts.unknown();
    for (version, n) in &counts.versions {
        let note = if version == BEHAVIOUR {
            "  (new runs start with it)"
        } else if unknown.contains(&version.as_str()) {
            "  (this build cannot replay it)"
        } else {
            ""
        };
        println!("  {version:<12} {n:>8}{note}");
    }
    println!(
        "  {:<12} {:>8}  (first workflow task still to run)",
        "not recorded", counts.unrecorded
    );
    println!("{} open", counts.open());
    Ok(())
}
