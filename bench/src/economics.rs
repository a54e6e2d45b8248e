//! The economics scenario: a large batch of failed segments through the simulator's documented
//! failure model, for each policy and each attempt budget, using the same planning functions as
//! the workflow (`retake-domain`), without Temporal (orchestration is not what this measures).
//!
//! Policies compared, for max attempts 1..=6:
//! * `first_pass`: retake's default — new derived seed + jitter per attempt, stop at the first pass,
//!   only for failure kinds in `retry_on`, stop early on a failure kind not retried on.
//! * `best_of_n`: the same attempts, always all of them, the best passing one selected.
//! * `same_params` (naive baseline): retry with the same seed and parameters.
//! * `always_n` (naive baseline): generate N new candidates for every failed segment, whatever
//!   the failure kind, no early stop.

mod adaptive;

use adaptive::Class;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use retake_activities::sim::Simulator;
use retake_domain::contract::{AttemptRecord, FailedQa, Params, QaScores, RetryRequest};
use retake_domain::policy::{CostRule, RetryPolicy, Selection};
use retake_domain::select::{gate, quality, select};
use retake_domain::{ladder, plan};
use serde::Serialize;
use serde_json::json;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Failed segments in the batch.
    #[arg(long, default_value_t = 2000)]
    segments: u32,
    /// GPU seconds one attempt costs.
    #[arg(long, default_value_t = 30.0)]
    gpu_secs: f64,
    /// What a human review of an escalated segment costs, in GPU-second equivalents.
    #[arg(long, default_value_t = 600.0)]
    review_cost_gpu_secs: f64,
    /// Where to write economics.json, economics.md and economics.svg.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

const MAX_M: u32 = 6;
const POLICIES: [&str; 4] = ["first_pass", "best_of_n", "same_params", "always_n"];

/// A failed segment of the batch.
struct Segment {
    req: RetryRequest,
    /// Stochastic: neither systematic nor directional.
    stochastic: bool,
    class: Class,
}

fn qa(segment: &str, seed: u64, params: &Params) -> QaScores {
    QaScores {
        scores: Simulator::scores("econ", segment, seed, params),
        failures: vec![],
        ..Default::default()
    }
}

/// Segment `i`: its first seed (from `i·1000 + 1`) whose output fails the default quality gate.
fn failed_segment(i: u32, gated: &RetryPolicy) -> Segment {
    let id = format!("econ-{i}");
    let mut seed = u64::from(i) * 1000 + 1;
    loop {
        let params = json!({"seed": seed, "cfg_scale": 7.5, "denoise_strength": 0.6});
        let p = Params::parse(&params).unwrap_or_else(|_| Params(Default::default()));
        let scored = qa(&id, seed, &p);
        let failures = gate(gated, &scored);
        if !failures.is_empty() {
            let profile = Simulator::profile(&id);
            let input = json!({"segment_id": id, "project_id": "econ", "scene_type": "econ",
                "params": params, "failed_qa": FailedQa { scores: scored.scores, failures, ..Default::default() }});
            let req = RetryRequest::parse(&input)
                .unwrap_or_else(|e| unreachable!("valid by construction: {e}"));
            let class = if profile.systematic_face || profile.systematic_motion {
                Class::Systematic
            } else if profile.directional {
                Class::Directional
            } else {
                Class::Stochastic
            };
            return Segment {
                req,
                stochastic: class == Class::Stochastic,
                class,
            };
        }
        seed += 1;
    }
}

/// The attempts the workflow makes for one segment under `policy` (empty: not retried), planned
/// as new runs are: the media ladder (reseed, then with jitter) and the policy's cost rule.
fn planned(policy: &RetryPolicy, s: &Segment) -> Vec<AttemptRecord> {
    if plan::should_retry(policy, &s.req.failed_qa).is_err() {
        return vec![];
    }
    let id = s.req.segment_id.as_str();
    let mut done = Vec::new();
    while let Ok(a) = ladder::next(&s.req, policy, &done, 0) {
        let scored = qa(id, a.seed, &a.params);
        done.push(a.scored(policy, scored, 0, None));
    }
    done
}

