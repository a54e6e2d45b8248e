//! The `adaptive` rung in the economics scenario: the same failed segments, processed in batch
//! order, each one's attempts becoming evidence for the next (the latest `adaptive.window` scored
//! attempts, as the store counts them), against the fixed ladder (`first_pass`) at the same
//! max attempts. Reported per failure class of the simulator, with a learning curve.

use super::{MAX_M, Segment, planned, qa};
use plotters::prelude::*;
use retake_domain::adapt::{self, Evidence};
use retake_domain::contract::AttemptRecord;
use retake_domain::policy::RetryPolicy;
use retake_domain::strategy::Strategy;
use retake_domain::{ladder, plan};
use serde::Serialize;
use std::collections::VecDeque;

/// The simulator's failure classes (see `activities/src/sim.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Class {
    /// A fresh seed fixes it about half the time.
    Stochastic,
    /// Only a move of the scene type's biased parameter the right way fixes it.
    Directional,
    /// Nothing fixes it (a systematic face or motion failure).
    Systematic,
}

const CLASSES: [Class; 3] = [Class::Stochastic, Class::Directional, Class::Systematic];

/// Fixed segments of one class out of those retried.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct Tally {
    pub(crate) retried: u32,
    pub(crate) fixed: u32,
}

impl Tally {
    fn rate(self) -> f64 {
        if self.retried == 0 {
            0.0
        } else {
            f64::from(self.fixed) / f64::from(self.retried)
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    policy: &'static str,
    max_attempts: u32,
    stochastic: Tally,
    directional: Tally,
    systematic: Tally,
    attempts: u64,
    fixed: u32,
    gpu_secs_per_fixed_segment: Option<f64>,
    /// Directional segments fixed in the first, middle and last third of the batch.
    directional_by_third: [Tally; 3],
    /// Directional segments after the first 200 of the batch.
    directional_after_warm_up: Tally,
    /// Directional fix rate per tenth of the batch (the learning curve).
    directional_by_tenth: Vec<f64>,
}

/// An adaptive attempt must stay within the policy's bounds: each varied parameter within
/// `range` of the failed generation's value and within `[min, max]`.
fn check_bounds(policy: &RetryPolicy, a: &AttemptRecord) -> anyhow::Result<()> {
    for (param, spec) in &policy.vary {
        let (Some(from), Some(to)) = (a.original_params.number(param), a.params.number(param))
        else {
            continue;
        };
        let inside = (to - from).abs() <= spec.range + 1e-9
            && spec.min.is_none_or(|m| to >= m)
            && spec.max.is_none_or(|m| to <= m);
        anyhow::ensure!(
            inside,
            "attempt {} moved {param} from {from} to {to}, outside the policy",
            a.attempt
        );
    }
    Ok(())
}

/// The attempts of one segment under an adaptive policy, with `window` the evidence so far.
fn adaptive_attempts(
    policy: &RetryPolicy,
    s: &Segment,
    window: &mut VecDeque<AttemptRecord>,
) -> anyhow::Result<Vec<AttemptRecord>> {
    if plan::should_retry(policy, &s.req.failed_qa).is_err() {
        return Ok(vec![]);
    }
    let id = s.req.segment_id.as_str();
    let mut done = Vec::new();
    while let Ok(a) = ladder::next(&s.req, policy, &done, 0) {
        let evidence = Evidence {
            rows: adapt::tally(window.iter()),
        };
        let a = ladder::adapt(policy, a, &evidence);
        let scores = qa(id, a.seed, &a.params);
        let record = a.scored(policy, scores, 0, None);
        check_bounds(policy, &record)?;
        window.push_back(record.clone());
        if window.len() > policy.adaptive.window as usize {
            window.pop_front();
        }
        done.push(record);
    }
    Ok(done)
}

pub(crate) fn rows(batch: &[Segment], gpu_secs: f64) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let n = batch.len().max(1);
    for m in 1..=MAX_M {
        for name in ["first_pass", "adaptive"] {
            let mut policy = RetryPolicy {
                enabled: true,
                max_attempts: m,
                ..RetryPolicy::default()
            };
            if name == "adaptive" {
                policy.ladder = vec![Strategy::Adaptive];
            }
            let mut window = VecDeque::new();
            let mut row = Row {
                policy: name,
                max_attempts: m,
                stochastic: Tally::default(),
                directional: Tally::default(),
                systematic: Tally::default(),
                attempts: 0,
                fixed: 0,
                gpu_secs_per_fixed_segment: None,
                directional_by_third: [Tally::default(); 3],
                directional_after_warm_up: Tally::default(),
                directional_by_tenth: Vec::new(),
            };
            let mut tenths = [Tally::default(); 10];
            for (i, s) in batch.iter().enumerate() {
                let made = if name == "adaptive" {
                    adaptive_attempts(&policy, s, &mut window)?
                } else {
                    planned(&policy, s)
                };
                if made.is_empty() {
                    continue;
                }
                let fixed = made.iter().any(|a| a.passed);
                row.attempts += made.len() as u64;
                row.fixed += u32::from(fixed);
                let tally = match s.class {
                    Class::Stochastic => &mut row.stochastic,
                    Class::Directional => &mut row.directional,
                    Class::Systematic => &mut row.systematic,
                };
                tally.retried += 1;
                tally.fixed += u32::from(fixed);
                if s.class == Class::Directional {
                    for t in [
                        &mut row.directional_by_third[i * 3 / n],
                        &mut tenths[i * 10 / n],
                    ] {
                        t.retried += 1;
                        t.fixed += u32::from(fixed);
                    }
                    if i >= 200 {
                        row.directional_after_warm_up.retried += 1;
                        row.directional_after_warm_up.fixed += u32::from(fixed);
                    }
                }
            }
            row.gpu_secs_per_fixed_segment =
                (row.fixed > 0).then(|| row.attempts as f64 * gpu_secs / f64::from(row.fixed));
            row.directional_by_tenth = tenths.iter().map(|t| t.rate()).collect();
            rows.push(row);
        }
    }
    Ok(rows)
}

pub(crate) fn markdown(rows: &[Row]) -> String {
    let pct = |t: Tally| format!("{:.1} % of {}", 100.0 * t.rate(), t.retried);
    let mut md = String::from(
        "\n## Adaptive retries\n\n`first_pass` with the fixed ladder (reseed, then reseed with \
         symmetric jitter) against `first_pass` with `ladder: [\"adaptive\"]` (default \
         `adaptive` settings: 30 attempts of evidence before it decides, a window of the latest \
         2000 scored attempts), on the same segments in the same order; each segment's attempts are \
         evidence for the next. Classes are the simulator's: stochastic (a new seed fixes about half), \
         directional (only moving the scene type's biased parameter the right way fixes it), \
         systematic (nothing does).\n\n\
         | policy | max attempts | stochastic fixed | directional fixed | directional, last third | directional after 200 | systematic fixed | attempts | GPU s per fixed segment |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.policy,
            r.max_attempts,
            pct(r.stochastic),
            pct(r.directional),
            pct(r.directional_by_third[2]),
            pct(r.directional_after_warm_up),
            r.systematic.fixed,
            r.attempts,
            r.gpu_secs_per_fixed_segment
                .map_or_else(|| "–".to_owned(), |g| format!("{g:.0}")),
        ));
    }
    if let (Some(fixed), Some(adaptive)) = (
        rows.iter()
            .find(|r| r.policy == "first_pass" && r.max_attempts == 3),
        rows.iter()
            .find(|r| r.policy == "adaptive" && r.max_attempts == 3),
    ) {
        let curve = |r: &Row| {
            r.directional_by_tenth
                .iter()
                .map(|v| format!("{:.0}", 100.0 * v))
                .collect::<Vec<_>>()
                .join(" ")
        };
        md.push_str(&format!(
            "\nAt 3 attempts, directional segments fixed per tenth of the batch (%): adaptive {}; \
             fixed ladder {}. After the first 200 segments adaptive fixes {:.2}× as many \
             directional segments as the fixed ladder; in the last third of the batch it fixes \
             {:.0} % of them (fixed ladder {:.0} %).\n",
            curve(adaptive),
            curve(fixed),
            adaptive.directional_after_warm_up.rate()
                / fixed.directional_after_warm_up.rate().max(1e-9),
            100.0 * adaptive.directional_by_third[2].rate(),
            100.0 * fixed.directional_by_third[2].rate(),
        ));
    }
    md
}

