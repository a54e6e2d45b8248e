//! `SegmentRetryWorkflow`: sequences the retry activities. Every decision (policy, seeds, jitter,
//! pass/fail, when to stop, selection, report, review decisions) comes from `retake-domain`; this
//! crate only orders activities, keeps state and answers signals, updates and queries, so it
//! stays small and deterministic.

mod argument;
mod attempts;
mod failure;
mod options;
mod search;
mod segment_retry;
mod store_steps;

pub use search::SEARCH_ATTRIBUTES;
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

/// Failure type of a workflow whose argument or policy is invalid (non-retryable).
pub const INVALID_REQUEST: &str = "InvalidRetryRequest";
