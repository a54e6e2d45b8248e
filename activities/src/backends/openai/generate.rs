//! The chapter generator: one chat completion per attempt, its text written as an artifact.

use super::{ChatRequest, Endpoint, Message, OpenAiConfig, millis};
use crate::backends::artifacts::Artifacts;
use crate::backends::config::ConfigError;
use crate::backends::wire;
use crate::io::{GenerateRequest, Generated};
use crate::ports::{BackendError, GenerationBackend, Progress};
use async_trait::async_trait;
use serde_json::Value;
use std::time::Duration;

const WHAT: &str = "chat completion";

/// Used when the configuration has no `system_prompt` and the request is in Korean.
const SYSTEM_KO: &str = "당신은 장편 소설 작가입니다. 요청받은 화의 본문만 마크다운으로 작성하세요. \
    설명, 머리말, 맺음말 없이 본문만 출력하세요. 수정 요청이 있으면 초안을 지시대로 고쳐 \
    완성된 본문 전체를 출력하세요.";

/// Used when the configuration has no `system_prompt` otherwise.
const SYSTEM_EN: &str = "You are a novelist. Write only the text of the chapter requested, in \
    Markdown, with no preamble, notes or commentary. When asked to revise a draft, apply the \
    instruction and output the complete revised chapter.";

/// Generates chapter text with an OpenAI-compatible chat-completions server.
///
/// The user message is the chapter brief (`params.prompt`), then the revise instruction
/// (`prompt`) and the draft being revised (`revise_uri`, read from the artifacts and sent between
/// `<draft>` and `</draft>`). `seed`, `temperature`, `top_p` and `max_tokens` (from the
/// parameters, else the configuration) are sent; the attempt key goes as `Idempotency-Key`.
///
/// The text is written with [`Artifacts::put`] as `attempt-N.md`; `gpu_ms` is the measured wall
/// time of the completion call in milliseconds (usage tokens are only logged). A re-run attempt
/// whose earlier run finished writing its output reuses it (no second completion); one killed
/// mid-completion sends the same `Idempotency-Key` again, and servers that ignore it (vLLM,
/// llama.cpp) generate again.
#[derive(Debug)]
pub struct OpenAiGenerator {
    endpoint: Endpoint,
    system_prompt: Option<String>,
    max_tokens: Option<u32>,
    artifacts: Artifacts,
    seed_bits: u32,
}

impl OpenAiGenerator {
    /// Check the configuration and read the API key (a missing `api_key_env` variable is an
    /// error naming `api_key_env`).
    pub fn new(config: OpenAiConfig, artifacts: Artifacts) -> Result<Self, ConfigError> {
        let timeout = Duration::from_secs(config.request_timeout_secs.unwrap_or(600).max(1));
        let endpoint = Endpoint::new(
            &config.base_url,
            &config.model,
            config.api_key_env.as_deref(),
            timeout,
        )?;
        Ok(Self {
            endpoint,
            system_prompt: config.system_prompt.filter(|s| !s.trim().is_empty()),
            max_tokens: config.max_tokens,
            artifacts,
            seed_bits: wire::seed_bits(config.seed_bits, 32)?,
        })
    }

    /// The messages of `req`, reading the draft it revises.
    async fn messages(&self, req: &GenerateRequest) -> Result<Vec<Message>, BackendError> {
        let brief = match req.params.0.get("prompt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()).filter(|s| !s.trim().is_empty()),
            Some(other) => {
                return Err(BackendError::Rejected(format!(
                    "params.prompt must be a string (the chapter brief), got {other}"
                )));
            }
        };
        let instruction = req.prompt.as_deref().filter(|s| !s.trim().is_empty());
        let draft = match &req.revise_uri {
            Some(uri) => Some(self.artifacts.get_text(uri).await?),
            None => None,
        };
        let mut parts: Vec<String> = Vec::new();
        parts.extend(brief.map(str::to_owned));
        parts.extend(instruction.map(str::to_owned));
        if let Some(draft) = draft {
            parts.push(format!("<draft>\n{}\n</draft>", draft.trim_end()));
        }
        if parts.is_empty() {
            return Err(BackendError::Rejected(format!(
                "segment {}: nothing to write from: no params.prompt (chapter brief), no revise \
                 prompt and no draft",
                req.segment_id
            )));
        }
        let korean = brief.into_iter().chain(instruction).any(has_hangul);
        let system = match &self.system_prompt {
            Some(s) => s.clone(),
            None if korean => SYSTEM_KO.to_owned(),
            None => SYSTEM_EN.to_owned(),
        };
        Ok(vec![
            Message::system(system),
            Message::user(parts.join("\n\n")),
        ])
    }
}

#[async_trait]
impl GenerationBackend for OpenAiGenerator {
    fn seed_bits(&self, _scene_type: &str) -> u32 {
        self.seed_bits
    }

    /// `gpu_ms` is the measured wall time of the completion call in milliseconds (the server's
    /// time to answer, queueing included); token usage is only logged.
    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        if let Some((output_uri, gpu_ms)) = self.artifacts.existing(&req.key, "md").await {
            tracing::info!(%output_uri, "reusing the output of an earlier run of this attempt");
            return Ok(Generated {
                output_uri,
                gpu_ms,
                worker: None,
            });
        }
        let completion = wire::heartbeating(progress, async {
            let body = ChatRequest {
                model: &self.endpoint.model,
                messages: self.messages(req).await?,
                seed: req.seed,
                temperature: req.params.number("temperature"),
                top_p: req.params.number("top_p"),
                max_tokens: max_tokens(req).or(self.max_tokens.map(u64::from)),
                response_format: None,
                stream: false,
            };
            self.endpoint
                .complete(WHAT, &body, &req.idempotency_key())
                .await
        })
        .await?;
        let gpu_ms = millis(completion.elapsed);
        let output_uri = self
            .artifacts
            .put_complete(&req.key, "md", completion.text.as_bytes(), gpu_ms)
            .await?;
        Ok(Generated {
            output_uri,
            gpu_ms,
            worker: None,
        })
    }
}

/// `params.max_tokens` when it is a positive number (rounded: jitter may make it fractional).
fn max_tokens(req: &GenerateRequest) -> Option<u64> {
    let n = req.params.number("max_tokens")?;
    // Positive and finite, checked; `as` saturates above u64::MAX.
    (n.is_finite() && n >= 1.0).then(|| n.round() as u64)
}

fn has_hangul(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{AC00}'..='\u{D7A3}' | '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}'))
}
