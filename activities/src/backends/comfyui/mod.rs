//! ComfyUI: the seed and parameters written into the workflow graph's sampler nodes, queued with
//! `POST /prompt`, `GET /history/{prompt_id}` polled, the output referenced by its `/view` URL.
//!
//! * **Graph.** `workflow` is a graph in ComfyUI's API format (File → Export (API)), read and
//!   checked when the worker starts. The sampler nodes are those named in `sampler_nodes`, else
//!   every node whose `class_type` contains `KSampler` (or contains `Sampler` and has a seed
//!   input). Per attempt, a copy of the graph gets the attempt's seed in each sampler's `seed`
//!   input (`noise_seed` when the node has that instead, as `KSamplerAdvanced` does) and the
//!   attempt's parameters mapped by `inputs` (default `cfg_scale` → `cfg`, `denoise_strength` →
//!   `denoise`, `steps` → `steps`, `sampler_name` → `sampler_name`, `scheduler` → `scheduler`;
//!   only parameters present in the attempt; a fractional `steps` is rounded). Other nodes are
//!   sent as they are.
//! * **Queue.** `POST {base_url}/prompt` `{"prompt": graph, "client_id": idempotency_key}` →
//!   `{"prompt_id": "…", "number": 3, "node_errors": {}}`. A refusal (HTTP 400, or node errors)
//!   fails the attempt for good with ComfyUI's messages.
//! * **Poll.** `GET {base_url}/history/{prompt_id}` every `poll_interval_ms` (default 1000) while
//!   heartbeating; `{}` means still queued or running. On `status.status_str` `success` the
//!   output is the first file (`images`, `gifs`, `videos`, `audio`) of the outputs by node id,
//!   saved files (`type` `output`) before previews, as
//!   `{base_url}/view?filename=…&subfolder=…&type=…`. `error` fails the attempt for good with
//!   the node's exception message; an interruption by someone else is transient. `gpu_ms` is
//!   the time between the `execution_start` and `execution_success` messages, or the wall time
//!   the worker waited when ComfyUI gives no timestamps. Transient poll failures are retried in
//!   place (`poll_retries`, default 5); every 10 polls the worker checks that the prompt is still
//!   queued, and fails transiently if ComfyUI lost it (a restart empties its queue).
//! * **Cancellation.** `POST /interrupt` `{"prompt_id": …}` when the prompt is the one running
//!   (recent versions interrupt only that prompt; the worker checks `/queue` first because older
//!   ones interrupt whatever runs), then `POST /queue` `{"delete": [prompt_id]}`; best effort.
//! * **Idempotency.** ComfyUI has no idempotency keys, but it keeps `client_id` in the
//!   `extra_data` of queued prompts and of history entries. Before queueing, the worker looks for
//!   a prompt of the same attempt (same `client_id`) in `GET /queue` and among the last
//!   `history_lookup` (default 100) entries of `GET /history?max_items=…`; a queued or running one
//!   is polled again, a successful one is answered at once. So a re-run activity (worker crash,
//!   lost heartbeat) does not queue the attempt twice, unless ComfyUI restarted in between (its
//!   queue and history are in memory) or the entry fell out of the history window. A failed or
//!   interrupted earlier prompt is queued again.

mod graph;
mod history;
#[cfg(test)]
mod tests;

use crate::backends::config::ConfigError;
use crate::backends::wire;
use crate::io::{GenerateRequest, Generated};
use crate::ports::{BackendError, GenerationBackend, Progress};
use async_trait::async_trait;
use graph::Workflow;
use history::Entry;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComfyUiConfig {
    /// e.g. `http://127.0.0.1:8188`.
    pub base_url: String,
    /// The workflow graph in ComfyUI's API format (File → Export (API)); a relative path is
    /// relative to the worker's working directory.
    pub workflow: PathBuf,
    /// Node ids whose inputs receive the seed and parameters. Default: every node whose
    /// `class_type` contains `KSampler` (or contains `Sampler` and has a `seed`/`noise_seed`
    /// input).
    #[serde(default)]
    pub sampler_nodes: Option<Vec<String>>,
    /// retake parameter → sampler input name, replacing the default: `cfg_scale` → `cfg`,
    /// `denoise_strength` → `denoise`, `steps` → `steps`, `sampler_name` → `sampler_name`,
    /// `scheduler` → `scheduler`.
    #[serde(default)]
    pub inputs: Option<BTreeMap<String, String>>,
    /// Milliseconds between polls of `/history`. Default 1000.
    #[serde(default)]
    pub poll_interval_ms: Option<u64>,
    /// Seconds one HTTP request may take. Default 60.
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
    /// Transient failures of one poll retried in place before the attempt fails as transient.
    /// Default 5.
    #[serde(default)]
    pub poll_retries: Option<u32>,
    /// How many recent `/history` entries are searched for an earlier prompt of the same attempt
    /// before queueing; 0 turns the search (of history and queue) off. Default 100.
    #[serde(default)]
    pub history_lookup: Option<usize>,
    /// How many low bits of the seed the graph's seeded nodes use. Default 64: ComfyUI's seed
    /// inputs (`KSampler`, `ImageAddNoise`, …) take 0..=2^64-1, so the policy's `seed_bits`
    /// (at most 53) decides.
    #[serde(default)]
    pub seed_bits: Option<u32>,
}

