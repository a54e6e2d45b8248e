//! Health, metrics and the OpenAPI document (no token needed).

use crate::AppState;
use crate::error::AppError;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::fmt::Write;
use temporalio_client::tonic;
use temporalio_protos::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;

/// 200 when the database and Temporal answer, else 503.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Healthy", body = Object), (status = 503, description = "A dependency is down")))]
pub(crate) async fn healthz(State(s): State<AppState>) -> Result<Json<Value>, AppError> {
    s.store.budget("healthz-probe").await?;
    let mut svc = s.temporal.connection().workflow_service();
    svc.get_system_info(tonic::Request::new(GetSystemInfoRequest {}))
        .await
        .map_err(|_| AppError::Unavailable("Temporal"))?;
    Ok(Json(json!({"status": "ok"})))
}

/// Prometheus metrics, computed from the store at scrape time.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String)))]
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
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// The OpenAPI document, generated from the handlers.
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}
