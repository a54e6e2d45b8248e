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
        /// Only runs started before this time (RFC 3339, e.g. 2027-01-10T12:00:00Z): those a
        /// build deployed then did not start, for removing a `deprecate_patch` call.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        started_before: Option<String>,
        #[command(flatten)]
        out: Output,
    },
}

/// An RFC 3339 time as visibility reads it; the server checks the calendar.
fn parse_time(s: &str) -> Result<String, String> {
    let shape = s.len() >= 20
        && s.as_bytes()[4] == b'-'
        && s.as_bytes()[10] == b'T'
        && s.chars()
            .all(|c| c.is_ascii_digit() || "-:T.Z+".contains(c));
    if shape {
        Ok(s.to_owned())
    } else {
        Err("must be an RFC 3339 time such as 2027-01-10T12:00:00Z".to_owned())
    }
}

pub(crate) async fn run(g: &Global, cmd: RunsCommand) -> anyhow::Result<()> {
    let RunsCommand::Versions {
        started_before,
        out,
    } = cmd;
    let client = connect::temporal_for(g).await?;
    let counts =
        retries::open_runs_by_behaviour(&client, &g.task_queue, started_before.as_deref()).await?;
    if out.json {
        let doc = json!({
            "task_queue": g.task_queue,
            "started_before": started_before,
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
    let since = started_before.map_or_else(String::new, |t| format!(" started before {t}"));
    println!(
        "Open retries on task queue {}{since}, by behaviour version ({BEHAVIOUR_ATTRIBUTE}):",
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