/// How long each best-effort cancellation request may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancelled prompt is waited for to learn its execution time: the node in progress
/// runs to its end (the activity keeps heartbeating meanwhile). Past this, the wall time is
/// billed and the prompt may still be running.
const CANCEL_WAIT: Duration = Duration::from_secs(120);
/// How often a cancelled prompt's history is read while waiting for its execution time.
const CANCEL_POLL: Duration = Duration::from_millis(250);
/// Every this many polls, check the prompt is still queued.
const QUEUE_CHECK_EVERY: u32 = 10;

#[derive(Debug)]
pub struct ComfyUi {
    base: url::Url,
    workflow: Workflow,
    client: reqwest::Client,
    poll_interval: Duration,
    poll_retries: u32,
    history_lookup: usize,
    seed_bits: u32,
}

impl ComfyUi {
    pub fn new(config: ComfyUiConfig) -> Result<Self, ConfigError> {
        let base = wire::base_url(&config.base_url)?;
        let workflow = Workflow::load(&config)?;
        tracing::debug!(samplers = ?workflow.samplers(), "ComfyUI workflow {}", config.workflow.display());
        let timeout = Duration::from_secs(config.request_timeout_secs.unwrap_or(60).max(1));
        Ok(Self {
            base,
            workflow,
            client: wire::client(timeout).map_err(|e| ConfigError::new("", e))?,
            poll_interval: Duration::from_millis(config.poll_interval_ms.unwrap_or(1000)),
            poll_retries: config.poll_retries.unwrap_or(5),
            history_lookup: config.history_lookup.unwrap_or(100),
            seed_bits: wire::seed_bits(config.seed_bits, 64)?,
        })
    }

    fn url(&self, segments: &[&str]) -> url::Url {
        wire::join(&self.base, segments)
    }

    async fn get(&self, url: url::Url) -> Result<Value, BackendError> {
        wire::json(&format!("GET {url}"), self.client.get(url.clone())).await
    }

    /// An earlier prompt of this attempt, queued or succeeded (see the module doc), and the
    /// execution time of its earlier prompts that were interrupted or failed (billed with this
    /// run). A lookup the server refuses (an old version) is skipped; a transient failure is the
    /// attempt's.
    async fn find(&self, client_id: &str) -> Result<(Option<Earlier>, u64), BackendError> {
        if self.history_lookup == 0 {
            return Ok((None, 0));
        }
        let skipped = |e: BackendError| match e {
            BackendError::Rejected(msg) => {
                tracing::warn!("looking for an earlier prompt of this attempt: {msg}; skipped");
                Ok(Value::Null)
            }
            other => Err(other),
        };
        let queue = self.get(self.url(&["queue"])).await.or_else(skipped)?;
        let mut url = self.url(&["history"]);
        url.query_pairs_mut()
            .append_pair("max_items", &self.history_lookup.to_string());
        let recent = self.get(url).await.or_else(skipped)?;
        let spent = millis(history::spent_before(&recent, client_id));
        if let Some((id, ..)) = history::queued(&queue)
            .into_iter()
            .find(|(_, c, _)| c.as_deref() == Some(client_id))
        {
            return Ok((Some(Earlier::Queued(id)), spent));
        }
        let done =
            history::succeeded(&recent, client_id).map(|(id, entry)| Earlier::Finished(id, entry));
        Ok((done, spent))
    }

