//! Ports: one small trait per capability the activities need. Adapters live beside them
//! (`sim` for generation and QA, `store` for SQL).

use crate::io::{
    AttemptKey, GenerateRequest, Generated, RecordAttempt, RecordOutcome, Reservation,
    ScoreRequest, Scored,
};
use async_trait::async_trait;
use retake_domain::contract::AttemptRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Errors of generation and QA backends. The variant decides whether Temporal retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Worth retrying: timeouts, 5xx, 429, lost GPU.
    #[error("backend temporarily failed: {0}")]
    Transient(String),
    /// Retrying cannot help: the backend rejected the request or answered nonsense.
    #[error("backend rejected the request: {0}")]
    Rejected(String),
    /// The machine failed, not the request: CUDA out of memory, a lost device, NaN or empty
    /// output. Not retried on this worker; the workflow re-runs the attempt on another one
    /// (policy `placement`).
    #[error("infrastructure failure: {0}")]
    Infrastructure(String),
    /// The attempt was cancelled while the backend worked.
    #[error("cancelled")]
    Cancelled,
    /// `error`, after the backend had used `gpu_ms` of GPU time, as it reported: billed although
    /// the attempt produced nothing (see [`BackendError::after`]), or kept `output_uri` when it
    /// finished anyway (see [`BackendError::with_output`]).
    #[error("{error}")]
    Spent {
        gpu_ms: u64,
        error: Box<BackendError>,
        output_uri: Option<String>,
    },
}

impl BackendError {
    /// This error, after the backend used `gpu_ms` (an interrupted ComfyUI prompt's execution
    /// time, a cancelled job's reported `gpu_ms`).
    pub fn after(self, gpu_ms: u64) -> Self {
        match self {
            BackendError::Spent {
                error, output_uri, ..
            } => BackendError::Spent {
                gpu_ms,
                error,
                output_uri,
            },
            error => BackendError::Spent {
                gpu_ms,
                error: Box::new(error),
                output_uri: None,
            },
        }
    }

    /// This error, with the output the backend produced anyway (`None`: it produced none).
    pub fn with_output(self, uri: Option<String>) -> Self {
        match self {
            BackendError::Spent { gpu_ms, error, .. } => BackendError::Spent {
                gpu_ms,
                error,
                output_uri: uri,
            },
            error => BackendError::Spent {
                gpu_ms: 0,
                error: Box::new(error),
                output_uri: uri,
            },
        }
    }

    /// The output the backend produced before the error, if any.
    pub fn output_uri(&self) -> Option<&str> {
        match self {
            BackendError::Spent { output_uri, .. } => output_uri.as_deref(),
            _ => None,
        }
    }

    /// The error without the GPU time, and that time (when the backend reported it).
    pub fn split(self) -> (BackendError, Option<u64>) {
        match self {
            BackendError::Spent { gpu_ms, error, .. } => (error.split().0, Some(gpu_ms)),
            e => (e, None),
        }
    }

    /// Whether the error is (or wraps) an infrastructure failure.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            BackendError::Infrastructure(_) => true,
            BackendError::Spent { error, .. } => error.is_infrastructure(),
            _ => false,
        }
    }

    /// Whether the error is (or wraps) a cancellation.
    pub fn is_cancelled(&self) -> bool {
        match self {
            BackendError::Cancelled => true,
            BackendError::Spent { error, .. } => error.is_cancelled(),
            _ => false,
        }
    }
}

/// Errors of the store. Unavailability is retried; invalid data is not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or timed out.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored or supplied data is invalid (e.g. a stored policy that no longer validates).
    #[error("invalid data: {0}")]
    Invalid(String),
}

/// Progress reporting and cancellation for long work (the activity heartbeat, seen from a
/// backend).
#[async_trait]
pub trait Progress: Send + Sync {
    /// Record that `done` of `total` steps are finished; a restarted attempt resumes from there.
    /// Returns `Err(BackendError::Cancelled)` once the attempt has been cancelled.
    async fn checkpoint(&self, done: u32, total: u32) -> Result<(), BackendError>;
    /// The step a previous, interrupted run of this attempt reached (0 when none).
    fn resume_from(&self) -> u32;
}

/// Generates one output for an attempt.
#[async_trait]
pub trait GenerationBackend: Send + Sync {
    /// Generate with `req.seed` and `req.params`. Implementations use `req.key` as the idempotency
    /// key, so a re-run for the same key does not generate (or bill) twice.
    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError>;

