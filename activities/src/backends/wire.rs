//! HTTP plumbing shared by the adapters: one classification of failures (what Temporal retries
//! and what it must not), JSON decoding that names the bad field, and heartbeats while waiting.

use crate::ports::{BackendError, Progress};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

/// How often a backend waiting on a remote call heartbeats (the generate activity's heartbeat
/// timeout is 3 s).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A client with a connect timeout and an overall request timeout.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// Send `req` and decode a JSON answer. Connection failures, timeouts, 408, 429 and 5xx are
/// transient (Temporal retries the activity); any other non-2xx status and a malformed body are
/// rejections naming `what` and, for a body, the JSON path of the problem.
pub(crate) async fn json<T: DeserializeOwned>(
    what: &str,
    req: reqwest::RequestBuilder,
) -> Result<T, BackendError> {
    let body = bytes(what, req).await?;
    decode(what, &body)
}

/// Send `req`; the body of a 2xx answer, or the classified failure.
pub(crate) async fn bytes(
    what: &str,
    req: reqwest::RequestBuilder,
) -> Result<Vec<u8>, BackendError> {
    let resp = req
        .send()
        .await
        .map_err(|e| BackendError::Transient(format!("{what}: {}", describe(&e))))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| {
        BackendError::Transient(format!("{what}: reading the body: {}", describe(&e)))
    })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let snippet: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    let msg = format!("{what}: HTTP {status}: {snippet}");
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        Err(BackendError::Transient(msg))
    } else {
        Err(BackendError::Rejected(msg))
    }
}

/// Decode JSON, naming the path of the first problem.
pub(crate) fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, BackendError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        BackendError::Rejected(format!(
            "{what}: malformed response at `{path}`: {}",
            e.inner()
        ))
    })
}

/// An HTTP client error with its whole chain of causes ("connection refused" and all).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// Await `work`, heartbeating every second; stops with `Cancelled` once the attempt is cancelled.
pub(crate) async fn heartbeating<T>(
    progress: &dyn Progress,
    work: impl Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = beat.tick() => progress.checkpoint(progress.resume_from(), 1).await?,
        }
    }
}

/// Wait `delay` between polls, heartbeating.
pub(crate) async fn pause(progress: &dyn Progress, delay: Duration) -> Result<(), BackendError> {
    heartbeating(progress, async {
        tokio::time::sleep(delay).await;
        Ok(())
    })
    .await
}
