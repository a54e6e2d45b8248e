//! One module per subcommand.

pub mod budget;
pub mod control;
pub mod demo;
pub mod history;
pub mod insights;
pub mod policy;
pub mod retry;
pub mod runs;

use crate::cli::{ApiArgs, Global, SweepArgs, WorkerArgs};
use crate::{connect, memory, sweep, worker};
use anyhow::Context;
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
    let client = connect::temporal_for(g).await?;
    let store = connect::store(&g.database_url).await?;
    let backends = args
        .backends
        .as_deref()
        .map(retake_activities::backends::BackendsConfig::load)
        .transpose()?
        .map(|mut config| {
            config.file_roots.extend(g.file_roots.iter().cloned());
            config.url_roots.extend(g.url_roots.iter().cloned());
            config
        });
    let activities = worker::configured_activities(
        store.clone(),
        {
            let sim = Simulator::new(args.sim_gpu_ms).with_qa_ms(args.sim_qa_ms);
            match &args.sim_infrastructure_failure {
                Some(message) => sim.broken(message.clone()),
                None => sim,
            }
        },
        backends.as_ref(),
    )?;
    tracing::info!(task_queue = %g.task_queue, backends = ?args.backends, "worker started");
    // Beside the worker: give back reservations of workflows that ended without settling them.
    let sweeping = async {
        let mut every = tokio::time::interval(sweep::INTERVAL);
        loop {
            every.tick().await;
            if let Err(e) = sweep::sweep(&client, store.as_ref(), sweep::DEFAULT_MIN_AGE).await {
                tracing::warn!("reservation sweep failed: {e:#}");
            }
        }
    };
    let setup = worker::WorkerSetup {
        max_cached_workflows: args.max_cached_workflows,
        max_concurrent_generations: args.max_concurrent_generations,
        worker_id: args.worker_id.clone(),
        cool_down_after: args.cool_down_after,
        cool_down: std::time::Duration::from_secs(args.cool_down_secs),
    };
    // And: give back what the worker freed (evicted workflows, finished activities).
    let releasing = async {
        match args.release_memory_every_secs {
            0 => std::future::pending().await,
            secs => memory::release_freed_every(std::time::Duration::from_secs(secs)).await,
        }
    };
    tokio::select! {
        ran = worker::run_with(client.clone(), &g.task_queue, &setup, activities, shutdown_signal()) => ran?,
        () = sweeping => {}
        () = releasing => {}
    }
    tracing::info!("worker stopped");
    Ok(())
}

pub(crate) async fn sweep_reservations(g: &Global, args: SweepArgs) -> anyhow::Result<()> {
    let client = connect::temporal_for(g).await?;
    let store = connect::store(&g.database_url).await?;
    let min_age = std::time::Duration::from_secs(args.older_than_secs);
    let swept = sweep::sweep(&client, store.as_ref(), min_age).await?;
    println!(
        "checked {} held reservations older than {} s; released {} whose workflow is no longer running",
        swept.checked, args.older_than_secs, swept.released
    );
    Ok(())
}

pub(crate) async fn api(g: &Global, args: ApiArgs) -> anyhow::Result<()> {
    let spec = std::env::var("RETAKE_API_TOKENS").context(
        "RETAKE_API_TOKENS is not set: give at least one token, e.g. admin=<token>,creator=<token>,viewer=<token>",
    )?;
    let mut tokens = retake_api::Tokens::parse(&spec)?;
    if let Some(header) = &args.user_header {
        tokens = tokens.trusting_user_header(header)?;
        tracing::warn!(%header, "names come from this request header: only the auth proxy may reach this API");
    }
    let temporal = connect::temporal_for(g).await?;
    let store = connect::api_store(&g.database_url).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "API listening");
    let state = retake_api::AppState {
        store,
        temporal,
        task_queue: g.task_queue.clone(),
        tokens: Arc::new(tokens),
        console: retake_api::Console::new(&args.temporal_ui),
        files: g.files(),
        urls: g.urls(),
    };
    tracing::info!(console = %format!("http://{}/ui", args.listen), "review console");
    let options = args.serve_options();
    retake_api::serve_with(listener, state, shutdown_signal(), options).await?;
    Ok(())
}
