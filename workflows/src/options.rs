//! Activity timeouts and retry policies, chosen per kind of work.
//!
//! * Store steps (settings, evidence, budget, records) are quick and idempotent local
//!   activities ([`store_local`], see `store_steps`): 30 s per try, retried without limit with
//!   backoff up to 30 s, so a database outage pauses the workflow instead of losing it. Invalid
//!   data is not retried.
//! * `generate` may run for long on a GPU: a long start-to-close timeout (1 h) with a short
//!   heartbeat timeout (3 s), so a killed worker's attempt is retried elsewhere within seconds and
//!   resumes from its last heartbeat. 5 tries; a rejected request is not retried.
//! * `score_qa`: 10 min per try with the same 3 s heartbeat timeout (the activity heartbeats
//!   while the scorer works, e.g. an LLM judge), 5 tries.

use retake_activities::failure_types;
use std::time::Duration;
use temporalio_common::RetryPolicy;
use temporalio_sdk::{
    ActivityCancellationType, ActivityOptions, LocalActivityOptions, WorkflowCancellationToken,
};

/// How long the server waits for a heartbeat before it retries a long activity elsewhere: the
/// bound on how long a killed worker's attempt stays stuck. Heartbeats are sent at most every
/// 0.8 × this (2.4 s).
pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);

fn retry(max_attempts: u32, max_interval_s: u64) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(500))
        .backoff_coefficient(2.0)
        .maximum_interval(Duration::from_secs(max_interval_s))
        .maximum_attempts(max_attempts)
        .non_retryable_error_types(failure_types::NON_RETRYABLE)
        .build()
}

/// Store steps: 30 s per try, unlimited tries, backoff 0.5 s doubling up to 30 s. Retries
/// waiting longer than [`LOCAL_RETRY_THRESHOLD`] wait on a durable timer (with a failure marker
/// in the history) rather than in the worker, so an outage is visible in the history and a long
/// one holds no workflow task open. They keep trying for [`STORE_OUTAGE_LIMIT`].
pub(crate) fn store_local(summary: String) -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .schedule_to_close_timeout(STORE_OUTAGE_LIMIT)
        .start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(retry(0, 30))
        .timer_backoff_threshold(LOCAL_RETRY_THRESHOLD)
        .summary(summary)
        .build()
}

/// How long a local store step keeps retrying a store that is down: in practice for ever (a
/// review window or an operator's abort ends a run sooner). Without it the SDK gives a local
/// activity 100 s from its first schedule (`temporalio-workflow`'s default), and every retry in
/// flight failed "Local Activity timed out" ~102 s into a database outage, its GPU work done but
/// not recorded.
pub(crate) const STORE_OUTAGE_LIMIT: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest backoff a local store step waits inside the worker before its retries move to
/// durable timers: one quick retry (the first backoff, 0.5 s) for a blip, then timers.
pub(crate) const LOCAL_RETRY_THRESHOLD: Duration = Duration::from_millis(500);

/// Generation: cancelled by `token` (a creator's abort); the workflow waits until the activity
/// has stopped, so the GPU is free before the reservation is released. Scheduled on `queue`.
/// On a worker's own queue it must start within [`PLACED_START_TIMEOUT`], or it is placed
/// again: the worker is busy or gone.
pub(crate) fn generate_on(
    summary: String,
    token: &WorkflowCancellationToken,
    queue: Queue,
) -> ActivityOptions {
    let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(3600))
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .retry_policy(retry(5, 10))
        .cancellation_token(token.clone())
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .summary(summary);
    match queue {
        Queue::Eager => options.build(),
        Queue::Shared(q) => options.task_queue(q).build(),
        Queue::Worker { queue, .. } => options
            .task_queue(queue)
            .schedule_to_start_timeout(PLACED_START_TIMEOUT)
            .build(),
    }
}

/// Where a generation is scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Queue {
    /// `<task_queue>/generate`: whichever worker is free.
    Shared(String),
    /// The workflow's own task queue, for the worker that promised a GPU (`reserve_attempt`) to
    /// take eagerly: the server hands it back in its answer to the workflow task instead of
    /// through the shared queue's poll.
    Eager,
    /// A worker's own queue: that worker.
    Worker { worker: String, queue: String },
}

/// How long a generation placed on a worker by name may wait for it to start before it is placed
/// again (see `attempts::MAX_PLACED_WAITS`).
pub(crate) const PLACED_START_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn score(summary: String, token: &WorkflowCancellationToken) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(600))
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .retry_policy(retry(5, 10))
        .cancellation_token(token.clone())
        .summary(summary)
        .build()
}
