//! The activities of `SegmentRetryWorkflow`, as small ports with adapters beside them.
//!
//! [`RetryActivities`] holds one `Arc<dyn Port>` per capability and turns port errors into
//! Temporal failures in one place ([`failure`]): unavailable stores and transient backend errors
//! are retried by Temporal, invalid data and rejected requests are not.

pub mod backends;
pub mod files;
pub mod gpu;
pub mod io;
mod log;
pub mod meter;
pub mod ports;
pub mod sim;
pub mod stats;
pub mod store;
pub mod urls;

use crate::gpu::Gpu;
use crate::io::{
    AttemptKey, GenerateRequest, Generated, LoadEvidence, LoadPolicy, PlaceGeneration, Placement,
    RecordAttempt, RecordOutcome, RecordSettled, Reservation, ReserveAttempt, ReserveBudget,
    ReservedAttempt, ScoreRequest, Scored, Settings, Used,
};
use crate::ports::{
    AttemptStore, BackendError, BudgetLedger, GenerationBackend, PolicyStore, Progress, QaScorer,
    Reporting, StoreError, WorkerRegistry,
};
use async_trait::async_trait;
use retake_domain::adapt::Evidence;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

/// Failure type names. Workflow retry policies list the non-retryable ones.
pub mod failure_types {
    /// A store could not be reached; retried.
    pub const STORE_UNAVAILABLE: &str = "StoreUnavailable";
    /// Stored or supplied data is invalid; not retried.
    pub const INVALID_DATA: &str = "InvalidData";
    /// A backend failed temporarily; retried.
    pub const BACKEND_TRANSIENT: &str = "BackendTransient";
    /// A backend rejected the request; not retried.
    pub const BACKEND_REJECTED: &str = retake_domain::contract::BACKEND_REJECTED;
    /// The budget refused the GPU time an attempt needed to finish; it was stopped. Not retried.
    pub const BUDGET_EXHAUSTED: &str = retake_domain::contract::BUDGET_EXHAUSTED;
    /// The machine failed, not the request (CUDA out of memory, a lost device): not retried on
    /// the same worker; the workflow re-runs the attempt on another one.
    pub const INFRASTRUCTURE: &str = retake_domain::contract::INFRASTRUCTURE_FAILURE;
    /// Every non-retryable type.
    pub const NON_RETRYABLE: [&str; 4] = [
        INVALID_DATA,
        BACKEND_REJECTED,
        BUDGET_EXHAUSTED,
        INFRASTRUCTURE,
    ];
}

/// The activity implementations, with their dependencies. Cheap to clone (shared parts), so one
/// worker process can register them on each of its task queues.
#[derive(Clone)]
pub struct RetryActivities {
    generator: Arc<dyn GenerationBackend>,
    scorer: Arc<dyn QaScorer>,
    policies: Arc<dyn PolicyStore>,
    ledger: Arc<dyn BudgetLedger>,
    attempts: Arc<dyn AttemptStore>,
    reporting: Arc<dyn Reporting>,
    workers: Arc<dyn WorkerRegistry>,
    /// This worker's GPUs and identity; without it generations run unlimited and unattributed.
    gpu: Option<Arc<Gpu>>,
}

/// Reservations learn from what attempts really took: at least this quantile of the GPU time of
/// the scene type's [`LEARN_WINDOW`] latest attempts that generated (see `reserve_attempt`).
pub const LEARN_QUANTILE: f64 = 0.9;
/// How many of a scene type's latest attempts a reservation learns from.
pub const LEARN_WINDOW: u32 = 50;

impl RetryActivities {
    pub fn new(
        generator: Arc<dyn GenerationBackend>,
        scorer: Arc<dyn QaScorer>,
        policies: Arc<dyn PolicyStore>,
        ledger: Arc<dyn BudgetLedger>,
        attempts: Arc<dyn AttemptStore>,
        reporting: Arc<dyn Reporting>,
        workers: Arc<dyn WorkerRegistry>,
    ) -> Self {
        Self {
            generator,
            scorer,
            policies,
            ledger,
            attempts,
            reporting,
            workers,
            gpu: None,
        }
    }

