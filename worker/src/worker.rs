//! The worker: registers `SegmentRetryWorkflow` and its activities on a task queue and runs
//! until the shutdown future resolves.

use retake_activities::RetryActivities;
use retake_activities::backends::{BackendsConfig, ConfigError, Router};
use retake_activities::gpu::Gpu;
use retake_activities::ports::Store;
use retake_activities::ports::{WorkerRegistry, WorkerRow, now_ms};
use retake_activities::sim::Simulator;
use retake_workflows::SegmentRetryWorkflow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::Client;
use temporalio_sdk::runtime::PollerBehavior;
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tokio::sync::watch;

/// The SDK's slot count per kind of task, kept for the kinds a worker does not limit.
const SDK_DEFAULT_SLOTS: usize = 100;

/// Concurrent polls of each generate queue, at most (the SDK's default is 5).
const GENERATE_POLLERS: usize = 2;

/// How long a workflow task waits on a worker's sticky queue before any worker may take it. The
/// default (10 s) would stall a workflow for 10 s after its worker died; 2 s keeps recovery quick
/// at the cost of an occasional full-history replay under load.
pub const STICKY_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// Workflows a worker keeps in memory by default. A cached workflow answers its next task without
/// replaying its history, but holds the SDK's state machines for every command it ever issued
/// (about 270 KiB of RSS each, measured) for as long as it lives: a retry parked for a day in
/// human review would hold it all day. Beyond this many the least recently used is evicted and
/// replayed from its history when it is next needed (a decision on an evicted retry replays a
/// few dozen events first: ~30 ms).
///
/// Why 64 (the SDK's default is 1000): the cache saves a replay only for retries whose next
/// workflow task comes soon, i.e. those whose generations and scores are running on this
/// worker's GPUs; a retry waiting for a GPU elsewhere or for a reviewer replays in a few
/// milliseconds when its turn comes, against seconds of GPU. Measured with `retake-bench`:
/// 1,000 parked retries hold 57 MiB with 64 cached against 109 MiB with 256; with 32 retries in
/// flight at zero GPU time throughput and CPU are the same for both; with 128 in flight (more
/// than the cache) the worker replays constantly: 21 % fewer retries per second and 26 % more
/// CPU per retry than with 256. A worker that keeps more retries in flight at once than this
/// (many GPUs behind one worker, very short generations) should raise it: the SDK then evicts
/// retries that are mid-attempt, which replay their history at their next task. Under that
/// pressure the SDK's core sometimes logs "There should not be any outgoing commands or
/// messages when preparing a completion response if the activation was only an eviction. This
/// is an SDK bug." (once while 10,000 retries were parked by 16 starters at once; every retry
/// still reached its review wait).
pub const DEFAULT_MAX_CACHED_WORKFLOWS: u32 = 64;

/// The activities with the simulator as generation and QA backend.
pub fn simulator_activities(store: Arc<dyn Store>, sim: Simulator) -> RetryActivities {
    let sim = Arc::new(sim);
    RetryActivities::new(
        sim.clone(),
        sim,
        store.clone(),
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
    run_with(
        client,
        task_queue,
        &WorkerSetup::default(),
        activities,
        shutdown,
    )
    .await
}

/// Who a worker is and how much it takes on at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSetup {
    /// Workflows kept in memory (see [`DEFAULT_MAX_CACHED_WORKFLOWS`]; at least 1, since 0 would
    /// turn sticky queues off).
    pub max_cached_workflows: u32,
    /// Generations run at once (its GPUs); `None` for no limit beyond the SDK's 100 slots. A
    /// worker in front of one GPU sets 1, so that the attempts of a parallel retry spread over
    /// the workers instead of queueing on the GPU of whichever polled first.
    pub max_concurrent_generations: Option<u32>,
    /// The name attempts record and placement routes by; `None`: `<pid>@<host>`.
    pub worker_id: Option<String>,
    /// Infrastructure failures in a row after which the worker stops taking generations from
    /// the shared queue for [`WorkerSetup::cool_down`] (0: never).
    pub cool_down_after: u32,
    pub cool_down: Duration,
}

/// Infrastructure failures in a row before a worker cools down, by default.
pub const DEFAULT_COOL_DOWN_AFTER: u32 = 3;
/// How long a cool-down lasts, by default.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(60);
/// How often a worker refreshes its row in the registry (placement counts a worker alive for
/// `WORKER_ALIVE_MS`, three of these).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

impl Default for WorkerSetup {
    fn default() -> Self {
        Self {
            max_cached_workflows: DEFAULT_MAX_CACHED_WORKFLOWS,
            max_concurrent_generations: None,
            worker_id: None,
            cool_down_after: DEFAULT_COOL_DOWN_AFTER,
            cool_down: DEFAULT_COOL_DOWN,
        }
    }
}

/// `<pid>@<host>`, the SDK's own default identity: what the web UI shows as the worker.
pub fn default_worker_id() -> String {
    format!(
        "{}@{}",
        std::process::id(),
        gethostname::gethostname().to_string_lossy()
    )
}