    /// How many low bits of the seed the generator of `scene_type` really uses: seeds are derived
    /// below `2^this` (and the policy's `seed_bits`), so the recorded seed reproduces the output.
    /// Default: 64 (the whole seed).
    fn seed_bits(&self, _scene_type: &str) -> u32 {
        64
    }

    /// The attempt parameters the generator of `scene_type` sends on, when it sends only some
    /// (a ComfyUI graph takes those its `inputs` map): the workflow jitters no other, so no
    /// attempt records a variation the backend never received. Default: `None`, every one.
    fn params_taken(&self, _scene_type: &str) -> Option<Vec<String>> {
        None
    }
}

/// Scores one output.
#[async_trait]
pub trait QaScorer: Send + Sync {
    async fn score(&self, req: &ScoreRequest) -> Result<Scored, BackendError>;
}

/// Retry policies per scene type, stored as validated JSON, with who changed them.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    async fn policy(&self, scene_type: &str) -> Result<Option<Value>, StoreError>;
    /// Store `policy` for `scene_type` and, in the same transaction, a [`PolicyChange`] naming
    /// `by` (`api:admin mina`, `cli:jun`).
    async fn set_policy(
        &self,
        scene_type: &str,
        policy: &Value,
        by: &str,
    ) -> Result<(), StoreError>;
    /// The scene type's last `limit` policy changes, newest first.
    async fn policy_changes(
        &self,
        scene_type: &str,
        limit: u32,
    ) -> Result<Vec<PolicyChange>, StoreError>;
}

/// One stored policy of a scene type: when, by whom, and what was stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyChange {
    /// RFC 3339, UTC.
    pub changed_at: String,
    /// Who stored it: `api:<role> <name>` through the API or console, `cli:<user>` by
    /// `retake policy set`.
    pub by: String,
    /// The policy as stored, every field filled in.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub policy: Value,
}

/// A project's GPU budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Budget {
    pub project_id: String,
    /// `None`: no limit (GPU time is still tracked).
    pub limit_ms: Option<u64>,
    /// Held by attempts in flight.
    pub reserved_ms: u64,
    /// Settled GPU time of finished attempts.
    pub spent_ms: u64,
}

/// A reservation still held by an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldReservation {
    pub key: AttemptKey,
    pub project_id: String,
    pub reserved_ms: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// GPU budget reservations. Every operation is atomic and idempotent per attempt key.
#[async_trait]
pub trait BudgetLedger: Send + Sync {
    /// Reserve `gpu_ms` for the attempt unless `limit < reserved + spent + gpu_ms`. Calling it
    /// again for the same key returns the first answer and changes nothing.
    async fn reserve(
        &self,
        key: &AttemptKey,
        project_id: &str,
        gpu_ms: u64,
    ) -> Result<Reservation, StoreError>;
    /// Raise the attempt's held reservation to `to_ms` in total while it generates, so the budget
    /// caps what an attempt really takes rather than what it was estimated to take. A total, not
    /// a delta: a repeated call changes nothing. Granted unless `limit < reserved + spent - held
    /// + to_ms` (the rule of `reserve`, the attempt's own hold counted once), answering
    /// `Granted { gpu_ms: to_ms }`; `to_ms` at or below the held amount is `Granted` with the
    /// held amount and changes nothing. Refused: nothing changes; the answer has `reserve`'s
    /// fields, with `committed_ms` what everything but this attempt holds or spent
    /// (`reserved + spent - held`) and `requested_ms` = `to_ms`, so that, as for `reserve`,
    /// `committed_ms + requested_ms > limit_ms`. No reservation held for `key` in `project_id`
    /// (never made, refused, already settled or released) is [`StoreError::Invalid`]: the
    /// caller lost track of its attempt. A later `reserve` for the key answers the raised amount.
    async fn raise(
        &self,
        key: &AttemptKey,
        project_id: &str,
        to_ms: u64,
    ) -> Result<Reservation, StoreError>;
    /// Turn the attempt's reservation into `gpu_ms` spent. A second call changes nothing.
    async fn settle(&self, key: &AttemptKey, gpu_ms: u64) -> Result<(), StoreError>;
    /// Give back a reservation that will never be settled. A second call changes nothing.
    async fn release(&self, key: &AttemptKey) -> Result<(), StoreError>;
    async fn budget(&self, project_id: &str) -> Result<Option<Budget>, StoreError>;
    /// Reservations still held that were made before `before` (candidates for the sweeper:
    /// an attempt whose workflow was terminated never settles or releases its own).
    async fn held_before(
        &self,
        before: std::time::SystemTime,
    ) -> Result<Vec<HeldReservation>, StoreError>;
    /// Set (or with `None` remove) the limit; reserved and spent are kept.
    async fn set_limit(
        &self,
        project_id: &str,
        limit_ms: Option<u64>,
    ) -> Result<Budget, StoreError>;
}

