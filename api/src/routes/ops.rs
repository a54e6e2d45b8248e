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
            v.scene_type, v.failure_kind, v.arm
        )
    };
    family(
        "retake_variation_attempts_total",
        "counter",
        "Scored attempts per scene type, failure kind they set out to fix and variation.",
        st.variations
            .iter()
            .map(|v| (arm(v), v.attempts.to_string()))
            .collect(),
    );
    family(
        "retake_variation_passes_total",
        "counter",
        "Of those, the attempts that passed.",
        st.variations
            .iter()
            .map(|v| (arm(v), v.passes.to_string()))
            .collect(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// The OpenAPI document, generated from the handlers.
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}
