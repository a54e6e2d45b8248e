//! HTTP plumbing shared by the adapters: checking a configured base URL and a secret named by an
//! environment variable, one classification of failures (what Temporal retries and what it must
//! not), JSON decoding that names the bad field, and heartbeats while waiting.

use crate::backends::config::ConfigError;
use crate::ports::{BackendError, Progress};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;

/// How often a backend waiting on a remote call heartbeats (the generate activity's heartbeat
/// timeout is 3 s).
pub(crate) const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A configuration's `base_url`: an http or https URL that paths can be appended to.
pub(crate) fn base_url(raw: &str) -> Result<url::Url, ConfigError> {
    let raw = raw.trim();
    let base = url::Url::parse(raw)
        .map_err(|e| ConfigError::new("base_url", format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
        return Err(ConfigError::new(
            "base_url",
            format!("{raw:?} must be an http or https URL"),
        ));
    }
    Ok(base)
}

/// `base` (checked by [`base_url`]) followed by `segments`, each percent-encoded as one path
/// segment.
pub(crate) fn join(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("checked by base_url: the base URL can be a base")
        .pop_if_empty()
        .extend(segments);
    url
}

/// The secret in the environment variable `name`, if a configuration names one (its field is
/// `field`): read once when the adapter is built, so an unset or empty variable stops the worker
/// at start-up.
pub(crate) fn secret_from_env(
    field: &str,
    name: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let Some(name) = name else {
        return Ok(None);
    };
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
        Ok(_) => Err(ConfigError::new(
            field,
            format!("the environment variable {name} is empty"),
        )),
        Err(e) => Err(ConfigError::new(
            field,
            format!("the environment variable {name} cannot be read: {e}"),
        )),
    }
}

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
    bytes_of(what, req.send().await).await
}

/// [`bytes`] of a request already sent.
pub(crate) async fn bytes_of(
    what: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Vec<u8>, BackendError> {
    let resp = sent.map_err(|e| BackendError::Transient(format!("{what}: {}", describe(&e))))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| {
        BackendError::Transient(format!("{what}: reading the body: {}", describe(&e)))
    })?;
    if status.is_success() {
        return Ok(body.to_vec());
    }
    let snippet: String = String::from_utf8_lossy(&body).chars().take(300).collect();
    let msg = format!("HTTP {status}: {snippet} ({what})");
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
    // One beat as the work starts, then one a period while it runs. The first beat used to be
    // an interval's immediate tick raced against the work: on a loaded machine both became ready
    // in one turn and the beat was skipped (the HTTP heartbeat test failed in CI).
    progress.checkpoint(progress.resume_from(), 1).await?;
    let mut beat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    loop {
        tokio::select! {
            biased;
            _ = beat.tick() => progress.checkpoint(progress.resume_from(), 1).await?,
            done = &mut work => return done,
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

/// A generator's `seed_bits` setting: how many low bits of the seed the server really uses,
/// 16..=64, or `default` when not set.
pub(crate) fn seed_bits(configured: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    match configured {
        None => Ok(default),
        Some(bits @ 16..=64) => Ok(bits),
        Some(bits) => Err(ConfigError::new(
            "seed_bits",
            format!("must be between 16 and 64, got {bits}"),
        )),
    }
}
