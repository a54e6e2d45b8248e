//! `SegmentRetryWorkflow`: sequences the retry activities. Every decision (policy, seeds, jitter,
//! pass/fail, when to stop, selection, report) comes from `retake-domain`; this crate only orders
//! activities and keeps state, so it stays small and deterministic.

mod options;
mod segment_retry;

pub use segment_retry::{SegmentRetryRun, SegmentRetryWorkflow};

/// Failure type of a workflow whose argument or policy is invalid (non-retryable).
pub const INVALID_REQUEST: &str = "InvalidRetryRequest";
