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
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

/// The SDK's slot count per kind of task, kept for the kinds [`Capacity`] does not limit.
const SDK_DEFAULT_SLOTS: usize = 100;

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
        Capacity::default(),
        activities,
        shutdown,
    )
    .await
}

/// How much one worker takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Workflows kept in memory (see [`DEFAULT_MAX_CACHED_WORKFLOWS`]; at least 1, since 0 would
    /// turn sticky queues off).
    pub max_cached_workflows: u32,
    /// Activity tasks (generations and scorings) run at once; `None` for the SDK's default (100).
    /// A worker in front of one GPU sets 1, so that the attempts of a parallel retry spread over
    /// the workers instead of queueing on the GPU of whichever polled first.
    pub max_concurrent_activities: Option<u32>,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_cached_workflows: DEFAULT_MAX_CACHED_WORKFLOWS,
            max_concurrent_activities: None,
        }
    }
}

/// [`run`] with the given [`Capacity`].
pub async fn run_caching(
    client: Client,
    task_queue: &str,
    capacity: Capacity,
    activities: RetryActivities,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::connect::ensure_search_attributes(&client).await?;
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let cached = usize::try_from(capacity.max_cached_workflows.max(1)).unwrap_or(usize::MAX);
    let mut options = WorkerOptions::new(task_queue)
        .sticky_queue_schedule_to_start_timeout(STICKY_QUEUE_TIMEOUT)
        .max_cached_workflows(cached)
        .register_workflow::<SegmentRetryWorkflow>()?
        .register_activities(activities)
        .build();
    if let Some(slots) = capacity.max_concurrent_activities {
        let slots = usize::try_from(slots.max(1)).unwrap_or(usize::MAX);
        options.tuner = TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(slots))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .build()
            .into();
    }
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