/// The learning curve at 3 attempts and the directional fix rate by max attempts.
pub(crate) fn plot(path: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    let e = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(550);
    let colors = [BLUE, RED];
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "directional fixed per tenth of the batch (%), 3 attempts",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(1u32..10u32, 0.0..100.0)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("tenth of the batch")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, name) in ["first_pass", "adaptive"].into_iter().enumerate() {
        let color = colors[i];
        let Some(r) = rows
            .iter()
            .find(|r| r.policy == name && r.max_attempts == 3)
        else {
            continue;
        };
        let points: Vec<(u32, f64)> = r
            .directional_by_tenth
            .iter()
            .enumerate()
            .map(|(k, v)| (k as u32 + 1, 100.0 * v))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&right)
        .caption("fixed by class and max attempts (%)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(1u32..MAX_M, 0.0..100.0)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("max attempts")
        .draw()
        .map_err(|x| e(&x))?;
    for (i, name) in ["first_pass", "adaptive"].into_iter().enumerate() {
        for class in CLASSES {
            let color = colors[i];
            let style = if class == Class::Directional {
                color.stroke_width(3)
            } else {
                color.mix(0.4).stroke_width(1)
            };
            let points: Vec<(u32, f64)> = rows
                .iter()
                .filter(|r| r.policy == name)
                .map(|r| {
                    let t = match class {
                        Class::Stochastic => r.stochastic,
                        Class::Directional => r.directional,
                        Class::Systematic => r.systematic,
                    };
                    (r.max_attempts, 100.0 * t.rate())
                })
                .collect();
            let label = format!("{name} {class:?}").to_lowercase();
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|x| e(&x))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
