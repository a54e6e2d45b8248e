//! retake's HTTP JSON contract for generators and scorers: one service (or two) that any stack
//! can implement. All bodies are JSON (`Content-Type: application/json`), paths are relative to
//! `base_url`, and every request carries `Authorization: Bearer <token>` when `token_env` names
//! an environment variable (read once when the worker starts; a variable that is not set stops
//! the worker at start-up).
//!
//! ## Generate: `POST {base_url}/generate`
//!
//! Header `Idempotency-Key: <workflow id>/<run id>/<attempt>`, body:
//!
//! ```json
//! {
//!   "idempotency_key": "segment-retry-ch-12/5c1e…/2",
//!   "segment_id": "ch-12",
//!   "scene_type": "dialogue",
//!   "seed": 1234567,
//!   "params": {"seed": 1234567, "cfg_scale": 7.5, "denoise_strength": 0.55},
//!   "strategy": "reseed_jitter",
//!   "prompt": null,
//!   "revise_uri": null
//! }
//! ```
//!
//! `strategy`, `prompt` and `revise_uri` are `null` when the attempt has none. The answer (200 or
//! 202) is either the finished result (a synchronous service)
//!
//! ```json
//! {"status": "done", "output_uri": "s3://renders/ch-12/2.mp4", "gpu_ms": 41250}
//! ```
//!
//! or a job to poll:
//!
//! ```json
//! {"status": "pending", "job_id": "job-8f2c"}
//! ```
//!
//! A synchronous service must answer within `request_timeout_secs` (default 60); a slower one
//! answers `pending` and is polled. `output_uri` is a reference the scorer can read (never the
//! bytes). `gpu_ms` is the GPU time
//! billed to the project's budget; when it is absent the worker bills the wall time it waited.
//! A `{"status": "failed", …}` answer (below) is also accepted here.
//!
//! **Idempotency.** A conforming service answers a repeated `POST /generate` with the same
//! idempotency key with the *same* job (or the same finished result) instead of starting a new
//! generation. The worker relies on it: when a worker crashes or loses its activity, Temporal
//! re-runs the activity, which re-POSTs the same key and picks up the job already running (or
//! finished), so a retry never generates or bills twice. Each attempt of a retry run has its own
//! key.
//!
//! ## Job status: `GET {base_url}/jobs/{job_id}`
//!
//! Polled every `poll_interval_ms` (default 1000) while the activity heartbeats, until it answers
//! `done` (same shape as above) or
//!
//! ```json
//! {"status": "failed", "error": "CUDA out of memory", "retryable": true}
//! ```
//!
//! `"retryable": true` makes Temporal retry the activity (a new `POST /generate` with the same
//! key: the service must then start over, not answer the failed job again); `false` (the
//! default) fails the attempt for good. `"infrastructure": true` says the machine failed, not
//! the request: the attempt is re-run on another worker (policy `placement`). `"pending"` (or `"running"`) means still working; other
//! fields are ignored.
//!
//! ## Cancellation: `DELETE {base_url}/jobs/{job_id}`
//!
//! Sent once, best effort (5 s timeout) when the attempt is cancelled while its job runs. The
//! answer may report the GPU time the job used before it stopped, `{"gpu_ms": 3100}`; it is
//! billed (an abort does not make used GPU time free). Without it the worker bills the wall time
//! it waited. A cancellation during the first `POST` cannot name a job and sends nothing.
//!
//! A `failed` job may report `gpu_ms` too; it is billed the same way.
//!
//! ## Score: `POST {base_url}/score`
//!
//! Same headers, body:
//!
//! ```json
//! {
//!   "idempotency_key": "segment-retry-ch-12/5c1e…/2",
//!   "segment_id": "ch-12",
//!   "scene_type": "dialogue",
//!   "seed": 1234567,
//!   "params": {"seed": 1234567, "cfg_scale": 7.5},
//!   "output_uri": "s3://renders/ch-12/2.mp4"
//! }
//! ```
//!
//! answered (200) with
//!
//! ```json
//! {
//!   "scores": {"face": 0.87, "lip_sync": 0.64},
//!   "failures": ["hand_artifact"],
//!   "breakdown": [{"category": "continuity", "score": 0.7, "feedback": "the scarf changes colour"}],
//!   "scale": 1
//! }
//! ```
//!
//! Every field is optional. Scores are within 0..=1, or within 0..=100 with `"scale": 100`
//! (every score, breakdown included, is then divided by 100). A score out of range rejects the
//! answer, naming the metric.
//!
//! ## Failures
//!
//! Connection failures, timeouts, 408, 429 and 5xx are transient: Temporal retries the activity
//! with backoff. While polling a job, a transient failure is first retried in place
//! (`poll_retries` times, default 5, one poll interval apart) so a brief blip does not restart
//! the job. Any other 4xx, an unknown `status` and a malformed body fail the attempt for good,
//! naming the JSON path of the problem.

#[cfg(test)]
pub(in crate::backends) mod fake;
mod job;
mod score;
#[cfg(test)]
pub(in crate::backends) mod tests;

use crate::backends::config::ConfigError;
use crate::backends::wire;
use crate::io::{GenerateRequest, Generated, ScoreRequest, Scored};
use crate::ports::{BackendError, GenerationBackend, Progress, QaScorer};
use async_trait::async_trait;
use job::{JobReply, JobStatus, missing};
use retake_domain::contract::Params;
use retake_domain::strategy::Strategy;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Where the service is and how long to wait.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// e.g. `http://gen.internal:9000`; the paths below are relative to it.
    pub base_url: String,
    /// Environment variable holding a bearer token, if the service wants one.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Seconds one HTTP request may take. Default 60.
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
    /// Milliseconds between polls of a job. Default 1000.
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// Transient failures of one poll retried in place before the attempt fails as transient.
    /// Default 5.
    #[serde(default)]
    pub poll_retries: Option<u32>,
    /// How many low bits of `seed` the service uses. Default 64 (the contract's `seed` is an
    /// unsigned 64-bit integer); set it when the service truncates seeds.
    #[serde(default)]
    pub seed_bits: Option<u32>,
}

