//! One module per subcommand.

pub mod budget;
pub mod control;
pub mod demo;
pub mod history;
pub mod policy;
pub mod retry;

use crate::cli::{Global, WorkerArgs};
use crate::{connect, worker};
use retake_activities::sim::Simulator;
use std::sync::Arc;

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

pub(crate) async fn worker(g: &Global, args: WorkerArgs) -> anyhow::Result<()> {
    let client = connect::temporal(g.temporal_address.as_deref()).await?;
    let store = Arc::new(connect::store(&g.database_url).await?);
    let activities = worker::simulator_activities(
        store,
        Simulator::new(args.sim_gpu_ms).with_qa_ms(args.sim_qa_ms),
    );
    tracing::info!(task_queue = %g.task_queue, "worker started");
    worker::run(client, &g.task_queue, activities, shutdown_signal()).await?;
    tracing::info!("worker stopped");
    Ok(())
}
