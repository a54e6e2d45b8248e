//! Routes `generate` and `score_qa` to the backends configured for the request's scene type.

use crate::backends::artifacts::Artifacts;
use crate::backends::config::{BackendsConfig, ConfigError, GeneratorConfig, Route, ScorerConfig};
use crate::backends::{comfyui, http, openai};
use crate::io::{GenerateRequest, Generated, ScoreRequest, Scored};
use crate::ports::{BackendError, GenerationBackend, Progress, QaScorer};
use crate::sim::Simulator;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;

type Pair = (Arc<dyn GenerationBackend>, Arc<dyn QaScorer>);

/// Generators and scorers by scene type, with a default route.
pub struct Router {
    routes: BTreeMap<String, Pair>,
    default: Pair,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("scene_types", &self.routes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// Build every configured adapter (files such as ComfyUI graphs are read now, so a bad
    /// configuration stops the worker at start-up, not at the first attempt). `sim` serves the
    /// `simulator` routes.
    pub fn from_config(config: &BackendsConfig, sim: Simulator) -> Result<Self, ConfigError> {
        let artifacts = Artifacts::with_roots(
            config
                .artifacts_dir
                .clone()
                .unwrap_or_else(|| crate::files::DEFAULT_ROOT.into()),
            crate::files::FileRoots::new(config.file_roots.iter().cloned()),
        )
        .with_urls(config.url_roots());
        let sim = Arc::new(sim);
        let build_generator = |route: &Route| -> Result<Arc<dyn GenerationBackend>, ConfigError> {
            let generator: Arc<dyn GenerationBackend> = match &route.generate {
                GeneratorConfig::Simulator => sim.clone(),
                GeneratorConfig::Http(c) => Arc::new(http::HttpBackend::new(c.clone())?),
                GeneratorConfig::Openai(c) => {
                    Arc::new(openai::OpenAiGenerator::new(c.clone(), artifacts.clone())?)
                }
                GeneratorConfig::Comfyui(c) => Arc::new(comfyui::ComfyUi::new(c.clone())?),
            };
            Ok(generator)
        };
        let build_scorer = |route: &Route| -> Result<Arc<dyn QaScorer>, ConfigError> {
            Ok(match &route.score {
                ScorerConfig::Simulator => sim.clone(),
                ScorerConfig::Http(c) => Arc::new(http::HttpBackend::new(c.clone())?),
                ScorerConfig::LlmJudge(c) => {
                    Arc::new(openai::LlmJudge::new(c.clone(), artifacts.clone())?)
                }
            })
        };
        let build = |route: &Route| -> Result<Pair, ConfigError> {
            let generator = build_generator(route).map_err(|e| e.within("generate"))?;
            let scorer = build_scorer(route).map_err(|e| e.within("score"))?;
            Ok((generator, scorer))
        };
        let default =
            build(&config.default.clone().unwrap_or_default()).map_err(|e| e.within("default"))?;
        let mut routes = BTreeMap::new();
        for (scene, route) in &config.scene_types {
            let pair = build(route).map_err(|e| e.within(&format!("scene_types.{scene}")))?;
            routes.insert(scene.clone(), pair);
        }
        Ok(Self { routes, default })
    }

    fn route(&self, scene_type: &str) -> &Pair {
        self.routes.get(scene_type).unwrap_or(&self.default)
    }

    /// The scene types with a route of their own.
    pub fn scene_types(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

#[async_trait]
impl GenerationBackend for Router {
    async fn generate(
        &self,
        req: &GenerateRequest,
        progress: &dyn Progress,
    ) -> Result<Generated, BackendError> {
        self.route(req.scene_type.as_str())
            .0
            .generate(req, progress)
            .await
    }

    fn seed_bits(&self, scene_type: &str) -> u32 {
        self.route(scene_type).0.seed_bits(scene_type)
    }

    fn params_taken(&self, scene_type: &str) -> Option<Vec<String>> {
        self.route(scene_type).0.params_taken(scene_type)
    }
}

#[async_trait]
impl QaScorer for Router {
    async fn score(&self, req: &ScoreRequest) -> Result<Scored, BackendError> {
        self.route(req.scene_type.as_str()).1.score(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_adapter_setting_is_named_with_its_full_path() {
        let config = BackendsConfig::parse(
            "b.json",
            r#"{"scene_types": {"chapter": {
                "generate": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m",
                             "api_key_env": "RETAKE_TEST_SURELY_UNSET_KEY"},
                "score": {"kind": "simulator"}}}}"#,
        )
        .unwrap();
        let err = Router::from_config(&config, Simulator::new(0)).unwrap_err();
        assert_eq!(
            err.field, "scene_types.chapter.generate.api_key_env",
            "{err}"
        );
    }

    #[test]
    fn listed_scene_types_get_their_own_route() {
        let config = BackendsConfig::parse(
            "b.json",
            r#"{"scene_types": {"chapter": {
                "generate": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"},
                "score": {"kind": "llm_judge", "base_url": "http://127.0.0.1:1/v1", "model": "j"}}}}"#,
        )
        .unwrap();
        let router = Router::from_config(&config, Simulator::new(0)).unwrap();
        assert_eq!(router.scene_types().collect::<Vec<_>>(), ["chapter"]);
    }
}
