//! `retake budget set|show <project>`.

use crate::cli::{Global, Output};
use crate::connect;
use clap::Subcommand;
use retake_activities::ports::Budget;
use retake_domain::ProjectId;

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Set a project's GPU budget.
    Set {
        project: String,
        /// Limit in GPU milliseconds.
        #[arg(long, required_unless_present = "unlimited")]
        limit_ms: Option<u64>,
        /// Remove the limit (GPU time is still tracked).
        #[arg(long, conflicts_with = "limit_ms")]
        unlimited: bool,
    },
    /// Show a project's budget: limit, reserved, spent.
    Show {
        project: String,
        #[command(flatten)]
        out: Output,
    },
}

fn print(b: &Budget, out: Output) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(b)?);
        return Ok(());
    }
    let limit = b
        .limit_ms
        .map_or_else(|| "none".to_owned(), |l| format!("{l} ms"));
    println!(
        "Project {}: limit {limit}, reserved {} ms, spent {} ms",
        b.project_id, b.reserved_ms, b.spent_ms
    );
    if let Some(l) = b.limit_ms {
        println!(
            "  remaining: {} ms",
            l.saturating_sub(b.reserved_ms + b.spent_ms)
        );
    }
    Ok(())
}

pub(crate) async fn run(g: &Global, cmd: BudgetCommand) -> anyhow::Result<()> {
    let store = connect::store(&g.database_url).await?;
    match cmd {
        BudgetCommand::Set {
            project,
            limit_ms,
            unlimited,
        } => {
            let project = ProjectId::parse(&project)?;
            let limit = if unlimited { None } else { limit_ms };
            let b = store.set_limit(project.as_str(), limit).await?;
            print(&b, Output { json: false })
        }
        BudgetCommand::Show { project, out } => {
            let project = ProjectId::parse(&project)?;
            let b = store.budget(project.as_str()).await?.unwrap_or(Budget {
                project_id: project.to_string(),
                ..Budget::default()
            });
            print(&b, out)
        }
    }
}