/// One row of `retry_attempts`, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredAttempt {
    pub segment_id: String,
    pub project_id: String,
    pub scene_type: String,
    pub workflow_id: String,
    pub run_id: String,
    pub selected: bool,
    #[serde(flatten)]
    pub record: AttemptRecord,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub updated_at: String,
}

/// How a retry workflow run ended, as stored (`segment_retries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoredOutcome {
    pub segment_id: String,
    pub project_id: String,
    pub scene_type: String,
    pub workflow_id: String,
    pub run_id: String,
    pub outcome: String,
    pub reason: String,
    pub selected_attempt: Option<u32>,
    pub gpu_ms_total: u64,
    pub report: String,
    /// `none`, `pending` (awaiting human review), `accepted`, `rejected` or `retrying`.
    pub review: String,
    /// Creator signals and review decisions, with who made them.
    pub decisions: Vec<retake_domain::event::CreatorEvent>,
    pub updated_at: String,
}

/// The `retry_attempts` table and the per-run outcome.
#[async_trait]
pub trait AttemptStore: Send + Sync {
    /// Insert or replace the attempt (unique per workflow id, run id and attempt).
    async fn record_attempt(&self, rec: &RecordAttempt) -> Result<(), StoreError>;
    /// Settle the attempt's reservation to `gpu_ms` (as [`BudgetLedger::settle`]) and record it
    /// (as [`AttemptStore::record_attempt`]) in one transaction: both or neither. Idempotent as
    /// each of them is.
    async fn record_settled(&self, rec: &RecordAttempt, gpu_ms: u64) -> Result<(), StoreError>;
    /// Upsert the run's outcome, mark its selected attempt, flag escalations for review.
    async fn record_outcome(&self, out: &RecordOutcome) -> Result<(), StoreError>;
    /// Every attempt of a segment, oldest run first, then by attempt number.
    async fn attempts(&self, segment_id: &str) -> Result<Vec<StoredAttempt>, StoreError>;
    /// Outcomes of a segment's runs, oldest first.
    async fn outcomes(&self, segment_id: &str) -> Result<Vec<StoredOutcome>, StoreError>;
    /// Segments by their latest recorded run, most recently updated first: see
    /// [`SegmentQuery`].
    async fn segments(&self, query: &SegmentQuery) -> Result<Vec<SegmentRow>, StoreError>;
}

/// Which segments [`AttemptStore::segments`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentQuery {
    /// Part of the segment id, project or scene type, any case; empty: every segment.
    pub search: String,
    /// The latest run's outcome (`passed`, `escalated`, `aborted`, `budget_exhausted`,
    /// `not_retried`); `None`: any.
    pub outcome: Option<String>,
    /// Only segments whose latest run awaits a review decision (`review = pending`).
    pub pending_review: bool,
    /// At most this many rows, after skipping `offset`.
    pub limit: u32,
    pub offset: u32,
}

/// A segment as the list shows it: its latest recorded run, and that run's selected output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRow {
    pub segment_id: String,
    pub project_id: String,
    pub scene_type: String,
    pub outcome: String,
    pub review: String,
    pub report: String,
    pub updated_at: String,
    /// The selected attempt's output, else the output of the run's last attempt that had one.
    pub output_uri: Option<String>,
}

/// Totals over every recorded retry, for the `/metrics` endpoint: computed from the store at
/// scrape time so every worker and API replica reports the same numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Recorded attempts by status (`passed`, `failed`, `error`, `aborted`).
    pub attempts_by_status: BTreeMap<String, u64>,
    /// Retry runs by outcome (`passed` = segments fixed, `escalated`, ...).
    pub runs_by_outcome: BTreeMap<String, u64>,
    /// GPU milliseconds of every recorded attempt.
    pub gpu_ms: u64,
    /// Reservations the budget refused.
    pub budget_refusals: u64,
    /// Escalations awaiting a human decision.
    pub reviews_pending: u64,
    /// Workers (every task queue) cooling down after infrastructure failures in a row, now.
    pub workers_cooling: u64,
    /// Scored attempts with a recorded variation, per scene type, failure kind and arm (every
    /// scope, all time): what adaptive retries learn from.
    pub variations: Vec<VariationCount>,
}

