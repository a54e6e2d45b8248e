//! How a run's quick store steps (load settings and evidence, reserve, settle, release, record
//! an attempt and the outcome) run: as *local activities* of the worker that holds the workflow
//! task. That worker runs them at once and the history keeps one marker each, so an attempt
//! costs the server two activity round trips (generate, score) instead of five. They are
//! exactly-once in effect because every store write is idempotent on its attempt key, and a
//! local activity whose marker was not recorded before a crash runs again on replay.
//!
//! While the database refuses, a step retries in the worker once (0.5 s), then backs off on
//! durable timers: the history shows a marker with the store's error for each retry
//! (`StoreUnavailable`), and the workflow waits instead of failing ([`options::store_local`]).

use crate::options;
use crate::segment_retry::SegmentRetryWorkflow;
use temporalio_common::ActivityDefinition;
use temporalio_common::data_converters::TemporalDeserializable;
use temporalio_sdk::{ActivityExecutionError, WorkflowContext};

/// Run the store step `activity` with `input`; `summary` names it in the history and UI.
pub(crate) async fn run<AD>(
    ctx: &WorkflowContext<SegmentRetryWorkflow>,
    activity: AD,
    input: impl Into<AD::Input>,
    summary: String,
) -> Result<AD::Output, ActivityExecutionError>
where
    AD: ActivityDefinition,
    AD::Output: TemporalDeserializable,
{
    ctx.execute_local_activity(activity, input, options::store_local(summary))
        .await
}
