//! The workflow graph (API format): loaded and checked once, then copied per attempt with the
//! seed and parameters written into the sampler nodes.

use super::ComfyUiConfig;
use crate::backends::config::ConfigError;
use retake_domain::contract::Params;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// retake parameter → sampler input, when the configuration names none.
const DEFAULT_INPUTS: [(&str, &str); 5] = [
    ("cfg_scale", "cfg"),
    ("denoise_strength", "denoise"),
    ("steps", "steps"),
    ("sampler_name", "sampler_name"),
    ("scheduler", "scheduler"),
];

#[derive(Debug)]
pub(super) struct Workflow {
    graph: Map<String, Value>,
    /// Node ids, sorted.
    samplers: Vec<String>,
    inputs: BTreeMap<String, String>,
}

impl Workflow {
    pub(super) fn load(config: &ComfyUiConfig) -> Result<Self, ConfigError> {
        let path = config.workflow.display();
        let bad = |msg: String| ConfigError::new("workflow", format!("{path}: {msg}"));
        let text = std::fs::read_to_string(&config.workflow)
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Value::Object(graph) = value else {
            return Err(bad("must be a JSON object of nodes by id".into()));
        };
        if graph.get("nodes").is_some_and(Value::is_array) {
            return Err(bad(
                "this is ComfyUI's UI format; export the workflow with File → Export (API)".into(),
            ));
        }
        for (id, node) in &graph {
            let class = node.get("class_type").and_then(Value::as_str);
            if class.is_none() || !node.get("inputs").is_some_and(Value::is_object) {
                return Err(bad(format!(
                    "node {id:?} has no `class_type` and `inputs`: not an API-format graph \
                     (File → Export (API))"
                )));
            }
        }
        let samplers = match &config.sampler_nodes {
            Some(ids) => {
                if ids.is_empty() {
                    return Err(ConfigError::new(
                        "sampler_nodes",
                        "must name at least one node",
                    ));
                }
                if let Some(id) = ids.iter().find(|id| !graph.contains_key(id.as_str())) {
                    return Err(ConfigError::new(
                        "sampler_nodes",
                        format!("node {id:?} is not in {path}"),
                    ));
                }
                let mut ids = ids.clone();
                ids.sort();
                ids.dedup();
                ids
            }
            None => graph
                .iter()
                .filter(|(_, n)| is_sampler(n))
                .map(|(id, _)| id.clone())
                .collect(),
        };
        if samplers.is_empty() {
            return Err(bad(
                "no sampler node (a `class_type` containing KSampler, or a sampler with a seed \
                 input); name the nodes in `sampler_nodes`"
                    .into(),
            ));
        }
        let inputs = match &config.inputs {
            Some(map) => map.clone(),
            None => DEFAULT_INPUTS
                .iter()
                .map(|(p, i)| ((*p).to_owned(), (*i).to_owned()))
                .collect(),
        };
        Ok(Self {
            graph,
            samplers,
            inputs,
        })
    }

    /// The sampler node ids, sorted.
    pub(super) fn samplers(&self) -> &[String] {
        &self.samplers
    }

    /// A copy of the graph with `seed` and the mapped parameters present in `params` written into
    /// every sampler node. The seed goes to `seed`, or to `noise_seed` when the node has that and
    /// no `seed`; a fractional `steps` (or `start_at_step`, `end_at_step`) is rounded.
    /// The attempt parameters this graph takes (the keys of `inputs`): the only ones sent.
    pub(super) fn params_taken(&self) -> Vec<String> {
        self.inputs.keys().cloned().collect()
    }

    pub(super) fn prepare(&self, seed: u64, params: &Params) -> Value {
        let mut graph = self.graph.clone();
        for id in &self.samplers {
            let Some(inputs) = graph
                .get_mut(id)
                .and_then(|n| n.get_mut("inputs"))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let seed_input = if inputs.contains_key("noise_seed") && !inputs.contains_key("seed") {
                "noise_seed"
            } else {
                "seed"
            };
            inputs.insert(seed_input.to_owned(), Value::from(seed));
            for (param, input) in &self.inputs {
                if let Some(value) = params.0.get(param) {
                    inputs.insert(input.clone(), fit(input, value));
                }
            }
        }
        Value::Object(graph)
    }
}

fn is_sampler(node: &Value) -> bool {
    let class = node.get("class_type").and_then(Value::as_str).unwrap_or("");
    let has_seed = node
        .get("inputs")
        .and_then(Value::as_object)
        .is_some_and(|i| i.contains_key("seed") || i.contains_key("noise_seed"));
    class.contains("KSampler") || (class.contains("Sampler") && has_seed)
}

/// Inputs ComfyUI declares INT that retake may send fractional (jitter makes `steps` 27.6).
/// Exported graphs write whole FLOATs such as `"cfg": 8` as integers, so the graph cannot tell.
const INTEGER_INPUTS: [&str; 3] = ["steps", "start_at_step", "end_at_step"];

/// `value`, rounded when `input` is an integer input.
fn fit(input: &str, value: &Value) -> Value {
    match value.as_f64() {
        Some(x) if INTEGER_INPUTS.contains(&input) && value.is_f64() && x.is_finite() => {
            Value::from(x.round().max(0.0) as u64)
        }
        _ => value.clone(),
    }
}