/// One line of [`Stats::variations`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariationCount {
    pub scene_type: String,
    pub failure_kind: String,
    pub arm: String,
    pub attempts: u64,
    pub passes: u64,
}

/// Read-only totals and statistics over the store.
#[async_trait]
pub trait Reporting: Send + Sync {
    async fn stats(&self) -> Result<Stats, StoreError>;
    /// The `q`-quantile (nearest rank: the smallest value with at least `q` of the values at or
    /// below it) of `gpu_ms` over the scene type's `last` most recently recorded attempts that
    /// finished generating: `passed`, `failed`, or `error` with GPU time (an error before the
    /// GPU ran, an abort, and an attempt the budget stopped part-way say nothing about how long
    /// generating takes). `None` without such
    /// attempts. For learning reservation estimates from what attempts really took. `q` outside
    /// `0..=1` is [`StoreError::Invalid`].
    async fn gpu_ms_quantile(
        &self,
        scene_type: &str,
        q: f64,
        last: u32,
    ) -> Result<Option<u64>, StoreError>;
    /// What the scene type's latest scored attempts say about which variations fix which
    /// failures: attempts and passes per failure kind and arm (see `retake_domain::adapt`).
    async fn evidence(
        &self,
        scene_type: &str,
        query: &retake_domain::adapt::EvidenceQuery,
    ) -> Result<retake_domain::adapt::Evidence, StoreError>;
    /// Every scene type and project the store knows, as stored (case and all), sorted: those
    /// with a policy or budget and those that ever had a retry recorded.
    async fn known(&self) -> Result<Known, StoreError>;
}

/// What [`Reporting::known`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Scene types, each with whether a policy is stored for it.
    pub scene_types: Vec<(String, bool)>,
    /// Projects, each with whether it has a budget limit.
    pub projects: Vec<(String, bool)>,
}

/// A worker process as the registry knows it (`workers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub worker_id: String,
    /// The task queue it serves (workflows and scoring).
    pub task_queue: String,
    /// Its own queue for generations placed on it.
    pub generate_queue: String,
    /// When it last announced itself, ms since the epoch (its clock).
    pub seen_at_ms: u64,
    /// Until when it takes no generations after infrastructure failures in a row (0: never).
    pub cooling_until_ms: u64,
}

/// Milliseconds since the Unix epoch by this machine's clock: the time the worker registry
/// compares (announcements, cool-downs, placement).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long after its last announcement a worker still counts as alive for placement.
pub const WORKER_ALIVE_MS: u64 = 15_000;

/// How long after its last announcement a worker's row is deleted (by the next announcement of
/// any worker): a fleet restarted often, each process with a new `<pid>@<host>` id, would
/// otherwise grow the table by a row per start.
pub const WORKER_FORGET_MS: u64 = 24 * 3600 * 1000;

/// The workers of each task queue, for placing a generation on a particular one.
#[async_trait]
pub trait WorkerRegistry: Send + Sync {
    /// Insert or refresh the worker's row (seen now, cooling until `cooling_until_ms`), and
    /// delete the rows of workers not seen for [`WORKER_FORGET_MS`] before it.
    async fn announce(&self, worker: &WorkerRow) -> Result<(), StoreError>;
    /// A worker of `task_queue` for a generation at `now_ms`: alive (seen within
    /// [`WORKER_ALIVE_MS`]), not cooling down, not in `avoid`; `prefer` when it qualifies, else
    /// the one placed on longest ago (spreading re-runs). `None` when no worker qualifies.
    async fn place(
        &self,
        task_queue: &str,
        avoid: &[String],
        prefer: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<WorkerRow>, StoreError>;
    /// Every worker that announced itself on `task_queue` (and is not forgotten yet), by id.
    async fn workers(&self, task_queue: &str) -> Result<Vec<WorkerRow>, StoreError>;
}

/// Every store capability in one object: what [`connect_any`](crate::store::connect_any)
/// returns, implemented by every type that implements the four store ports.
pub trait Store:
    PolicyStore
    + BudgetLedger
    + AttemptStore
    + Reporting
    + WorkerRegistry
    + Send
    + Sync
    + std::fmt::Debug
{
}

impl<T> Store for T where
    T: PolicyStore
        + BudgetLedger
        + AttemptStore
        + Reporting
        + WorkerRegistry
        + Send
        + Sync
        + std::fmt::Debug
{
}
