//! What can go wrong when starting or steering a retry, by kind, so callers (the HTTP API above
//! all) can answer "no such retry", "already over" or "refused" instead of "Temporal is down".

use retake_domain::ValidationError;
use temporalio_client::tonic::{self, Code};

/// Why a call about a retry workflow did not take effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is invalid (checked locally, so nothing reached Temporal); every offending
    /// field is named.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No retry workflow with this id exists: the segment was never retried here (or its history
    /// is gone). Carries the workflow id.
    #[error("no retry workflow {0}")]
    NotFound(String),
    /// The workflow refused: its update validator rejected a decision (invalid, or the retry is
    /// not awaiting review), or Temporal refused the call as not allowed now. The message says why.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The retry had finished before the call arrived, or finished while it was in flight (an
    /// update aborted by the closing workflow). Carries the workflow id.
    #[error("the retry workflow {0} has already finished")]
    AlreadyFinished(String),
    /// The workflow run ended without a result: it failed (e.g. invalid input found by the
    /// workflow itself), was terminated, cancelled or timed out. The message is the whole failure
    /// chain.
    #[error("{0}")]
    Failed(String),
    /// Temporal could not be reached or did not answer in time; trying again later may work.
    #[error("Temporal is unavailable")]
    Unavailable(#[source] tonic::Status),
    /// Anything else (an unexpected server answer, a payload that did not convert); a bug or a
    /// misconfiguration rather than something the caller can fix.
    #[error("unexpected Temporal error: {0}")]
    Internal(String),
}

impl Error {
    /// Map a gRPC status of a call about `workflow_id`. `NotFound` is taken at its word here;
    /// signals and updates then ask whether the workflow exists but has closed.
    pub(crate) fn from_status(status: tonic::Status, workflow_id: &str) -> Self {
        match status.code() {
            Code::NotFound => Error::NotFound(workflow_id.to_owned()),
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                Error::Unavailable(status)
            }
            Code::FailedPrecondition | Code::InvalidArgument => {
                Error::Rejected(status.message().to_owned())
            }
            _ => Error::Internal(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    /// Whether trying again later may succeed (Temporal was unreachable or overloaded).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Every message of an error's source chain, joined: Temporal's errors put the useful part (the
/// workflow's failure message) deep in the chain.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