    /// `POST /prompt`; the prompt id.
    async fn queue(&self, client_id: &str, graph: Value) -> Result<String, BackendError> {
        let url = self.url(&["prompt"]);
        let what = format!("POST {url}");
        let req = self
            .client
            .post(url)
            .json(&json!({"prompt": graph, "client_id": client_id}));
        let resp = req
            .send()
            .await
            .map_err(|e| BackendError::Transient(format!("{what}: {}", wire::describe(&e))))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            BackendError::Transient(format!("{what}: reading the body: {}", wire::describe(&e)))
        })?;
        if !status.is_success() {
            let msg = format!("HTTP {status}: {} ({what})", history::refusal(&body));
            let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
            return Err(if transient {
                BackendError::Transient(msg)
            } else {
                BackendError::Rejected(msg)
            });
        }
        let reply: PromptReply = wire::decode(&what, &body)?;
        let errors = history::node_errors(reply.node_errors.as_ref());
        if !errors.is_empty() {
            return Err(BackendError::Rejected(format!(
                "{} ({what})",
                errors.join("; ")
            )));
        }
        Ok(reply.prompt_id)
    }

    async fn poll(
        &self,
        prompt_id: &str,
        started: Instant,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let url = self.url(&["history", prompt_id]);
        let what = format!("GET {url}");
        let (mut blips, mut polls) = (0, 0);
        loop {
            wire::pause(progress, self.poll_interval).await?;
            polls += 1;
            let answer = match wire::heartbeating(progress, self.get(url.clone())).await {
                Ok(answer) => answer,
                Err(BackendError::Transient(msg)) if blips < self.poll_retries => {
                    blips += 1;
                    tracing::warn!(prompt_id, blips, "{msg}; polling again");
                    continue;
                }
                Err(e) => return Err(e),
            };
            blips = 0;
            let entry = match answer.get(prompt_id) {
                Some(e) => history::entry(e),
                None if polls % QUEUE_CHECK_EVERY == 0 => {
                    self.still_queued(prompt_id, &what, progress).await?;
                    continue;
                }
                None => continue,
            };
            if let Some(done) = self.finish(&what, entry, started)? {
                return Ok(done);
            }
        }
    }

    /// The result of a finished entry; `None` while it runs.
    fn finish(
        &self,
        what: &str,
        entry: Entry,
        started: Instant,
    ) -> Result<Option<Generated>, BackendError> {
        match entry {
            Entry::Running => Ok(None),
            Entry::Success {
                file: Some(file),
                elapsed,
            } => {
                let gpu = elapsed.unwrap_or_else(|| started.elapsed());
                let gpu_ms = u64::try_from(gpu.as_millis()).unwrap_or(u64::MAX);
                Ok(Some(Generated {
                    output_uri: self.view_uri(&file),
                    gpu_ms,
                    worker: None,
                }))
            }
            other => Err(history::failure(what, other)),
        }
    }

    /// The `/view` URL of an output file.
    fn view_uri(&self, file: &history::FileRef) -> String {
        let mut uri = self.url(&["view"]);
        uri.query_pairs_mut()
            .append_pair("filename", &file.filename)
            .append_pair("subfolder", &file.subfolder)
            .append_pair("type", &file.kind);
        uri.into()
    }

    /// Fail transiently when the prompt is neither queued nor (any longer) in the history.
    async fn still_queued(
        &self,
        prompt_id: &str,
        what: &str,
        progress: &dyn Progress,
    ) -> Result<(), BackendError> {
        let queue = wire::heartbeating(progress, self.get(self.url(&["queue"]))).await?;
        if history::queued(&queue)
            .iter()
            .any(|(id, ..)| id == prompt_id)
        {
            return Ok(());
        }
        // It may have finished between the two requests.
        let url = self.url(&["history", prompt_id]);
        let answer = wire::heartbeating(progress, self.get(url)).await?;
        if answer.get(prompt_id).is_some() {
            return Ok(());
        }
        Err(BackendError::Transient(format!(
            "{what}: ComfyUI no longer knows the prompt (restarted, or deleted from its queue)"
        )))
    }

    /// Best effort: interrupt the prompt if it runs, drop it if it waits. Then the GPU time it
    /// used: ComfyUI checks for an interrupt only between nodes, so a prompt in its last node
    /// finishes anyway, and an interrupted one ran until the node in progress ended; both are in
    /// `/history` with their execution timestamps, read for up to [`CANCEL_WAIT`]. A prompt
    /// that never ran used nothing; one that ran but left no timestamps is billed the wall time
    /// the worker waited since `started`. A prompt that finished anyway also gives its output,
    /// which the attempt keeps.
    async fn cancel(&self, prompt_id: &str, started: Instant) -> (u64, Option<String>) {
        let queue = self
            .client
            .get(self.url(&["queue"]))
            .timeout(CANCEL_TIMEOUT);
        let running = match wire::json::<Value>("GET /queue", queue).await {
            Ok(q) => history::queued(&q)
                .iter()
                .any(|(id, _, running)| id == prompt_id && *running),
            Err(e) => {
                tracing::warn!(prompt_id, "cancelling: {e}; not interrupting");
                false
            }
        };
        let mut calls = vec![("queue", json!({"delete": [prompt_id]}))];
        if running {
            calls.insert(0, ("interrupt", json!({"prompt_id": prompt_id})));
        }
        for (path, body) in calls {
            let url = self.url(&[path]);
            let req = self
                .client
                .post(url.clone())
                .json(&body)
                .timeout(CANCEL_TIMEOUT);
            if let Err(e) = wire::bytes(&format!("POST {url}"), req).await {
                tracing::warn!(prompt_id, "cancelling the prompt (ignored): {e}");
            }
        }
        if !running {
            return (0, None);
        }
        let waited = millis(started.elapsed());
        let url = self.url(&["history", prompt_id]);
        let deadline = Instant::now() + CANCEL_WAIT;
        while Instant::now() < deadline {
            let req = self.client.get(url.clone()).timeout(CANCEL_TIMEOUT);
            if let Ok(answer) = wire::json::<Value>("GET /history", req).await
                && let Some(e) = answer.get(prompt_id)
            {
                let entry = history::entry(e);
                if entry != Entry::Running {
                    let output = match &entry {
                        Entry::Success {
                            file: Some(file), ..
                        } => Some(self.view_uri(file)),
                        _ => None,
                    };
                    return (entry.elapsed().map_or(waited, millis), output);
                }
            }
            tokio::time::sleep(CANCEL_POLL).await;
        }
        tracing::warn!(
            prompt_id,
            "no execution time after cancelling; billing the wall time"
        );
        (waited, None)
    }
}

