//! The activities of `SegmentRetryWorkflow`, as small ports with adapters beside them.
//!
//! [`RetryActivities`] holds one `Arc<dyn Port>` per capability and turns port errors into
//! Temporal failures in one place ([`failure`]): unavailable stores and transient backend errors
//! are retried by Temporal, invalid data and rejected requests are not.

pub mod backends;
pub mod io;
pub mod ports;
pub mod sim;
pub mod stats;
pub mod store;

use crate::io::{
    AttemptKey, GenerateRequest, Generated, LoadPolicy, RecordAttempt, RecordOutcome, Reservation,
    ReserveBudget, ScoreRequest, Scored, SettleBudget,
};
use crate::ports::{
    AttemptStore, BackendError, BudgetLedger, GenerationBackend, PolicyStore, Progress, QaScorer,
    StoreError,
};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;
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
    pub const BACKEND_REJECTED: &str = "BackendRejected";
    /// Every non-retryable type.
    pub const NON_RETRYABLE: [&str; 2] = [INVALID_DATA, BACKEND_REJECTED];
}

/// The activity implementations, with their dependencies.
pub struct RetryActivities {
    generator: Arc<dyn GenerationBackend>,
    scorer: Arc<dyn QaScorer>,
    policies: Arc<dyn PolicyStore>,
    ledger: Arc<dyn BudgetLedger>,
    attempts: Arc<dyn AttemptStore>,
}

impl RetryActivities {
    pub fn new(
        generator: Arc<dyn GenerationBackend>,
        scorer: Arc<dyn QaScorer>,
        policies: Arc<dyn PolicyStore>,
        ledger: Arc<dyn BudgetLedger>,
        attempts: Arc<dyn AttemptStore>,
    ) -> Self {
        Self {
            generator,
            scorer,
            policies,
            ledger,
            attempts,
        }
    }

    /// Generation and QA from one backend, every table from one store.
    pub fn from_parts<B, S>(backend: Arc<B>, store: Arc<S>) -> Self
    where
        B: GenerationBackend + QaScorer + 'static,
        S: PolicyStore + BudgetLedger + AttemptStore + 'static,
    {
        Self::new(
            backend.clone(),
            backend,
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

fn store_failure(e: StoreError) -> ActivityError {
    match e {
        StoreError::Unavailable(_) => {
            failure(failure_types::STORE_UNAVAILABLE, false, e.to_string())
        }
        _ => failure(failure_types::INVALID_DATA, true, e.to_string()),
    }
}

fn backend_failure(e: BackendError) -> ActivityError {
    match e {
        BackendError::Cancelled => ActivityError::cancelled(),
        BackendError::Transient(_) => {
            failure(failure_types::BACKEND_TRANSIENT, false, e.to_string())
        }
        _ => failure(failure_types::BACKEND_REJECTED, true, e.to_string()),
    }
}

/// The activity heartbeat as the backends see it.
struct Heartbeat<'a> {
    ctx: &'a ActivityContext,
    resume_from: u32,
}

#[async_trait]
impl Progress for Heartbeat<'_> {
    async fn checkpoint(&self, done: u32, _total: u32) -> Result<(), BackendError> {
        if self.ctx.is_cancelled() {
            return Err(BackendError::Cancelled);
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
    /// The scene type's stored policy as JSON (validated by the workflow), or `None`.
    #[activity(name = "load_policy")]
    pub async fn load_policy(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: LoadPolicy,
    ) -> Result<Option<Value>, ActivityError> {
        self.policies
            .policy(&input.scene_type)
            .await
            .map_err(store_failure)
    }

    /// Reserve the estimated GPU time of an attempt against the project budget.
    #[activity(name = "reserve_budget")]
    pub async fn reserve_budget(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ReserveBudget,
    ) -> Result<Reservation, ActivityError> {
        self.ledger
            .reserve(&input.key, &input.project_id, input.gpu_ms)
            .await
            .map_err(store_failure)
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
        let heartbeat = Heartbeat {
            ctx: &ctx,
            resume_from,
        };
        self.generator
            .generate(&input, &heartbeat)
            .await
            .map_err(backend_failure)
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
            .map_err(store_failure)
    }

    /// Turn the attempt's reservation into the GPU time actually used.
    #[activity(name = "settle_budget")]
    pub async fn settle_budget(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: SettleBudget,
    ) -> Result<(), ActivityError> {
        self.ledger
            .settle(&input.key, input.gpu_ms)
            .await
            .map_err(store_failure)
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
            .map_err(store_failure)
    }
}