/// Run a worker as `setup` says. One process polls three task queues: `task_queue` (workflow
/// tasks, scoring, and the generations it promised to take eagerly), the shared generate queue
/// `<task_queue>/generate` (left alone while cooling down) and its own
/// `<task_queue>/generate/<worker id>` (re-runs placed on it by name). Beside them it announces
/// itself in the store's worker registry every [`ANNOUNCE_EVERY`].
pub async fn run_with(
    client: Client,
    task_queue: &str,
    setup: &WorkerSetup,
    activities: RetryActivities,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::connect::ensure_search_attributes(&client).await?;
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let worker_id = setup.worker_id.clone().unwrap_or_else(default_worker_id);
    let slots = setup
        .max_concurrent_generations
        .map_or(SDK_DEFAULT_SLOTS, |n| {
            usize::try_from(n.max(1)).unwrap_or(usize::MAX)
        });
    // A worker without a GPU limit takes its own generations eagerly (no poll of the shared
    // queue between the workflow task and the generation); one with a limit leaves them all to
    // the shared queue's pollers, which take one only while a GPU is free.
    let gpu = Arc::new(
        Gpu::new(&worker_id, slots, setup.cool_down_after)
            .eager(setup.max_concurrent_generations.is_none()),
    );
    let registry = activities.workers();
    let activities = activities.on_gpu(gpu.clone());
    let cached = usize::try_from(setup.max_cached_workflows.max(1)).unwrap_or(usize::MAX);
    let main = Worker::new(
        &runtime,
        client.clone(),
        WorkerOptions::new(task_queue)
            .client_identity_override(worker_id.clone())
            .sticky_queue_schedule_to_start_timeout(STICKY_QUEUE_TIMEOUT)
            .max_cached_workflows(cached)
            .register_workflow::<SegmentRetryWorkflow>()?
            .register_activities(activities.clone())
            .build(),
    )?;
    let generations = |queue: &str| -> anyhow::Result<Worker> {
        // Few pollers: a GPU worker takes a generation only when a GPU is free, and every idle
        // long poll is a request the server holds.
        let pollers = slots.min(GENERATE_POLLERS);
        let mut options = WorkerOptions::new(queue)
            .client_identity_override(worker_id.clone())
            .activity_task_poller_behavior(PollerBehavior::SimpleMaximum(pollers))
            .register_activities(activities.clone())
            .build();
        options.tuner = TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(slots))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(SDK_DEFAULT_SLOTS))
            .build()
            .into();
        Ok(Worker::new(&runtime, client.clone(), options)?)
    };
    let shared_queue = retake_domain::generate_queue(task_queue);
    let own_queue = retake_domain::worker_generate_queue(task_queue, &worker_id);
    let own = generations(&own_queue)?;
    let (stop, stopped) = watch::channel(false);
    let stop_on_error = |ran: anyhow::Result<()>| {
        if ran.is_err() {
            let _ = stop.send(true);
        }
        ran
    };
    let shared = async {
        loop {
            let worker = generations(&shared_queue)?;
            let Some(cooled) = until_stopped_or(worker, stopped.clone(), gpu.failing()).await?
            else {
                return Ok(());
            };
            let until = now_ms().saturating_add(millis(setup.cool_down));
            gpu.set_cooling_until(until);
            tracing::warn!(
                worker = %worker_id,
                infrastructure_failures_in_row = cooled,
                cool_down_secs = setup.cool_down.as_secs(),
                "cooling down: taking no generations from the shared queue"
            );
            let _ = announce(&*registry, task_queue, &worker_id, &own_queue, until).await;
            let mut watch_stop = stopped.clone();
            tokio::select! {
                () = tokio::time::sleep(setup.cool_down) => {}
                _ = watch_stop.wait_for(|s| *s) => return Ok(()),
            }
            tracing::info!(worker = %worker_id, "cool-down over: taking generations again");
        }
    };
    let announcing = async {
        let mut watch_stop = stopped.clone();
        loop {
            let until = gpu.cooling_until();
            if let Err(e) = announce(&*registry, task_queue, &worker_id, &own_queue, until).await {
                tracing::warn!("announcing the worker in the registry failed: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
                _ = watch_stop.wait_for(|s| *s) => return,
            }
        }
    };
    let stopping = async {
        let mut watch_stop = stopped.clone();
        tokio::select! {
            () = shutdown => { let _ = stop.send(true); }
            _ = watch_stop.wait_for(|s| *s) => {}
        }
    };
    let (main, own, shared, (), ()) = tokio::join!(
        async { stop_on_error(until_stopped(main, stopped.clone()).await) },
        async { stop_on_error(until_stopped(own, stopped.clone()).await) },
        async { stop_on_error(shared.await) },
        announcing,
        stopping,
    );
    main.and(own).and(shared)
}

/// Run `worker` until `stop` says so, then let it finish its tasks.
async fn until_stopped(worker: Worker, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    until_stopped_or(worker, stop, std::future::pending::<()>())
        .await
        .map(|_| ())
}

/// Run `worker` until `stop` says so or `or` resolves (its value returned), then let it finish
/// its tasks.
async fn until_stopped_or<T>(
    mut worker: Worker,
    mut stop: watch::Receiver<bool>,
    or: impl Future<Output = T>,
) -> anyhow::Result<Option<T>> {
    let shut_down = worker.shutdown_handle();
    let running = worker.run();
    tokio::pin!(running, or);
    let value = tokio::select! {
        ran = &mut running => {
            ran?;
            return Ok(None);
        }
        _ = stop.wait_for(|s| *s) => None,
        value = &mut or => Some(value),
    };
    shut_down();
    running.await?;
    Ok(value)
}

async fn announce(
    registry: &dyn WorkerRegistry,
    task_queue: &str,
    worker_id: &str,
    own_queue: &str,
    cooling_until_ms: u64,
) -> Result<(), retake_activities::ports::StoreError> {
    registry
        .announce(&WorkerRow {
            worker_id: worker_id.to_owned(),
            task_queue: task_queue.to_owned(),
            generate_queue: own_queue.to_owned(),
            seen_at_ms: now_ms(),
            cooling_until_ms,
        })
        .await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