    /// Reserve an attempt's GPU time against the project budget: the policy's estimate, or —
    /// when the input names the scene type — what the scene type's recent attempts really took
    /// when that is more ([`LEARN_QUANTILE`] of the last [`LEARN_WINDOW`]), so an attempt starts
    /// only when the budget can pay for what it is likely to cost, instead of being stopped
    /// half-way by the meter.
    async fn reserve(&self, input: ReserveBudget) -> Result<Reservation, ActivityError> {
        let learned = match &input.scene_type {
            Some(scene) => self
                .reporting
                .gpu_ms_quantile(scene.as_str(), LEARN_QUANTILE, LEARN_WINDOW)
                .await
                .map_err(store_failure)?,
            None => None,
        };
        let gpu_ms = input.gpu_ms.max(learned.unwrap_or(0));
        self.ledger
            .reserve(&input.key, input.project_id.as_str(), gpu_ms)
            .await
            .map_err(store_failure)
    }

    /// The worker registry (where this worker announces itself).
    pub fn workers(&self) -> Arc<dyn WorkerRegistry> {
        self.workers.clone()
    }

    /// Generate on `gpu`: as many at once as it has slots, each attempt recording its worker,
    /// infrastructure failures counted towards its cool-down.
    pub fn on_gpu(mut self, gpu: Arc<Gpu>) -> Self {
        self.gpu = Some(gpu);
        self
    }

    /// Generation and QA from one backend, every table from one store.
    pub fn from_parts<B, S>(backend: Arc<B>, store: Arc<S>) -> Self
    where
        B: GenerationBackend + QaScorer + 'static,
        S: PolicyStore + BudgetLedger + AttemptStore + Reporting + WorkerRegistry + 'static,
    {
        Self::new(
            backend.clone(),
            backend,
            store.clone(),
            store.clone(),
            store.clone(),
            store.clone(),
            store,
        )
    }
}

fn failure(type_name: &str, non_retryable: bool, message: String) -> ActivityError {
    ActivityError::application(
        ApplicationFailure::builder(message)
            .type_name(type_name.to_owned())
            .non_retryable(non_retryable)
            .build(),
    )
}

/// A failure carrying the GPU time the backend used ([`Used`]) so the workflow bills it.
fn failure_after(
    type_name: &str,
    non_retryable: bool,
    message: String,
    gpu_ms: Option<u64>,
) -> ActivityError {
    let Some(gpu_ms) = gpu_ms else {
        return failure(type_name, non_retryable, message);
    };
    ActivityError::application(
        ApplicationFailure::builder(message)
            .type_name(type_name.to_owned())
            .non_retryable(non_retryable)
            .details(Used {
                gpu_ms,
                ..Used::default()
            })
            .build(),
    )
}

fn store_failure(e: StoreError) -> ActivityError {
    match e {
        StoreError::Unavailable(_) => {
            failure(failure_types::STORE_UNAVAILABLE, false, e.to_string())
        }
        _ => failure(failure_types::INVALID_DATA, true, e.to_string()),
    }
}

/// The failure's message is the adapter's own (its type says whether it was transient or a
/// rejection), so the attempt's record quotes the backend, not a wrapper.
fn backend_failure(e: BackendError) -> ActivityError {
    generation_failure(e, None)
}

/// [`backend_failure`] of a generation that ran on `worker`: a cancellation carries the worker,
/// the GPU time and any output the backend finished anyway in its [`Used`] details (Temporal
/// records no worker identity for a cancellation).
fn generation_failure(e: BackendError, worker: Option<&str>) -> ActivityError {
    let output_uri = e.output_uri().map(str::to_owned);
    match e.split() {
        (BackendError::Cancelled, None) if worker.is_none() => ActivityError::cancelled(),
        (BackendError::Cancelled, gpu_ms) => ActivityError::cancelled_with_details(Used {
            gpu_ms: gpu_ms.unwrap_or(0),
            worker: worker.map(str::to_owned),
            output_uri,
        }),
        (BackendError::Transient(m), used) => {
            failure_after(failure_types::BACKEND_TRANSIENT, false, m, used)
        }
        (BackendError::Infrastructure(m), used) => {
            failure_after(failure_types::INFRASTRUCTURE, true, m, used)
        }
        (BackendError::Rejected(m), used) => {
            failure_after(failure_types::BACKEND_REJECTED, true, m, used)
        }
        (other, used) => failure_after(
            failure_types::BACKEND_REJECTED,
            true,
            other.to_string(),
            used,
        ),
    }
}

