//! The answer of `POST /generate` and `GET /jobs/{id}`.

use crate::io::Generated;
use crate::ports::BackendError;
use serde::Deserialize;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum JobStatus {
    Done,
    #[serde(alias = "running")]
    Pending,
    Failed,
}

/// The answer of `POST /generate` and `GET /jobs/{id}`; which fields are required depends on
/// the status.
#[derive(Debug, Deserialize)]
pub(super) struct JobReply {
    pub(super) status: JobStatus,
    #[serde(default)]
    pub(super) job_id: Option<String>,
    #[serde(default)]
    output_uri: Option<String>,
    #[serde(default)]
    gpu_ms: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    retryable: Option<bool>,
    /// A failed job the machine is to blame for (CUDA out of memory, a lost device, NaN or
    /// empty output): the attempt is re-run on another worker (policy `placement`).
    #[serde(default)]
    infrastructure: Option<bool>,
}

impl JobReply {
    /// `Some` when done, `None` while pending, the classified failure when failed.
    pub(super) fn outcome(
        self,
        what: &str,
        started: Instant,
    ) -> Result<Option<Generated>, BackendError> {
        match self.status {
            JobStatus::Pending => Ok(None),
            JobStatus::Done => {
                let output_uri = self
                    .output_uri
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| missing(what, "output_uri", "done"))?;
                let gpu_ms = self.gpu_ms.unwrap_or_else(|| {
                    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
                });
                Ok(Some(Generated {
                    output_uri,
                    gpu_ms,
                    worker: None,
                }))
            }
            JobStatus::Failed => {
                let error = self.error.unwrap_or_else(|| "no error given".to_owned());
                let msg = format!("the job failed: {error} ({what})");
                let e = if self.infrastructure.unwrap_or(false) {
                    BackendError::Infrastructure(msg)
                } else if self.retryable.unwrap_or(false) {
                    BackendError::Transient(msg)
                } else {
                    BackendError::Rejected(msg)
                };
                // A failed job still used the GPU time it reports: billed.
                Err(match self.gpu_ms {
                    Some(gpu_ms) => e.after(gpu_ms),
                    None => e,
                })
            }
        }
    }
}

pub(super) fn missing(what: &str, field: &str, status: &str) -> BackendError {
    BackendError::Rejected(format!(
        "{what}: malformed response at `{field}`: required when the status is {status}"
    ))
}