/// The policy option `cost_rule` at one review cost: `first_pass` with up to [`MAX_M`] attempts,
/// with and without the rule (fed the measured fix chances), and what each costs in all.
#[derive(Debug, Serialize)]
struct CostRuleRow {
    review_cost_gpu_secs: f64,
    with_rule: bool,
    attempts: u64,
    fixed: u32,
    escalated: u32,
    /// Attempts' GPU time plus a review per escalated segment, in GPU seconds.
    total_cost_gpu_secs: f64,
}

fn cost_rule_rows(batch: &[Segment], marginal: &[f64], gpu_secs: f64) -> Vec<CostRuleRow> {
    let mut rows = Vec::new();
    for review in [150.0, 300.0, 600.0, 1200.0] {
        for with_rule in [false, true] {
            let policy = RetryPolicy {
                enabled: true,
                max_attempts: MAX_M,
                est_gpu_ms_per_attempt: (gpu_secs * 1000.0).round() as u64,
                cost_rule: with_rule.then(|| CostRule {
                    review_cost_gpu_ms: (review * 1000.0_f64).round() as u64,
                    fix_chance: marginal.to_vec(),
                }),
                ..RetryPolicy::default()
            };
            let (mut attempts, mut fixed, mut escalated) = (0u64, 0u32, 0u32);
            for s in batch {
                let made = planned(&policy, s);
                attempts += made.len() as u64;
                if made.iter().any(|a| a.passed) {
                    fixed += 1;
                } else if plan::should_retry(&policy, &s.req.failed_qa).is_ok() {
                    // Retried (or stopped by the rule before attempt 1) and not fixed.
                    escalated += 1;
                }
            }
            rows.push(CostRuleRow {
                review_cost_gpu_secs: review,
                with_rule,
                attempts,
                fixed,
                escalated,
                total_cost_gpu_secs: attempts as f64 * gpu_secs + f64::from(escalated) * review,
            });
        }
    }
    rows
}

/// The attempts a policy makes for one segment (empty: not retried).
fn attempts(policy_name: &str, m: u32, s: &Segment) -> Vec<AttemptRecord> {
    let selection = if policy_name == "best_of_n" {
        Selection::BestOfN
    } else {
        Selection::FirstPass
    };
    let policy = RetryPolicy {
        enabled: true,
        max_attempts: m,
        selection,
        ..RetryPolicy::default()
    };
    let id = s.req.segment_id.as_str();
    match policy_name {
        "first_pass" | "best_of_n" => planned(&policy, s),
        "same_params" => (1..=m)
            .map(|k| {
                // The ladder's first rung with the request's own seed and parameters.
                let rung = retake_domain::strategy::Strategy::Reseed;
                let mut a = ladder::plan_attempt(&s.req, &policy, &[], k, rung);
                a.seed = s.req.params.seed();
                a.params = s.req.params.clone();
                let scored = qa(id, a.seed, &a.params);
                a.scored(&policy, scored, 0, None)
            })
            .collect(),
        _ => (1..=m)
            .map(|k| {
                let rung = retake_domain::strategy::rung(&policy.ladder, k);
                let a = ladder::plan_attempt(&s.req, &policy, &[], k, rung);
                let scored = qa(id, a.seed, &a.params);
                a.scored(&policy, scored, 0, None)
            })
            .collect(),
    }
}

#[derive(Debug, Default, Serialize)]
struct Row {
    policy: String,
    max_attempts: u32,
    segments: u32,
    stochastic_failures: u32,
    fixed: u32,
    fixed_stochastic: u32,
    stochastic_fix_rate: f64,
    attempts: u64,
    escalated: u32,
    not_retried: u32,
    extra_attempts_per_fix: Option<f64>,
    gpu_secs_per_fixed_segment: Option<f64>,
    /// best_of_n only: segments with two or more passing attempts, and the share of them where
    /// the selected attempt scores higher than the first passing one.
    multi_pass_cases: u32,
    best_beats_first_share: Option<f64>,
}

