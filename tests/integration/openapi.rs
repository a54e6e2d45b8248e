//! The served `/openapi.json` as other tools see it: a real validator (PyPI
//! `openapi-spec-validator`) accepts it, and a client generated from it by a standard generator
//! (PyPI `openapi-python-client`) starts a retry and reads its history against the live API.
//!
//! Both tools live in the venv `scripts/test` installs and names in `RETAKE_OPENAPI_VENV`. Without
//! it these tests say so and pass, unless `CI` is set: then a missing tool fails them.

use crate::api::{CREATOR, VIEWER, api_for};
use crate::harness::{find_segment, request, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Output;
use tokio::process::Command;

/// The venv with both tools, or `None` (outside CI) when it is not configured.
fn venv() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("RETAKE_OPENAPI_VENV").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "RETAKE_OPENAPI_VENV is not set: on CI the OpenAPI tools must run (use scripts/test)"
        );
        eprintln!(
            "RETAKE_OPENAPI_VENV is not set: skipping the OpenAPI tool check (scripts/test sets it)"
        );
        return None;
    };
    for tool in ["python", "openapi-spec-validator", "openapi-python-client"] {
        assert!(
            dir.join("bin").join(tool).exists(),
            "RETAKE_OPENAPI_VENV={} has no bin/{tool}: run scripts/test, which installs it",
            dir.display()
        );
    }
    Some(dir)
}

/// Run a tool of the venv with the venv's bin first on PATH (the generator formats with its
/// `ruff`).
async fn tool(venv: &Path, name: &str, args: &[&str], pythonpath: Option<&Path>) -> Output {
    let path = std::env::join_paths(std::iter::once(venv.join("bin")).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let mut cmd = Command::new(venv.join("bin").join(name));
    cmd.args(args).env("PATH", path);
    if let Some(p) = pythonpath {
        cmd.env("PYTHONPATH", p);
    }
    cmd.output().await.expect("run a Python tool")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn the_served_openapi_document_passes_a_real_validator() {
    let Some(venv) = venv() else { return };
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("openapi.json");
    std::fs::write(&good, doc.to_string()).unwrap();
    // The same document broken one way the validator knows: an operation id used twice.
    let mut broken = doc.clone();
    broken["paths"]["/healthz"]["get"]["operationId"] = json!("start_retry");
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, broken.to_string()).unwrap();

    let valid = tool(
        &venv,
        "openapi-spec-validator",
        &[good.to_str().unwrap()],
        None,
    )
    .await;
    let invalid = tool(
        &venv,
        "openapi-spec-validator",
        &[bad.to_str().unwrap()],
        None,
    )
    .await;

    assert!(valid.status.success(), "{}", text(&valid));
    assert!(
        !invalid.status.success() && text(&invalid).contains("start_retry"),
        "the validator must catch a broken document: {}",
        text(&invalid)
    );
}

#[tokio::test]
async fn a_client_generated_from_the_document_starts_a_retry_and_reads_its_history() {
    let Some(venv) = venv() else { return };
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let policy = json!({"enabled": true});
    let (segment, predicted) = find_segment(&app.tag, "gen", &policy, |a| a.len() >= 2);
    // The schema is the workflow argument's, which names the segment (the API alone would let
    // it be left out).
    let body = request(&segment, "p1", Some(policy));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.json");
    std::fs::write(&spec, api.get("/openapi.json", None).await.1.to_string()).unwrap();
    let package = dir.path().join("retake_api_client");

    let generated = tool(
        &venv,
        "openapi-python-client",
        &[
            "generate",
            "--path",
            spec.to_str().unwrap(),
            "--meta",
            "none",
            "--output-path",
            package.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(generated.status.success(), "{}", text(&generated));
    assert!(
        !text(&generated).contains("Warning"),
        "the generator skipped parts of the document: {}",
        text(&generated)
    );
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/integration/openapi_client.py");
    let ran = tool(
        &venv,
        "python",
        &[
            script.to_str().unwrap(),
            &api.base,
            CREATOR,
            VIEWER,
            &segment,
            &body.to_string(),
        ],
        Some(dir.path()),
    )
    .await;

    assert!(ran.status.success(), "{}", text(&ran));
    let seen: Value = serde_json::from_slice(&ran.stdout).expect("the script prints JSON");
    assert_eq!(seen["start_status"], 202);
    assert_eq!(seen["started"]["status"], "started");
    assert_eq!(seen["status"]["phase"], "finished");
    let history = &seen["history"];
    assert_eq!(history["total_attempts"], predicted.len());
    let seeds: Vec<&Value> = history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["seed"])
        .collect();
    let want: Vec<Value> = predicted.iter().map(|a| json!(a.seed)).collect();
    assert_eq!(seeds, want.iter().collect::<Vec<_>>());
    assert_eq!(history["runs"][0]["run_id"], seen["started"]["run_id"]);
    // The generated models read and write back exactly what the API served.
    let (_, served) = api
        .get(
            &format!("/segments/{segment}/retry-history?page=1&per_page=500"),
            Some(VIEWER),
        )
        .await;
    assert_eq!(*history, served);
}
