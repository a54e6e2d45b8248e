//! `retake retry`: start a retry for one failed segment, wait, print the report.

use crate::cli::{Global, read_input};
use crate::{connect, retries};
use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The whole workflow argument as a JSON file (`-` for stdin); flags below are then ignored.
    #[arg(long, conflicts_with_all = ["segment", "project", "scene_type"])]
    input: Option<PathBuf>,
    /// Segment id.
    #[arg(long, required_unless_present = "input")]
    segment: Option<String>,
    /// Project id (owner of the GPU budget).
    #[arg(long, required_unless_present = "input")]
    project: Option<String>,
    /// Scene type (owner of the retry policy).
    #[arg(long, required_unless_present = "input")]
    scene_type: Option<String>,
    /// Seed of the failed generation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CFG scale of the failed generation.
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// Denoise strength of the failed generation.
    #[arg(long)]
    denoise_strength: Option<f64>,
    /// Other generation parameters, `name=value` (value parsed as JSON when it can be).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// QA score of the failed generation, `metric=score` (0..1).
    #[arg(long = "score", value_name = "METRIC=SCORE")]
    scores: Vec<String>,
    /// QA failure kind of the failed generation (repeatable), e.g. face_melt.
    #[arg(long = "failure", value_name = "KIND")]
    failures: Vec<String>,
    /// Policy override: a JSON object, or @FILE.
    #[arg(long)]
    policy: Option<String>,
    /// Print the result JSON instead of the report line.
    #[arg(long)]
    json: bool,
}

fn pair(raw: &str, what: &str) -> anyhow::Result<(String, String)> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .with_context(|| format!("{what} {raw:?} must look like NAME=VALUE"))
}

fn number(v: f64, field: &str) -> anyhow::Result<Value> {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .with_context(|| format!("{field} must be a finite number, got {v}"))
}

fn build_input(args: &RetryArgs) -> anyhow::Result<Value> {
    if let Some(path) = &args.input {
        let text = read_input(path)?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()));
    }
    let mut params = Map::new();
    params.insert("seed".into(), json!(args.seed));
    if let Some(v) = args.cfg_scale {
        params.insert("cfg_scale".into(), number(v, "--cfg-scale")?);
    }
    if let Some(v) = args.denoise_strength {
        params.insert("denoise_strength".into(), number(v, "--denoise-strength")?);
    }
    for raw in &args.params {
        let (k, v) = pair(raw, "--param")?;
        params.insert(k, serde_json::from_str(&v).unwrap_or(Value::String(v)));
    }
    let mut scores = Map::new();
    for raw in &args.scores {
        let (k, v) = pair(raw, "--score")?;
        let s: f64 = v
            .parse()
            .with_context(|| format!("--score {k}: {v:?} is not a number"))?;
        scores.insert(k.clone(), number(s, &format!("--score {k}"))?);
    }
    let mut input = json!({
        "segment_id": args.segment,
        "project_id": args.project,
        "scene_type": args.scene_type,
        "params": params,
        "failed_qa": {"scores": scores, "failures": args.failures},
    });
    if let Some(p) = &args.policy {
        let text = match p.strip_prefix('@') {
            Some(path) => read_input(&PathBuf::from(path))?,
            None => p.clone(),
        };
        let v: Value = serde_json::from_str(&text).context("--policy is not valid JSON")?;
        input["policy"] = v;
    }
    Ok(input)
}

pub(crate) async fn run(g: &Global, args: RetryArgs) -> anyhow::Result<()> {
    let input = build_input(&args)?;
    // Validate before connecting, so bad input fails fast with the field named.
    if let Err(e) = retake_domain::RetryRequest::parse(&input) {
        bail!("{e}");
    }
    let client = connect::temporal_for(g).await?;
    let handle = retries::start(&client, &g.task_queue, input).await?;
    let result = match retries::settled(&handle).await? {
        retries::Settled::Finished(result) => result,
        retries::Settled::AwaitingReview(status) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", status.report);
                println!("outcome: escalated, awaiting review ({})", status.reason);
                println!(
                    "decide with: retake decide {} --accept <attempt> | --reject | --retry-with --param NAME=VALUE [--attempts N]",
                    status.segment_id
                );
            }
            return Ok(());
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("{}", result.report);
        println!("outcome: {} ({})", result.outcome.as_str(), result.reason);
        println!(
            "GPU time: {} ms over {} attempts",
            result.gpu_ms_total,
            result.attempts.len()
        );
    }
    Ok(())
}
