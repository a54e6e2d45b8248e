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

/// Whether a backend's error message says the machine failed rather than the request: CUDA or
/// the device ran out of memory or was lost (PyTorch's `OutOfMemoryError`, "CUDA error: …",
/// a device-side assert, no GPU visible). Such an attempt is re-run on another worker instead of
/// being recorded as a rejected request. For adapters whose API has no field saying so (ComfyUI);
/// retake's HTTP contract says it with `"infrastructure": true`.
pub(crate) fn infrastructure(message: &str) -> bool {
    const SIGNS: [&str; 7] = [
        "out of memory",
        "outofmemoryerror",
        "cuda error",
        "device-side assert",
        "no cuda gpus are available",
        "device lost",
        "cudnn_status_not_initialized",
    ];
    let message = message.to_ascii_lowercase();
    SIGNS.iter().any(|sign| message.contains(sign))
}

#[cfg(test)]
mod infrastructure_tests {
    use super::infrastructure;

    #[test]
    fn cuda_and_device_errors_are_the_machines_and_bad_requests_are_not() {
        for machine in [
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            "RuntimeError: CUDA error: an illegal memory access was encountered",
            "RuntimeError: No CUDA GPUs are available",
            "vk: device lost",
        ] {
            assert!(infrastructure(machine), "{machine}");
        }
        for request in [
            "Prompt outputs failed validation: CheckpointLoaderSimple: ckpt_name not in list",
            "Value 0 smaller than min of 1: steps",
        ] {
            assert!(!infrastructure(request), "{request}");
        }
    }
}
