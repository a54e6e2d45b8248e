use crate::harness::{dev_server, find_segment, request, spawn_app};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// Debian's Chromium (`scripts/test` installs it where missing), or `RETAKE_CHROMIUM`.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RETAKE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Render `url` headless (flags as this machine's network needs them) and return the DOM, or
/// write a screenshot when `screenshot` is given.
async fn render(browser: &Path, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=20000",
        "--window-size=1400,1200",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.arg(url).output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_web_ui_shows_a_segments_workflow_with_its_search_attributes() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").is_err(),
            "Chromium is missing on CI: scripts/test installs Debian's chromium"
        );
        eprintln!("skipping the web UI check: no chromium (scripts/test installs it)");
        return;
    };
    let app = spawn_app().await;
    let policy = json!({"enabled": true});
    let (segment, _) = find_segment(&app.tag, "ui", &policy, |a| {
        a.last().is_some_and(|l| l.passed)
    });
    app.retry(request(&segment, "p1", Some(policy))).await;
    let profile = tempfile::tempdir().unwrap();
    let ui = dev_server()
        .ui_url()
        .expect("the shared dev server has its web UI");
    let workflow_id = format!("segment-retry-{segment}");

    // The workflow list filtered by the SegmentId search attribute, as a person would filter it.
    // Visibility is eventually consistent, so look again until the row is there.
    let list = format!("{ui}/namespaces/default/workflows?query=SegmentId%3D%27{segment}%27");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let run_path = loop {
        let dom = render(&browser, profile.path(), &list, None).await;
        let prefix = format!("/namespaces/default/workflows/{workflow_id}/");
        if let Some(i) = dom.find(&prefix) {
            let rest = &dom[i + prefix.len()..];
            let run_id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                .collect();
            break format!("{prefix}{run_id}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the UI list never showed {workflow_id}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let attrs = render(
        &browser,
        profile.path(),
        &format!("{ui}{run_path}/search-attributes"),
        None,
    )
    .await;
    for shown in [
        "SegmentId",
        "ProjectId",
        "SceneType",
        "RetryOutcome",
        "RetakeBehaviour",
        segment.as_str(),
    ] {
        assert!(
            attrs.contains(shown),
            "the search attributes tab lacks {shown}"
        );
    }

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("web-ui-segment-retry.png");
    render(
        &browser,
        profile.path(),
        &format!("{ui}{run_path}/history"),
        Some(&shot),
    )
    .await;
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "the screenshot {} is suspiciously small ({size} bytes)",
        shot.display()
    );
    eprintln!("web UI screenshot: {}", shot.display());
}
