//! The reservation sweeper: an attempt whose workflow was terminated (or timed out, or was reset)
//! never settles or releases its own reservation; this gives such reservations back.

use anyhow::Context;
use retake_activities::ports::BudgetLedger;
use std::time::{Duration, SystemTime};
use temporalio_client::Client;

/// How old a held reservation must be before the sweeper asks Temporal about its workflow.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(600);
/// How often `retake worker` sweeps.
pub const INTERVAL: Duration = Duration::from_secs(300);

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Held reservations older than the minimum age.
    pub checked: usize,
    /// Of those, released because their workflow run is closed or gone.
    pub released: usize,
}

/// Is this workflow run still running? A run the server does not know any more is not.
async fn running(client: &Client, workflow_id: &str, run_id: &str) -> anyhow::Result<bool> {
    let run = retake_client::describe_run(client, workflow_id, Some(run_id))
        .await
        .with_context(|| format!("describing {workflow_id}/{run_id}"))?;
    Ok(run.is_some_and(|r| r.running))
}

/// Release every reservation held for at least `min_age` whose workflow run is no longer
/// running. Reservations of running workflows are never touched.
pub async fn sweep(
    client: &Client,
    ledger: &dyn BudgetLedger,
    min_age: Duration,
) -> anyhow::Result<Swept> {
    let before = SystemTime::now() - min_age;
    let held = ledger
        .held_before(before)
        .await
        .context("listing held reservations")?;
    let mut swept = Swept {
        checked: held.len(),
        released: 0,
    };
    for r in held {
        if !running(client, &r.key.workflow_id, &r.key.run_id).await? {
            ledger
                .release(&r.key)
                .await
                .context("releasing a reservation")?;
            tracing::warn!(
                workflow_id = %r.key.workflow_id, run_id = %r.key.run_id, attempt = r.key.attempt,
                project_id = %r.project_id, reserved_ms = r.reserved_ms,
                "released the reservation of an attempt whose workflow is no longer running"
            );
            swept.released += 1;
        }
    }
    Ok(swept)
}
