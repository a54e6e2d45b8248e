//! Real generation and QA backends behind the [`GenerationBackend`](crate::ports::GenerationBackend)
//! and [`QaScorer`](crate::ports::QaScorer) ports, selected per scene type by a JSON configuration
//! ([`BackendsConfig`], routed by [`Router`]):
//!
//! * [`http`]: retake's own HTTP JSON contract (synchronous result or job + polling);
//! * [`openai`]: OpenAI-compatible chat completions (vLLM, llama.cpp server, Ollama) for chapter
//!   text, and an LLM judge that scores with a category breakdown;
//! * [`comfyui`]: ComfyUI's `/prompt` + `/history` API with the seed and parameters written into
//!   the workflow graph's sampler nodes.
//!
//! Outputs travel by reference (a URI), never as Temporal payloads: text is written to the
//! [`artifacts`] directory, media stays where the backend put it.

pub mod artifacts;
pub mod comfyui;
pub mod config;
pub mod http;
pub mod openai;
pub mod router;
pub(crate) mod wire;

pub use config::{BackendsConfig, ConfigError};
pub use router::Router;