/// A GPU slot of `gpu`, heartbeating every [`KEEP_ALIVE`] while all are busy; `Cancelled`
/// once the attempt is cancelled while it waits.
async fn free_slot<'g>(
    gpu: &'g Gpu,
    heartbeat: &Heartbeat<'_>,
) -> Result<tokio::sync::SemaphorePermit<'g>, BackendError> {
    let slot = gpu.slot();
    tokio::pin!(slot);
    let mut beat = tokio::time::interval(KEEP_ALIVE);
    loop {
        tokio::select! {
            permit = &mut slot => return Ok(permit),
            _ = beat.tick() => {
                if heartbeat.stopping() {
                    return Err(BackendError::Cancelled);
                }
                if heartbeat.silent() {
                    heartbeat.keep_alive().await;
                }
            }
        }
    }
}

/// The activity heartbeat as the backends see it.
struct Heartbeat<'a> {
    ctx: &'a ActivityContext,
    resume_from: u32,
    /// Set by the budget meter: the attempt must stop as if cancelled.
    over_budget: &'a AtomicBool,
    /// The last step checkpointed.
    done: AtomicU32,
    /// When the server was last told of a step (at first: when generation started).
    last_sent: std::sync::Mutex<Instant>,
}

/// How often a generation heartbeats at most, and a stopping one at least (well within the 3 s
/// heartbeat timeout).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

impl Heartbeat<'_> {
    /// Whether the attempt is being stopped (cancelled, or over budget).
    fn stopping(&self) -> bool {
        self.ctx.is_cancelled() || self.over_budget.load(Ordering::SeqCst)
    }

    /// Whether nothing was sent for [`KEEP_ALIVE`]: a step longer than the heartbeat timeout
    /// (a slow video model, a GPU still loading it) must not make the server think the worker
    /// died.
    fn silent(&self) -> bool {
        let last = self.last_sent.lock().unwrap_or_else(|p| p.into_inner());
        last.elapsed() >= KEEP_ALIVE
    }

    /// Heartbeat the last step again: while the backend stops, or works on a long step.
    async fn keep_alive(&self) {
        *self.last_sent.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if let Err(e) = self
            .ctx
            .record_heartbeat(self.done.load(Ordering::SeqCst))
            .await
        {
            tracing::warn!("heartbeat while stopping failed: {e}");
        }
    }
}

#[async_trait]
impl Progress for Heartbeat<'_> {
    async fn checkpoint(&self, done: u32, total: u32) -> Result<(), BackendError> {
        if self.stopping() {
            return Err(BackendError::Cancelled);
        }
        self.done.store(done, Ordering::SeqCst);
        // Heartbeat only as often as the 3 s timeout needs: a step reached within a second of the
        // last heartbeat, or the last step (the result follows at once), is not sent. Details
        // recorded but not yet sent are flushed before the activity may complete, so sending
        // every step held even a zero-GPU attempt for ~300 ms.
        let due = {
            let mut last = self.last_sent.lock().unwrap_or_else(|p| p.into_inner());
            let due = done < total && last.elapsed() >= KEEP_ALIVE;
            if due {
                *last = Instant::now();
            }
            due
        };
        if !due {
            return Ok(());
        }
        self.ctx
            .record_heartbeat(done)
            .await
            .map_err(|e| BackendError::Transient(format!("heartbeat failed: {e}")))
    }

    fn resume_from(&self) -> u32 {
        self.resume_from
    }
}

