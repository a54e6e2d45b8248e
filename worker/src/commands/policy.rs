//! `retake policy set|show <scene-type>`.

use crate::cli::{Global, Output, read_input};
use crate::connect;
use anyhow::Context;
use clap::{Args, Subcommand};
use retake_domain::{RetryPolicy, SceneType, Selection};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Store a scene type's policy: a JSON file replaces it, flags change single fields.
    Set(SetArgs),
    /// Print a scene type's effective policy.
    Show {
        scene_type: String,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    scene_type: String,
    /// Policy JSON file (`-` for stdin); replaces the stored policy, missing fields get defaults.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Turn auto-retry on for this scene type.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Turn auto-retry off.
    #[arg(long)]
    disable: bool,
    /// Attempts per failed segment (1-10).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Failure kinds that trigger a retry, comma-separated (e.g. face_melt,artifacting).
    #[arg(long, value_delimiter = ',')]
    retry_on: Option<Vec<String>>,
    /// first_pass or best_of_n.
    #[arg(long, value_parser = parse_selection)]
    selection: Option<Selection>,
    /// GPU milliseconds reserved per attempt.
    #[arg(long)]
    est_gpu_ms: Option<u64>,
    /// Seeds are below 2^bits (16-53).
    #[arg(long)]
    seed_bits: Option<u32>,
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|_| format!("{s:?} is not a selection; use first_pass or best_of_n"))
}

fn patch(args: &SetArgs) -> Value {
    let mut p = Map::new();
    if args.enable {
        p.insert("enabled".into(), json!(true));
    }
    if args.disable {
        p.insert("enabled".into(), json!(false));
    }
    if let Some(v) = args.max_attempts {
        p.insert("max_attempts".into(), json!(v));
    }
    if let Some(v) = &args.retry_on {
        p.insert("retry_on".into(), json!(v));
    }
    if let Some(v) = args.selection {
        p.insert("selection".into(), json!(v));
    }
    if let Some(v) = args.est_gpu_ms {
        p.insert("est_gpu_ms_per_attempt".into(), json!(v));
    }
    if let Some(v) = args.seed_bits {
        p.insert("seed_bits".into(), json!(v));
    }
    Value::Object(p)
}

fn print(scene: &SceneType, policy: &RetryPolicy, stored: bool, out: Output) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(policy)?);
        return Ok(());
    }
    let origin = if stored {
        "stored"
    } else {
        "default, nothing stored"
    };
    println!("Scene type {scene} ({origin})");
    println!("  enabled:       {}", policy.enabled);
    println!("  max_attempts:  {}", policy.max_attempts);
    let retry_on: Vec<&str> = policy.retry_on.iter().map(String::as_str).collect();
    println!("  retry_on:      {}", retry_on.join(", "));
    for (m, t) in &policy.thresholds {
        println!("  threshold:     {m} ≥ {} (else {})", t.min, t.failure);
    }
    for (p, j) in &policy.vary {
        let bounds = match (j.min, j.max) {
            (Some(lo), Some(hi)) => format!(" in [{lo}, {hi}]"),
            (Some(lo), None) => format!(" ≥ {lo}"),
            (None, Some(hi)) => format!(" ≤ {hi}"),
            (None, None) => String::new(),
        };
        println!("  vary:          {p} ±{}{bounds}", j.range);
    }
    println!(
        "  selection:     {}",
        serde_json::to_value(policy.selection)?
            .as_str()
            .unwrap_or("?")
    );
    let word = |v: serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!("  parallelism:   {}", policy.parallelism);
    println!(
        "  placement:     {}",
        word(serde_json::to_value(policy.placement)?)
    );
    println!(
        "  profile:       {}",
        word(serde_json::to_value(policy.profile)?)
    );
    println!(
        "  mixed_failures: {}",
        word(serde_json::to_value(policy.mixed_failures)?)
    );
    println!(
        "  stop_after_same_refusals: {}{}",
        policy.stop_after_same_refusals,
        if policy.stop_after_same_refusals == 0 {
            " (never stop early)"
        } else {
            ""
        }
    );
    println!("  review window: {} s", policy.review_window_secs);
    println!("  est GPU/attempt: {} ms", policy.est_gpu_ms_per_attempt);
    println!("  seed_bits:     {}", policy.seed_bits);
    Ok(())
}

pub(crate) async fn run(g: &Global, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set(args) => {
            let scene = SceneType::parse(&args.scene_type)?;
            let base = match &args.file {
                Some(path) => Some(
                    serde_json::from_str::<Value>(&read_input(path)?)
                        .with_context(|| format!("{} is not valid JSON", path.display()))?,
                ),
                None => None,
            };
            let store = connect::store(&g.database_url).await?;
            let base = match base {
                Some(b) => Some(serde_json::to_value(RetryPolicy::parse(&b)?)?),
                None => store.policy(scene.as_str()).await?,
            };
            let policy = RetryPolicy::resolve(base.as_ref(), Some(&patch(&args)))?;
            store
                .set_policy(scene.as_str(), &serde_json::to_value(&policy)?, &cli_user())
                .await?;
            print(&scene, &policy, true, Output { json: false })
        }
        PolicyCommand::Show { scene_type, out } => {
            let scene = SceneType::parse(&scene_type)?;
            let store = connect::store(&g.database_url).await?;
            let stored = store.policy(scene.as_str()).await?;
            let policy = RetryPolicy::resolve(stored.as_ref(), None)?;
            print(&scene, &policy, stored.is_some(), out)
        }
    }
}

/// Who `retake policy set` records as having changed the policy: `cli:` and the login name
/// (`$USER`, else `$LOGNAME`), kept to letters, digits and `._@-`; `cli` alone without one.
fn cli_user() -> String {
    let user: String = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        .take(64)
        .collect();
    if user.is_empty() {
        "cli".to_owned()
    } else {
        format!("cli:{user}")
    }
}
