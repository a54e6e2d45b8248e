//! `SegmentRetryWorkflow`: sequences the retry activities. Every decision (policy, seeds, jitter,
//! pass/fail, when to stop, selection, report, review decisions) comes from `retake-domain`; this
//! crate only orders activities, keeps state and answers signals, updates and queries, so it
//! stays small and deterministic.

mod attempts;
mod options;
mod search;
mod segment_retry;

pub use search::SEARCH_ATTRIBUTES;
pub use segment_retry::{SegmentRetryRun, SegmentRetryWorkflow};

/// Failure type of a workflow whose argument or policy is invalid (non-retryable).
pub const INVALID_REQUEST: &str = "InvalidRetryRequest";
