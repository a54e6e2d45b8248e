//! The backends configuration: which generator and scorer each scene type uses.
//!
//! ```json
//! {
//!   "artifacts_dir": ".retake/artifacts",
//!   "default": {"generate": {"kind": "simulator"}, "score": {"kind": "simulator"}},
//!   "scene_types": {
//!     "chapter": {
//!       "generate": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-14b-instruct"},
//!       "score": {"kind": "llm_judge", "base_url": "http://127.0.0.1:8000/v1", "model": "qwen2.5-14b-instruct"}
//!     },
//!     "dialogue": {
//!       "generate": {"kind": "comfyui", "base_url": "http://127.0.0.1:8188", "workflow": "flows/dialogue.json"},
//!       "score": {"kind": "http", "base_url": "http://qa.internal:9000"}
//!     }
//!   }
//! }
//! ```

use crate::backends::{comfyui, http, openai};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("backends configuration {source_name}: {field}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source_name: String::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Generators and scorers per scene type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// Where text outputs are written (default `.retake/artifacts`).
    #[serde(default)]
    pub artifacts_dir: Option<PathBuf>,
    /// Other folders whose files may be read as drafts to revise (`params.output_uri`); the
    /// artifacts folder is always one. No other local file is ever opened.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
    /// URL prefixes (`http(s)://host[:port][/path]`) under which drafts to revise and chapters to
    /// judge may be fetched; every backend's own `base_url` is always one. No other `http(s)` URL
    /// is ever requested for a text (see [`crate::urls`]).
    #[serde(default)]
    pub url_roots: Vec<crate::urls::UrlRoot>,
    /// The route of scene types not listed (default: the simulator for both).
    #[serde(default)]
    pub default: Option<Route>,
    #[serde(default)]
    pub scene_types: BTreeMap<String, Route>,
}

/// The generator and the scorer of a scene type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub generate: GeneratorConfig,
    pub score: ScorerConfig,
}

impl Default for Route {
    fn default() -> Self {
        Self {
            generate: GeneratorConfig::Simulator,
            score: ScorerConfig::Simulator,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GeneratorConfig {
    Simulator,
    Http(http::HttpConfig),
    Openai(openai::OpenAiConfig),
    Comfyui(comfyui::ComfyUiConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScorerConfig {
    Simulator,
    Http(http::HttpConfig),
    LlmJudge(openai::JudgeConfig),
}

impl BackendsConfig {
    /// The URL roots a worker reads texts under: [`BackendsConfig::url_roots`] and each
    /// configured backend's `base_url` (a backend's outputs live there). A `base_url` that cannot
    /// be a root (user info, a query) adds nothing: its adapter refuses it or its outputs stay
    /// unread.
    pub fn url_roots(&self) -> crate::urls::UrlRoots {
        let routes = self.default.iter().chain(self.scene_types.values());
        let bases = routes.flat_map(|r| {
            let generate = match &r.generate {
                GeneratorConfig::Simulator => None,
                GeneratorConfig::Http(c) => Some(&c.base_url),
                GeneratorConfig::Openai(c) => Some(&c.base_url),
                GeneratorConfig::Comfyui(c) => Some(&c.base_url),
            };
            let score = match &r.score {
                ScorerConfig::Simulator => None,
                ScorerConfig::Http(c) => Some(&c.base_url),
                ScorerConfig::LlmJudge(c) => Some(&c.base_url),
            };
            generate.into_iter().chain(score)
        });
        bases.filter_map(|b| b.parse().ok()).fold(
            crate::urls::UrlRoots::new(self.url_roots.iter().cloned()),
            |roots, root| roots.with(root),
        )
    }

    /// Parse JSON text; `source_name` (a file name) is named in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
            source_name: source_name.to_owned(),
            field: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }

    /// Read and parse a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            field: String::new(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&name, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kind_is_named_with_its_path() {
        let err = BackendsConfig::parse(
            "b.json",
            r#"{"scene_types": {"chapter": {"generate": {"kind": "dalle"}, "score": {"kind": "simulator"}}}}"#,
        )
        .unwrap_err();
        assert!(
            err.field.starts_with("scene_types.chapter.generate"),
            "{err}"
        );
        assert!(err.to_string().contains("dalle"), "{err}");
    }

    #[test]
    fn the_example_in_deploy_parses() {
        let text = include_str!("../../../deploy/backends.example.json");
        let c = BackendsConfig::parse("backends.example.json", text).unwrap();
        assert_eq!(c.scene_types.len(), 2);
    }

    #[test]
    fn an_empty_configuration_routes_everything_to_the_simulator() {
        let c = BackendsConfig::parse("b.json", "{}").unwrap();
        assert!(c.scene_types.is_empty() && c.default.is_none());
    }

    #[test]
    fn a_worker_reads_urls_only_under_its_url_roots_and_its_backends_base_urls() {
        let c = BackendsConfig::parse(
            "b.json",
            r#"{"url_roots": ["https://drafts.example/novel-7/"],
                "scene_types": {"chapter": {
                  "generate": {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m"},
                  "score": {"kind": "http", "base_url": "http://qa.internal:9000"}}}}"#,
        )
        .unwrap();
        let roots = c.url_roots();
        for ok in [
            "https://drafts.example/novel-7/ch12.md",
            "http://127.0.0.1:8000/v1/files/ch12.md",
            "http://qa.internal:9000/outputs/5.md",
        ] {
            assert!(roots.admits_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:8001/v1/x",
            "http://127.0.0.1:8000/admin",
            "https://drafts.example/other/x",
        ] {
            assert!(roots.admits_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_url_root_that_cannot_be_one_is_named_with_its_path() {
        let err =
            BackendsConfig::parse("b.json", r#"{"url_roots": ["http://u:p@host/"]}"#).unwrap_err();
        assert!(err.field.starts_with("url_roots"), "{err}");
        assert!(err.to_string().contains("user name"), "{err}");
    }
}