#[activities]
impl RetryActivities {
    /// What a run plans with: the stored policy and the widest seed the scene type's generator
    /// really uses ([`Settings`]).
    #[activity(name = "load_settings")]
    pub async fn load_settings(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: LoadPolicy,
    ) -> Result<Settings, ActivityError> {
        let policy = self
            .policies
            .policy(input.scene_type.as_str())
            .await
            .map_err(store_failure)?;
        Ok(Settings {
            policy,
            seed_bits: self.generator.seed_bits(input.scene_type.as_str()),
            params_taken: self.generator.params_taken(input.scene_type.as_str()),
        })
    }

    /// What the scene type's latest scored attempts say about which variations fix which
    /// failures, for an `adaptive` attempt to choose from. The answer is in the history, so a
    /// replayed run chooses the same variation.
    #[activity(name = "load_evidence")]
    pub async fn load_evidence(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: LoadEvidence,
    ) -> Result<Evidence, ActivityError> {
        self.reporting
            .evidence(input.scene_type.as_str(), &input.query)
            .await
            .map_err(store_failure)
    }

    /// Reserve an attempt's GPU time (see `RetryActivities::reserve`: the estimate, or what the
    /// scene type's attempts really took when more); then, when the attempt was granted and
    /// `eager` asks, promise it one of this worker's GPUs if one is free and the worker is not
    /// cooling down ([`Gpu::claim_eager`]): the workflow then schedules its generation for this
    /// worker to take eagerly. The amount granted and the promise are in the answer (and so in
    /// the history).
    #[activity(name = "reserve_attempt")]
    pub async fn reserve_attempt(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ReserveAttempt,
    ) -> Result<ReservedAttempt, ActivityError> {
        let reservation = self.reserve(input.budget).await?;
        let eager = input.eager
            && matches!(reservation, Reservation::Granted { .. })
            && self
                .gpu
                .as_ref()
                .is_some_and(|g| g.claim_eager(crate::ports::now_ms()));
        Ok(ReservedAttempt { reservation, eager })
    }