/// P(attempt k passes | attempts 1..k-1 failed) over retried segments, from `always_n` at 6.
fn marginal_fix_probability(batch: &[Segment]) -> Vec<f64> {
    let mut still = vec![0u32; MAX_M as usize];
    let mut fixed = vec![0u32; MAX_M as usize];
    let gated = RetryPolicy {
        enabled: true,
        ..RetryPolicy::default()
    };
    for s in batch
        .iter()
        .filter(|s| plan::should_retry(&gated, &s.req.failed_qa).is_ok())
    {
        for (k, a) in attempts("always_n", MAX_M, s).iter().enumerate() {
            still[k] += 1;
            if a.passed {
                fixed[k] += 1;
                break;
            }
        }
    }
    still
        .iter()
        .zip(&fixed)
        .map(|(n, f)| {
            if *n == 0 {
                0.0
            } else {
                f64::from(*f) / f64::from(*n)
            }
        })
        .collect()
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let gated = RetryPolicy {
        enabled: true,
        ..RetryPolicy::default()
    };
    let bar = ProgressBar::new(u64::from(args.segments)).with_style(ProgressStyle::with_template(
        "{bar:30} {pos}/{len} segments {msg}",
    )?);
    bar.set_message("building the batch");
    let batch: Vec<Segment> = (1..=args.segments)
        .map(|i| {
            bar.inc(1);
            failed_segment(i, &gated)
        })
        .collect();
    bar.finish_and_clear();
    let stochastic = batch.iter().filter(|s| s.stochastic).count() as u32;

    let mut rows = Vec::new();
    for name in POLICIES {
        for m in 1..=MAX_M {
            let mut row = Row {
                policy: name.to_owned(),
                max_attempts: m,
                segments: args.segments,
                stochastic_failures: stochastic,
                ..Row::default()
            };
            let selection_policy = RetryPolicy {
                selection: Selection::BestOfN,
                ..gated.clone()
            };
            let (mut multi, mut better) = (0u32, 0u32);
            for s in &batch {
                let made = attempts(name, m, s);
                row.attempts += made.len() as u64;
                if made.is_empty() {
                    row.not_retried += 1;
                    continue;
                }
                if made.iter().any(|a| a.passed) {
                    row.fixed += 1;
                    row.fixed_stochastic += u32::from(s.stochastic);
                } else {
                    row.escalated += 1;
                }
                let passing: Vec<&AttemptRecord> = made.iter().filter(|a| a.passed).collect();
                if name == "best_of_n" && passing.len() >= 2 {
                    multi += 1;
                    let best = select(&selection_policy, &made)
                        .and_then(|k| made.iter().find(|a| a.attempt == k));
                    if let Some(best) = best
                        && quality(&gated, &best.scores) > quality(&gated, &passing[0].scores)
                    {
                        better += 1;
                    }
                }
            }
            row.stochastic_fix_rate =
                f64::from(row.fixed_stochastic) / f64::from(stochastic.max(1));
            if row.fixed > 0 {
                row.extra_attempts_per_fix = Some(row.attempts as f64 / f64::from(row.fixed));
                row.gpu_secs_per_fixed_segment =
                    Some(row.attempts as f64 * args.gpu_secs / f64::from(row.fixed));
            }
            row.multi_pass_cases = multi;
            row.best_beats_first_share = (multi > 0).then(|| f64::from(better) / f64::from(multi));
            rows.push(row);
        }
    }

    let adaptive = adaptive::rows(&batch, args.gpu_secs)?;
    let marginal = marginal_fix_probability(&batch);
    let cost_rule = cost_rule_rows(&batch, &marginal, args.gpu_secs);
    let threshold = args.gpu_secs / args.review_cost_gpu_secs;
    let break_even = marginal.iter().take_while(|p| **p >= threshold).count();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let doc = json!({
        "scenario": "economics",
        "segments": args.segments,
        "stochastic_failures": stochastic,
        "gpu_secs_per_attempt": args.gpu_secs,
        "review_cost_gpu_secs": args.review_cost_gpu_secs,
        "rows": rows,
        "marginal_fix_probability": marginal,
        "cost_effectiveness": {
            "rule": "attempt k is worth it while P(fix at k | not fixed before) * review_cost >= gpu_cost_per_attempt",
            "min_fix_probability": threshold,
            "max_failure_rate_per_attempt": 1.0 - threshold,
            "break_even_attempts": break_even,
        },
        "cost_rule_policy": cost_rule,
        "adaptive": adaptive,
    });
    std::fs::write(
        args.out.join("economics.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(
        args.out.join("economics.md"),
        markdown(args, stochastic, &rows, &marginal, threshold, break_even)
            + &cost_rule_markdown(&cost_rule)
            + &adaptive::markdown(&adaptive),
    )?;
    plot(&args.out.join("economics.svg"), &rows)?;
    adaptive::plot(&args.out.join("adaptive.svg"), &adaptive)?;
    print!(
        "{}{}{}",
        markdown(args, stochastic, &rows, &marginal, threshold, break_even),
        cost_rule_markdown(&cost_rule),
        adaptive::markdown(&adaptive)
    );
    Ok(())
}

fn markdown(
    args: &Args,
    stochastic: u32,
    rows: &[Row],
    marginal: &[f64],
    threshold: f64,
    break_even: usize,
) -> String {
    let mut md = format!(
        "# Economics: {} failed segments through the simulator\n\n{} stochastic failures; {} GPU s per attempt; a human review costs {} GPU s.\n\n\
         | policy | max attempts | stochastic fixed | fixed | escalated | not retried | attempts | attempts per fix | GPU s per fixed segment | best-of-N better than first pass |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        args.segments, stochastic, args.gpu_secs, args.review_cost_gpu_secs
    );
    let opt =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "–".to_owned(), |x| format!("{x:.prec$}"));
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} % | {} | {} | {} | {} | {} | {} | {} |\n",
            r.policy,
            r.max_attempts,
            100.0 * r.stochastic_fix_rate,
            r.fixed,
            r.escalated,
            r.not_retried,
            r.attempts,
            opt(r.extra_attempts_per_fix, 2),
            opt(r.gpu_secs_per_fixed_segment, 0),
            r.best_beats_first_share.map_or_else(
                || "–".to_owned(),
                |s| format!("{:.0} % of {}", 100.0 * s, r.multi_pass_cases)
            ),
        ));
    }
    let probs: Vec<String> = marginal
        .iter()
        .enumerate()
        .map(|(k, p)| format!("attempt {}: {:.2}", k + 1, p))
        .collect();
    md.push_str(&format!(
        "\nChance that attempt k fixes a segment not fixed before it: {}.\n\n\
         Cost-effectiveness: another attempt pays off while that chance × review cost ≥ GPU cost, i.e. while it is at least {:.3} \
         (a per-attempt failure rate below {:.1} %). With these costs retrying pays off for the first {} attempts.\n",
        probs.join(", "), threshold, 100.0 * (1.0 - threshold), break_even
    ));
    md.push_str(
        "\n`first_pass`, `best_of_n` and `always_n` fix the same segments at each budget: they try the same derived seeds; \
         they differ in GPU spent (first_pass stops at the first pass and does not retry failure kinds outside `retry_on`). \
         `same_params` never fixes anything: the generator is deterministic for the same seed and parameters.\n",
    );
    md
}