/// How long the best-effort `DELETE` of a cancelled job may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A generator and scorer speaking the contract.
pub struct HttpBackend {
    base: url::Url,
    token: Option<String>,
    client: reqwest::Client,
    poll_interval: Duration,
    poll_retries: u32,
    seed_bits: u32,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("base_url", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("poll_interval", &self.poll_interval)
            .field("poll_retries", &self.poll_retries)
            .finish_non_exhaustive()
    }
}

impl HttpBackend {
    pub fn new(config: HttpConfig) -> Result<Self, ConfigError> {
        let base = wire::base_url(&config.base_url)?;
        let token = wire::secret_from_env("token_env", config.token_env.as_deref())?;
        let timeout = Duration::from_secs(config.request_timeout_secs.unwrap_or(60).max(1));
        let client = wire::client(timeout).map_err(|e| ConfigError::new("", e))?;
        Ok(Self {
            base,
            token,
            client,
            poll_interval: Duration::from_millis(config.poll_interval_ms.unwrap_or(1000)),
            poll_retries: config.poll_retries.unwrap_or(5),
            seed_bits: wire::seed_bits(config.seed_bits, 64)?,
        })
    }

    /// `base_url` followed by `segments`, each percent-encoded as one path segment.
    fn url(&self, segments: &[&str]) -> url::Url {
        wire::join(&self.base, segments)
    }

    fn authorised(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn post(&self, path: &str, key: &str, body: &impl Serialize) -> reqwest::RequestBuilder {
        self.authorised(self.client.post(self.url(&[path])))
            .header("Idempotency-Key", key)
            .json(body)
    }

    /// Poll the job until it ends; on cancellation, ask the service to drop it.
    async fn wait(
        &self,
        job_id: &str,
        started: Instant,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        match self.poll(job_id, started, progress).await {
            Err(e) if e.is_cancelled() => {
                let used = self.cancel(job_id).await.unwrap_or_else(|| {
                    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
                });
                Err(BackendError::Cancelled.after(used))
            }
            other => other,
        }
    }

    async fn poll(
        &self,
        job_id: &str,
        started: Instant,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let url = self.url(&["jobs", job_id]);
        let what = format!("GET {url}");
        let mut blips = 0;
        loop {
            wire::pause(progress, self.poll_interval).await?;
            let req = self.authorised(self.client.get(url.clone()));
            match wire::heartbeating(progress, wire::json::<JobReply>(&what, req)).await {
                Ok(reply) => {
                    blips = 0;
                    if let Some(done) = reply.outcome(&what, started)? {
                        return Ok(done);
                    }
                }
                Err(BackendError::Transient(msg)) if blips < self.poll_retries => {
                    blips += 1;
                    tracing::warn!(job_id, blips, "{msg}; polling again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `DELETE` the job; the GPU time it used, when the answer says.
    async fn cancel(&self, job_id: &str) -> Option<u64> {
        #[derive(Deserialize)]
        struct Cancelled {
            gpu_ms: Option<u64>,
        }
        let url = self.url(&["jobs", job_id]);
        let req = self
            .authorised(self.client.delete(url.clone()))
            .timeout(CANCEL_TIMEOUT);
        match wire::bytes(&format!("DELETE {url}"), req).await {
            Ok(body) => {
                tracing::info!(job_id, "cancelled the job");
                serde_json::from_slice::<Cancelled>(&body)
                    .ok()
                    .and_then(|c| c.gpu_ms)
            }
            Err(e) => {
                tracing::warn!(job_id, "cancelling the job failed (ignored): {e}");
                None
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct GenerateBody<'a> {
    idempotency_key: &'a str,
    segment_id: &'a str,
    scene_type: &'a str,
    seed: u64,
    params: &'a Params,
    strategy: Option<Strategy>,
    prompt: Option<&'a str>,
    revise_uri: Option<&'a str>,
}

#[async_trait]
impl GenerationBackend for HttpBackend {
    fn seed_bits(&self, _scene_type: &str) -> u32 {
        self.seed_bits
    }

    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let key = req.idempotency_key();
        let body = GenerateBody {
            idempotency_key: &key,
            segment_id: req.segment_id.as_str(),
            scene_type: req.scene_type.as_str(),
            seed: req.seed,
            params: &req.params,
            strategy: req.strategy,
            prompt: req.prompt.as_deref(),
            revise_uri: req.revise_uri.as_deref(),
        };
        let what = format!("POST {}", self.url(&["generate"]));
        let started = Instant::now();
        let reply: JobReply = wire::heartbeating(
            progress,
            wire::json(&what, self.post("generate", &key, &body)),
        )
        .await?;
        let job_id = match reply.status {
            JobStatus::Pending => reply
                .job_id
                .filter(|j| !j.trim().is_empty())
                .ok_or_else(|| missing(&what, "job_id", "pending"))?,
            // Done or failed: `outcome` never answers "still pending" for them.
            _ => {
                return reply
                    .outcome(&what, started)?
                    .ok_or_else(|| missing(&what, "job_id", "pending"));
            }
        };
        tracing::info!(%key, job_id, "generation queued; polling");
        self.wait(&job_id, started, progress).await
    }
}

#[async_trait]
impl QaScorer for HttpBackend {
    async fn score(&self, req: &ScoreRequest) -> Result<Scored, BackendError> {
        score::score(self, req).await
    }
}
