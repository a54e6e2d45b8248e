//! The worker: registers `SegmentRetryWorkflow` and its activities on a task queue and runs
//! until the shutdown future resolves.

use retake_activities::RetryActivities;
use retake_activities::backends::{BackendsConfig, ConfigError, Router};
use retake_activities::ports::Store;
use retake_activities::sim::Simulator;
use retake_workflows::SegmentRetryWorkflow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::Client;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

/// How long a workflow task waits on a worker's sticky queue before any worker may take it. The
/// default (10 s) would stall a workflow for 10 s after its worker died; 2 s keeps recovery quick
/// at the cost of an occasional full-history replay under load.
pub const STICKY_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Workflows a worker keeps in memory by default. A cached workflow answers its next task without
/// replaying its history, but holds its state (a few hundred KiB) for as long as it lives: a
/// retry parked for a day in human review would hold it all day. Beyond this many the least
/// recently used is evicted and replayed from its history when it is next needed (a decision
/// on an evicted retry replays a few dozen events first). The SDK's default is 1000.
pub const DEFAULT_MAX_CACHED_WORKFLOWS: u32 = 256;

/// The activities with the simulator as generation and QA backend.
pub fn simulator_activities(store: Arc<dyn Store>, sim: Simulator) -> RetryActivities {
    let sim = Arc::new(sim);
    RetryActivities::new(
        sim.clone(),
        sim,
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    )
}

/// The activities with the backends of `config`: scene types it does not route, and every scene
/// type without a configuration, use `sim`. Adapters are built now, so a bad configuration (an
/// unreadable ComfyUI graph, a missing API key variable) stops the worker before it polls.
pub fn configured_activities(
    store: Arc<dyn Store>,
    sim: Simulator,
    config: Option<&BackendsConfig>,
) -> Result<RetryActivities, ConfigError> {
    let Some(config) = config else {
        return Ok(simulator_activities(store, sim));
    };
    let router = Arc::new(Router::from_config(config, sim)?);
    Ok(RetryActivities::new(
        router.clone(),
        router,
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    ))
}

/// Run a worker on `task_queue` until `shutdown` resolves, then finish in-flight work and return.
/// Must be awaited on the current task (the SDK's worker future is not `Send`).
pub async fn run(
    client: Client,
    task_queue: &str,
    activities: RetryActivities,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_caching(
        client,
        task_queue,
        DEFAULT_MAX_CACHED_WORKFLOWS,
        activities,
        shutdown,
    )
    .await
}

/// [`run`] keeping at most `max_cached_workflows` workflows in memory (see
/// [`DEFAULT_MAX_CACHED_WORKFLOWS`]; at least 1, since 0 would turn sticky queues off).
pub async fn run_caching(
    client: Client,
    task_queue: &str,
    max_cached_workflows: u32,
    activities: RetryActivities,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::connect::ensure_search_attributes(&client).await?;
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let options = WorkerOptions::new(task_queue)
        .sticky_queue_schedule_to_start_timeout(STICKY_QUEUE_TIMEOUT)
        .max_cached_workflows(usize::try_from(max_cached_workflows.max(1)).unwrap_or(usize::MAX))
        .register_workflow::<SegmentRetryWorkflow>()?
        .register_activities(activities)
        .build();
    let mut worker = Worker::new(&runtime, client, options)?;
    let stop = worker.shutdown_handle();
    let running = worker.run();
    tokio::pin!(running);
    tokio::select! {
        ran = &mut running => ran?,
        () = shutdown => {
            stop();
            running.await?;
        }
    }
    Ok(())
}