    /// Generate the attempt's output, heartbeating progress.
    #[activity(name = "generate")]
    pub async fn generate(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: GenerateRequest,
    ) -> Result<Generated, ActivityError> {
        let resume_from: u32 = ctx
            .heartbeat_details()
            .deserialize()
            .ok()
            .flatten()
            .unwrap_or(0);
        log::attempt_started(&input, resume_from);
        let over_budget = AtomicBool::new(false);
        let heartbeat = Heartbeat {
            ctx: &ctx,
            resume_from,
            over_budget: &over_budget,
            done: AtomicU32::new(resume_from),
            last_sent: std::sync::Mutex::new(Instant::now()),
        };
        let gpu = self.gpu.as_deref();
        if input.eager
            && let Some(gpu) = gpu
        {
            // The GPU promised to it is about to be taken: the promise is kept.
            gpu.eager_arrived();
        }
        // A GPU first (a generation placed on this worker by name may arrive while the shared
        // queue's fill them); the metered GPU time starts once it has one.
        let _slot = match gpu {
            Some(gpu) => Some(free_slot(gpu, &heartbeat).await.map_err(backend_failure)?),
            None => None,
        };
        let started = Instant::now();
        let work = self.generator.generate(&input, &heartbeat);
        let metered = async {
            match &input.budget {
                Some(held) => {
                    meter::meter(&*self.ledger, &input.key, held, started, &over_budget).await
                }
                None => std::future::pending().await,
            }
        };
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        tokio::pin!(work, metered);
        let mut refusal = None;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                why = &mut metered, if refusal.is_none() => refusal = Some(why),
                // Once stopping, the backend no longer checkpoints, but it may take longer than
                // the heartbeat timeout to stop (ComfyUI finishes the node in progress, then the
                // adapter reads its execution time): keep heartbeating, or the server would time
                // the attempt out and the GPU time it reports would be lost.
                // The same while one step takes longer than a second: the worker is alive, the
                // step is just slow (checkpoints come at most once a step).
                // (A branch guard would be read only when the select starts, before the stop.)
                _ = keep_alive.tick() => {
                    if heartbeat.stopping() || heartbeat.silent() {
                        heartbeat.keep_alive().await;
                    }
                }
            }
        };
        if let Some(gpu) = gpu {
            match &result {
                Err(e) if e.is_cancelled() => {}
                Err(e) => gpu.finished(e.is_infrastructure()),
                Ok(_) => gpu.finished(false),
            }
        }
        let result = result.map(|mut generated| {
            generated.worker = gpu.map(|g| g.worker_id().to_owned());
            generated
        });
        match (result, refusal) {
            // Stopped by the budget: billed what the backend says it used (else the time it ran).
            (Err(e), Some(why)) if e.is_cancelled() && !ctx.is_cancelled() => {
                let used = e.split().1.unwrap_or_else(|| {
                    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
                });
                Err(failure_after(
                    failure_types::BUDGET_EXHAUSTED,
                    true,
                    format!("stopped after {used} GPU ms: {why}"),
                    Some(used),
                ))
            }
            (result, _) => result.map_err(|e| generation_failure(e, gpu.map(|g| g.worker_id()))),
        }
    }

    /// A worker of the workflow's task queue to re-run a generation on: alive, not cooling
    /// down, not one that failed it (`avoid`), `prefer` when it qualifies. `None` queue when no
    /// worker qualifies: the generation goes to the shared generate queue.
    #[activity(name = "place_generation")]
    pub async fn place_generation(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PlaceGeneration,
    ) -> Result<Placement, ActivityError> {
        let chosen = self
            .workers
            .place(
                &input.task_queue,
                &input.avoid,
                input.prefer.as_deref(),
                crate::ports::now_ms(),
            )
            .await
            .map_err(store_failure)?;
        Ok(match chosen {
            Some(w) => Placement {
                worker: Some(w.worker_id),
                queue: Some(w.generate_queue),
            },
            None => Placement {
                worker: None,
                queue: None,
            },
        })
    }

    /// Score the attempt's output, heartbeating every second while the scorer works (scorers
    /// such as an LLM judge may take a while; the heartbeat lets a killed worker's scoring be
    /// retried within seconds). A low score is a normal result.
    #[activity(name = "score_qa")]
    pub async fn score_qa(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ScoreRequest,
    ) -> Result<Scored, ActivityError> {
        let scoring = self.scorer.score(&input);
        tokio::pin!(scoring);
        let mut beat = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                scored = &mut scoring => return scored.map_err(backend_failure),
                _ = beat.tick() => {
                    if ctx.is_cancelled() {
                        return Err(ActivityError::cancelled());
                    }
                    // A failed heartbeat is retried at the next tick; scoring goes on.
                    let _ = ctx.record_heartbeat(()).await;
                }
            }
        }
    }

    /// Upsert the attempt into `retry_attempts`.
    #[activity(name = "record_attempt")]
    pub async fn record_attempt(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordAttempt,
    ) -> Result<(), ActivityError> {
        self.attempts
            .record_attempt(&input)
            .await
            .map_err(store_failure)?;
        log::attempt_recorded(&input);
        Ok(())
    }

    /// Settle the attempt's reservation to the GPU time it used and record it, in one store
    /// transaction.
    #[activity(name = "record_settled")]
    pub async fn record_settled(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordSettled,
    ) -> Result<(), ActivityError> {
        self.attempts
            .record_settled(&input.attempt, input.gpu_ms)
            .await
            .map_err(store_failure)?;
        log::attempt_recorded(&input.attempt);
        Ok(())
    }

    /// Give back a reservation that will not be settled.
    #[activity(name = "release_budget")]
    pub async fn release_budget(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: AttemptKey,
    ) -> Result<(), ActivityError> {
        self.ledger.release(&input).await.map_err(store_failure)
    }

    /// Record how the run ended; escalations are flagged for human review.
    #[activity(name = "record_outcome")]
    pub async fn record_outcome(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordOutcome,
    ) -> Result<(), ActivityError> {
        self.attempts
            .record_outcome(&input)
            .await
            .map_err(store_failure)?;
        log::outcome_recorded(&input);
        Ok(())
    }
}
