//! `SegmentRetryWorkflow`: sequences the retry activities. Every decision (policy, seeds, jitter,
//! pass/fail, when to stop, selection, report, review decisions) comes from `retake-domain`; this
//! crate only orders activities, keeps state and answers signals, updates and queries, so it
//! stays small and deterministic.

mod argument;
mod failure;
mod options;
mod search;
mod segment_retry;
mod shell;
mod store_steps;

pub use search::{BEHAVIOUR_ATTRIBUTE, SEARCH_ATTRIBUTES};
pub use segment_retry::{SegmentRetryRun, SegmentRetryWorkflow};

/// The workflow argument for `input`: one JSON payload, as every Temporal client sends it.
pub fn argument(input: &serde_json::Value) -> temporalio_common::data_converters::RawValue {
    let mut payload = temporalio_common::protos::temporal::api::common::v1::Payload {
        data: input.to_string().into_bytes(),
        ..Default::default()
    };
    payload
        .metadata
        .insert("encoding".to_owned(), b"json/plain".to_vec());
    temporalio_common::data_converters::RawValue::new(vec![payload])
}

/// The behaviour version a run started by this build takes, recorded on the run as the search
/// attribute `RetakeBehaviour` (upserted with the others at its start). `v1` is the baseline: one
/// path, no patch, the histories in `tests/histories/v1-*.json`. A behaviour change after v1 goes
/// behind `ctx.patched` and names a new version here; the old path is removed only once
/// `retake runs versions` counts no open run of the old version (docs/versioning.md).
pub const BEHAVIOUR: &str = "v1";

/// Every behaviour version this build can replay, oldest first: the versions an open run may
/// carry while this build serves it (`retake runs versions` names them even at zero).
pub const BEHAVIOURS: &[&str] = &[BEHAVIOUR];

/// Failure type of a workflow whose argument or policy is invalid (non-retryable).
pub const INVALID_REQUEST: &str = "InvalidRetryRequest";