/// A prompt of the same attempt found before queueing.
#[derive(Debug)]
enum Earlier {
    Queued(String),
    Finished(String, Entry),
}

#[derive(Debug, Deserialize)]
struct PromptReply {
    prompt_id: String,
    #[serde(default)]
    node_errors: Option<Value>,
}

#[async_trait]
impl GenerationBackend for ComfyUi {
    fn seed_bits(&self, _scene_type: &str) -> u32 {
        self.seed_bits
    }

    fn params_taken(&self, _scene_type: &str) -> Option<Vec<String>> {
        Some(self.workflow.params_taken())
    }

    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let key = req.idempotency_key();
        let started = Instant::now();
        let (earlier, spent) = wire::heartbeating(progress, self.find(&key)).await?;
        with_spent(self.run(req, &key, earlier, started, progress).await, spent)
    }
}

/// `result` plus the GPU time the attempt's earlier prompts used (interrupted by someone else and
/// queued again, say): the attempt used it all, so all of it is billed.
fn with_spent(
    result: Result<Generated, BackendError>,
    spent: u64,
) -> Result<Generated, BackendError> {
    if spent == 0 {
        return result;
    }
    match result {
        Ok(mut g) => {
            g.gpu_ms = g.gpu_ms.saturating_add(spent);
            Ok(g)
        }
        Err(e) => {
            let (e, used) = e.split();
            Err(e.after(used.unwrap_or(0).saturating_add(spent)))
        }
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ComfyUi {
    /// Queue the attempt's prompt (or pick up an earlier one) and wait for it.
    async fn run(
        &self,
        req: &GenerateRequest,
        key: &str,
        earlier: Option<Earlier>,
        started: Instant,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        let prompt_id = match earlier {
            Some(Earlier::Queued(id)) => {
                tracing::info!(%key, prompt_id = id, "found this attempt's earlier prompt; polling it");
                id
            }
            Some(Earlier::Finished(id, entry)) => {
                tracing::info!(%key, prompt_id = id, "this attempt's earlier prompt already finished");
                let what = format!("GET {}", self.url(&["history"]));
                if let Some(done) = self.finish(&what, entry, started)? {
                    return Ok(done);
                }
                id
            }
            None => {
                let graph = self.workflow.prepare(req.seed, &req.params);
                let id = wire::heartbeating(progress, self.queue(key, graph)).await?;
                tracing::info!(%key, prompt_id = id, "prompt queued; polling");
                id
            }
        };
        match self.poll(&prompt_id, started, progress).await {
            Err(e) if e.is_cancelled() => {
                let (used, output) = self.cancel(&prompt_id, started).await;
                Err(BackendError::Cancelled.after(used).with_output(output))
            }
            other => other,
        }
    }
}
