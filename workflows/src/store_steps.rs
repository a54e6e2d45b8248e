//! Where a run's quick store steps (load settings and evidence, reserve, settle, release, record
//! an attempt and the outcome) run.
//!
//! Runs started with [`LOCAL_STORE_PATCH`] run them as *local activities*: the worker that holds
//! the workflow task runs them at once and the history keeps one marker each, so an attempt costs
//! the server two activity round trips (generate, score) instead of five. They stay exactly-once
//! in effect for the same reason the server-scheduled steps were: every store write is idempotent
//! on its attempt key, and a local activity whose marker was not recorded before a crash runs
//! again on replay. Earlier runs replay with server-scheduled store activities.
//!
//! While the database refuses, a local step retries in the worker for a few seconds, then backs
//! off on durable timers: the history shows a marker with the store's error for each retry
//! (`StoreUnavailable`), and the workflow waits instead of failing, as it did before.

use crate::options;
use crate::segment_retry::SegmentRetryWorkflow;
use temporalio_common::ActivityDefinition;
use temporalio_common::data_converters::TemporalDeserializable;
use temporalio_sdk::{ActivityExecutionError, WorkflowContext};

/// Patch id of local store steps (`ctx.patched`, taken at the start of a run).
pub(crate) const LOCAL_STORE_PATCH: &str = "local-store-steps";

/// How this run's store steps are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreSteps {
    /// Scheduled on the task queue as ordinary activities (runs before [`LOCAL_STORE_PATCH`]).
    Server,
    /// Local activities of the worker running the workflow task.
    Local,
}

impl StoreSteps {
    /// The mode of the run `ctx` belongs to; call once, at the start of a run.
    pub(crate) fn of(ctx: &WorkflowContext<SegmentRetryWorkflow>) -> Self {
        if ctx.patched(LOCAL_STORE_PATCH) {
            Self::Local
        } else {
            Self::Server
        }
    }

    /// Run the store step `activity` with `input`; `summary` names it in the history and UI.
    pub(crate) async fn run<AD>(
        self,
        ctx: &WorkflowContext<SegmentRetryWorkflow>,
        activity: AD,
        input: impl Into<AD::Input>,
        summary: String,
    ) -> Result<AD::Output, ActivityExecutionError>
    where
        AD: ActivityDefinition,
        AD::Output: TemporalDeserializable,
    {
        match self {
            Self::Server => {
                ctx.execute_activity(activity, input, options::store(summary))
                    .await
            }
            Self::Local => {
                ctx.execute_local_activity(activity, input, options::store_local(summary))
                    .await
            }
        }
    }
}
