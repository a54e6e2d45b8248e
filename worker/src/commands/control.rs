//! Creator controls: `retake abort|escalate|decide|status <segment>`.

use crate::cli::{Global, Output};
use crate::connect;
use crate::retries::{self, Creator};
use anyhow::Context;
use clap::Args;
use retake_domain::SegmentId;
use serde_json::{Map, Value, json};

/// Who is acting: `--by`, else `$USER`.
fn who(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// Segment id.
    segment: String,
    /// Why (recorded with the retry).
    #[arg(long, default_value = "")]
    reason: String,
    /// Who (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

pub(crate) async fn signal(g: &Global, action: Creator, args: SignalArgs) -> anyhow::Result<()> {
    let segment = SegmentId::parse(&args.segment)?;
    let by = who(args.by);
    let client = connect::temporal_for(g).await?;
    retries::signal(&client, &segment, action, &args.reason, &by).await?;
    println!("sent {action:?} for segment {segment} (by {by})");
    Ok(())
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("kind").required(true).args(["accept", "reject", "retry_with", "json"])))]
pub struct DecideArgs {
    /// Segment id.
    segment: String,
    /// Accept this recorded attempt as final.
    #[arg(long, value_name = "ATTEMPT")]
    accept: Option<u32>,
    /// Give up on the segment.
    #[arg(long)]
    reject: bool,
    /// Retry more, with the --param / --vary / --attempts given.
    #[arg(long)]
    retry_with: bool,
    /// New parameter value for retry_with, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Wider jitter for retry_with, NAME=RANGE (repeatable), e.g. cfg_scale=1.5.
    #[arg(long = "vary", value_name = "NAME=RANGE")]
    vary: Vec<String>,
    /// How many more attempts for retry_with (1-10; default: the policy's max_attempts).
    #[arg(long)]
    attempts: Option<u32>,
    /// The whole decision as JSON (`{"decision": ..., "by": ...}`).
    #[arg(long)]
    json: Option<String>,
    #[arg(long, default_value = "")]
    reason: String,
    /// Who decides (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

fn kv(raw: &str) -> anyhow::Result<(String, String)> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .with_context(|| format!("{raw:?} must look like NAME=VALUE"))
}

fn decision(args: &DecideArgs) -> anyhow::Result<Value> {
    if let Some(text) = &args.json {
        return serde_json::from_str(text).context("--json is not valid JSON");
    }
    let by = who(args.by.clone());
    if let Some(k) = args.accept {
        return Ok(json!({"decision": "accept", "attempt": k, "by": by, "reason": args.reason}));
    }
    if args.reject {
        return Ok(json!({"decision": "reject", "by": by, "reason": args.reason}));
    }
    let mut params = Map::new();
    for raw in &args.params {
        let (k, v) = kv(raw)?;
        params.insert(k, serde_json::from_str(&v).unwrap_or(Value::String(v)));
    }
    let mut vary = Map::new();
    for raw in &args.vary {
        let (k, v) = kv(raw)?;
        let range: f64 = v
            .parse()
            .with_context(|| format!("--vary {k}: {v:?} is not a number"))?;
        vary.insert(k, json!({"range": range}));
    }
    let mut d = json!({"decision": "retry_with", "by": by, "reason": args.reason});
    if !params.is_empty() {
        d["params"] = Value::Object(params);
    }
    if !vary.is_empty() {
        d["vary"] = Value::Object(vary);
    }
    if let Some(n) = args.attempts {
        d["attempts"] = json!(n);
    }
    Ok(d)
}

pub(crate) async fn decide(g: &Global, args: DecideArgs) -> anyhow::Result<()> {
    let segment = SegmentId::parse(&args.segment)?;
    let d = decision(&args)?;
    let client = connect::temporal_for(g).await?;
    let answer = retries::decide(&client, &segment, d).await?;
    println!(
        "decision {} by {} accepted for segment {segment}",
        answer["accepted"], answer["by"]
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Segment id.
    segment: String,
    #[command(flatten)]
    out: Output,
}

pub(crate) async fn status(g: &Global, args: StatusArgs) -> anyhow::Result<()> {
    let segment = SegmentId::parse(&args.segment)?;
    let client = connect::temporal_for(g).await?;
    let s = retries::status(&client, &segment).await?;
    if args.out.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("{}", s.report);
    let phase = json!(s.phase);
    let outcome = s.outcome.map_or("(running)", |o| o.as_str());
    println!(
        "phase: {} · outcome: {outcome} · {}",
        phase.as_str().unwrap_or("?"),
        s.reason
    );
    println!(
        "GPU time: {} ms over {} attempts",
        s.gpu_ms_total,
        s.attempts.len()
    );
    for e in &s.decisions {
        println!(
            "  {} by {}{}",
            e.action,
            e.by,
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", e.reason)
            }
        );
    }
    Ok(())
}