fn cost_rule_markdown(rows: &[CostRuleRow]) -> String {
    let mut md = String::from(
        "\n## The policy's cost rule\n\n`first_pass` with up to 6 attempts, without and with \
         `cost_rule` (fed the fix chances above): a retry stops, and the segment goes to review, once \
         another attempt is expected to save less than it costs. Total cost = attempts' GPU time + \
         one review per escalated segment.\n\n\
         | review cost (GPU s) | cost rule | attempts | fixed | escalated | total cost (GPU s) |\n\
         | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} | {:.0} |\n",
            r.review_cost_gpu_secs,
            if r.with_rule { "on" } else { "off" },
            r.attempts,
            r.fixed,
            r.escalated,
            r.total_cost_gpu_secs
        ));
    }
    md
}

fn plot(path: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(550);
    let colors = [BLUE, RED, BLACK, GREEN];
    let max_cost = rows
        .iter()
        .filter_map(|r| r.gpu_secs_per_fixed_segment)
        .fold(1.0, f64::max);
    for (area, title, y_max, value) in [
        (&left, "stochastic failures fixed (%)", 100.0, 0usize),
        (
            &right,
            "GPU seconds per fixed segment",
            max_cost * 1.1,
            1usize,
        ),
    ] {
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(1u32..MAX_M, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("max attempts")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, name) in POLICIES.iter().enumerate() {
            let color = colors[i];
            let points: Vec<(u32, f64)> = rows
                .iter()
                .filter(|r| r.policy == *name)
                .filter_map(|r| {
                    let v = if value == 0 {
                        Some(100.0 * r.stochastic_fix_rate)
                    } else {
                        r.gpu_secs_per_fixed_segment
                    };
                    v.map(|v| (r.max_attempts, v))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
