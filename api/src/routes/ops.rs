//! Health, metrics and the OpenAPI document (no token needed).

use crate::AppState;
use crate::error::{AppError, Dependency, ErrorBody};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use std::fmt::Write;
use std::time::Duration;

/// How long a health check waits for each dependency: a probe that hangs is as good as down,
/// and an orchestrator's probe has its own, short timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Every dependency answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok` (a dependency down is a 503 with the error body instead).
    status: &'static str,
}

/// 200 when the database and Temporal both answer; else 503 naming every dependency that is down
/// (`unavailable`), with `Retry-After`.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "ops",
    responses((status = 200, description = "Healthy", body = Health),
              (status = 503, description = "A dependency is down; `unavailable` names it", body = ErrorBody)))]
pub(crate) async fn healthz(State(s): State<AppState>) -> Result<Json<Health>, AppError> {
    let database = async {
        match tokio::time::timeout(PROBE_TIMEOUT, s.store.budget("healthz-probe")).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: the database does not answer");
                false
            }
            Err(_) => false,
        }
    };
    let temporal = async {
        match tokio::time::timeout(PROBE_TIMEOUT, retake_client::ping(&s.temporal)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: Temporal does not answer");
                false
            }
            Err(_) => false,
        }
    };
    let (database, temporal) = tokio::join!(database, temporal);
    let down: Vec<Dependency> = [
        (database, Dependency::Database),
        (temporal, Dependency::Temporal),
    ]
    .into_iter()
    .filter_map(|(up, d)| (!up).then_some(d))
    .collect();
    if down.is_empty() {
        Ok(Json(Health { status: "ok" }))
    } else {
        Err(AppError::Unavailable(down))
    }
}

/// Prometheus metrics, computed from the store at scrape time.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
              (status = 503, description = "The database is unavailable", body = ErrorBody)))]
pub(crate) async fn metrics(State(s): State<AppState>) -> Result<impl IntoResponse, AppError> {
    let st = s.store.stats().await?;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "retake_attempts_total",
        "counter",
        "Recorded retry attempts by status.",
        st.attempts_by_status
            .iter()
            .map(|(k, v)| (format!("{{status=\"{k}\"}}"), v.to_string()))
            .collect(),
    );
    family(
        "retake_retries_total",
        "counter",
        "Retry runs by outcome.",
        st.runs_by_outcome
            .iter()
            .map(|(k, v)| (format!("{{outcome=\"{k}\"}}"), v.to_string()))
            .collect(),
    );
    family(
        "retake_gpu_seconds_total",
        "counter",
        "GPU seconds of every recorded attempt.",
        vec![(String::new(), format!("{:.3}", st.gpu_ms as f64 / 1000.0))],
    );
    let outcome = |o: &str| st.runs_by_outcome.get(o).copied().unwrap_or(0).to_string();
    family(
        "retake_segments_fixed_total",
        "counter",
        "Retry runs that ended with a passing attempt.",
        vec![(String::new(), outcome("passed"))],
    );
    family(
        "retake_segments_escalated_total",
        "counter",
        "Retry runs escalated to human review.",
        vec![(String::new(), outcome("escalated"))],
    );
    family(
        "retake_budget_refusals_total",
        "counter",
        "Attempts the project budget refused.",
        vec![(String::new(), st.budget_refusals.to_string())],
    );
    family(
        "retake_reviews_pending",
        "gauge",
        "Escalations awaiting a human decision.",
        vec![(String::new(), st.reviews_pending.to_string())],
    );
    family(
        "retake_workers_cooling",
        "gauge",
        "Workers taking no generations after infrastructure failures in a row.",
        vec![(String::new(), st.workers_cooling.to_string())],
    );
    let arm = |v: &retake_activities::stats::VariationCount| {
        format!(
            "{{scene_type=\"{}\",failure_kind=\"{}\",arm=\"{}\"}}",
            label(&v.scene_type),
            label(&v.failure_kind),
            label(&v.arm)
        )
    };
    let variations = bounded(st.variations, MAX_VARIATION_SERIES);
    family(
        "retake_variation_attempts_total",
        "counter",
        "Scored attempts per scene type, failure kind they set out to fix and variation \
         (the most tried; the rest summed under \"other\").",
        variations
            .iter()
            .map(|v| (arm(v), v.attempts.to_string()))
            .collect(),
    );
    family(
        "retake_variation_passes_total",
        "counter",
        "Of those, the attempts that passed.",
        variations
            .iter()
            .map(|v| (arm(v), v.passes.to_string()))
            .collect(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// How many (scene type, failure kind, variation) series `/metrics` shows. Callers choose scene
/// types and failure kinds (a retry request may name 1,500 failure kinds), and every series costs
/// the scraper memory for good: the most tried are shown, the rest summed into one `other`.
pub(crate) const MAX_VARIATION_SERIES: usize = 100;

/// The `cap - 1` most tried of `variations` (ties by name, so scrapes agree), and the rest summed
/// under `other` labels; all of them when they fit.
fn bounded(
    mut variations: Vec<retake_activities::stats::VariationCount>,
    cap: usize,
) -> Vec<retake_activities::stats::VariationCount> {
    if variations.len() <= cap {
        return variations;
    }
    variations.sort_by(|a, b| {
        b.attempts.cmp(&a.attempts).then_with(|| {
            (&a.scene_type, &a.failure_kind, &a.arm).cmp(&(&b.scene_type, &b.failure_kind, &b.arm))
        })
    });
    let rest = variations.split_off(cap.saturating_sub(1));
    variations.push(retake_activities::stats::VariationCount {
        scene_type: "other".to_owned(),
        failure_kind: "other".to_owned(),
        arm: "other".to_owned(),
        attempts: rest.iter().map(|v| v.attempts).sum(),
        passes: rest.iter().map(|v| v.passes).sum(),
    });
    variations
}

/// A label value as the exposition format needs it: `\`, `"` and line feeds escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The OpenAPI document, generated from the handlers.
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use retake_activities::stats::VariationCount;

    fn count(failure_kind: &str, attempts: u64) -> VariationCount {
        VariationCount {
            scene_type: "action".into(),
            failure_kind: failure_kind.into(),
            arm: "cfg_scale".into(),
            attempts,
            passes: attempts / 2,
        }
    }

    #[test]
    fn a_flood_of_failure_kinds_adds_one_other_series_not_thousands() {
        let flood: Vec<_> = (0..1_500).map(|i| count(&format!("kind-{i}"), 1)).collect();
        let mut all = vec![count("face_melt", 40)];
        all.extend(flood);
        let shown = bounded(all, 100);
        assert_eq!(shown.len(), 100);
        assert_eq!(shown[0].failure_kind, "face_melt", "the most tried is kept");
        let other = shown.last().unwrap();
        assert_eq!(
            (other.failure_kind.as_str(), other.attempts),
            ("other", 1_500 - 98)
        );
        let few = vec![count("a", 1), count("b", 2)];
        assert_eq!(bounded(few.clone(), 100), few);
    }

    #[test]
    fn label_values_cannot_break_the_exposition_format() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
