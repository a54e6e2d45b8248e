//! OpenAI-compatible chat completions (vLLM, llama.cpp server, Ollama, OpenAI itself):
//! [`OpenAiGenerator`] writes chapter text, [`LlmJudge`] scores it with a category breakdown.
//!
//! Both speak `POST {base_url}/chat/completions` with `stream: false` and read
//! `choices[0].message.content`. Failures are classified by the shared `wire` plumbing: 408, 429,
//! 5xx and connection failures are transient (Temporal retries), any other refusal and a malformed
//! answer are rejections naming the problem.

mod generate;
mod judge;
#[cfg(test)]
mod tests;

pub use generate::OpenAiGenerator;
pub use judge::{DEFAULT_CATEGORIES, LlmJudge};

use crate::backends::config::ConfigError;
use crate::backends::wire;
use crate::ports::BackendError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The chat-completions generator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// e.g. `http://127.0.0.1:8000/v1` (vLLM), `http://127.0.0.1:11434/v1` (Ollama).
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token), if any. It is read when
    /// the generator is built; a variable that is not set stops the worker at start-up.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// System message; default: a novelist's instructions, in Korean when the brief or the revise
    /// instruction is Korean, else in English.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// `max_tokens` when the attempt's parameters give none.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Seconds one completion may take. Default 600.
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
    /// How many low bits of `seed` the server uses. Default 32: llama.cpp (and so Ollama and
    /// llama-cpp-python) keeps only the low 32 bits, so seeds s and s + 2^32 give the same text;
    /// retake derives seeds below 2^32 for them so the recorded seed is the one used. vLLM takes a
    /// 64-bit seed: 53 (the policy's maximum) is safe there.
    #[serde(default)]
    pub seed_bits: Option<u32>,
}

/// The LLM judge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    pub base_url: String,
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token), if any.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Categories the judge must score. Default: narrative_quality, plot_consistency,
    /// character_consistency, setting_adherence.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// Seconds one completion may take. Default 300.
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
}

/// One chat-completions endpoint: URL, model, credentials and an HTTP client.
struct Endpoint {
    url: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn new(
        base_url: &str,
        model: &str,
        api_key_env: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let base = wire::base_url(base_url)?;
        if model.trim().is_empty() {
            return Err(ConfigError::new("model", "must not be empty"));
        }
        let api_key = wire::secret_from_env("api_key_env", api_key_env)?;
        let client = wire::client(timeout).map_err(|e| ConfigError::new("", e))?;
        Ok(Self {
            url: format!("{}/chat/completions", base.as_str().trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            client,
        })
    }

    /// One completion: the text of `choices[0].message.content` and how long the call took.
    async fn complete(
        &self,
        what: &str,
        body: &ChatRequest<'_>,
        idempotency_key: &str,
    ) -> Result<Completion, BackendError> {
        let mut req = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let started = Instant::now();
        let resp: ChatResponse = wire::json(what, req).await?;
        let elapsed = started.elapsed();
        let choice = resp.choices.into_iter().next().ok_or_else(|| {
            BackendError::Rejected(format!(
                "{what}: malformed response at `choices`: no choice"
            ))
        })?;
        let text = choice
            .message
            .content
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                BackendError::Rejected(format!(
                    "{what}: malformed response at `choices[0].message.content`: empty or missing"
                ))
            })?;
        let usage = resp.usage.unwrap_or_default();
        tracing::info!(
            model = %self.model,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            finish_reason = choice.finish_reason.as_deref().unwrap_or(""),
            "{what}: chat completion"
        );
        if choice.finish_reason.as_deref() == Some("length") {
            tracing::warn!(model = %self.model, "{what}: the completion stopped at max_tokens");
        }
        Ok(Completion { text, elapsed })
    }
}

struct Completion {
    text: String,
    elapsed: Duration,
}

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<Message>,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    stream: bool,
}

#[derive(Debug, Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

impl Message {
    fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system",
            content: content.into(),
        }
    }

    fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user",
            content: content.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// Milliseconds of a duration, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
