//! The review console in a real browser: headless Chromium driven over WebDriver (fantoccini and
//! Debian's chromium-driver) against a real dev server, worker, SQLite store and a render farm
//! whose outputs are images. What a creator does: sign in by keyboard, open an escalated segment,
//! see its attempts' images, retry with new parameters, watch the new attempts appear without a
//! reload, accept one by keyboard; and a viewer, who sees everything and can decide nothing.
//! Screenshots are kept in `target/test-artifacts/`.

use crate::api::{ADMIN, CREATOR, VIEWER, serve_with};
use crate::harness::{FakeJobs, TestApp};
use crate::ladder::http_app;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use retake_domain::contract::{AttemptStatus, Outcome};
use retake_domain::review::Phase;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// `name` on the PATH, or the file an environment variable names.
fn program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let paths = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A chromedriver process on a free port, killed on drop, and the Chromium it starts.
struct Chromium {
    driver: tokio::process::Child,
    url: String,
    browser: PathBuf,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.start_kill();
    }
}

impl Chromium {
    /// Chromium and chromedriver, or `None` off CI where they are not installed (CI installs
    /// them: there a missing one fails the test).
    async fn start() -> Option<Self> {
        let browser = program(
            "RETAKE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let driver = program("RETAKE_CHROMEDRIVER", &["chromedriver"]);
        let (Some(browser), Some(driver)) = (browser, driver) else {
            assert!(
                std::env::var("CI").is_err(),
                "Chromium and chromedriver are missing on CI (Debian: chromium, chromium-driver)"
            );
            eprintln!("skipping the console browser check: no chromium and chromedriver");
            return None;
        };
        let port = retake_testkit::free_ports::<1>().expect("a free port")[0];
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true)
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(Self {
            driver: child,
            url,
            browser,
        })
    }

    /// A new browser window with a profile (and so cookies) of its own.
    async fn window(&self, profile: &std::path::Path) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.browser,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1200",
                         format!("--user-data-dir={}", profile.display())]
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a WebDriver session")
    }
}

/// Sign in by keyboard only: type the token, press Enter.
async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/sign-in")).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field
        .send_keys(&format!("{token}{}", char::from(Key::Enter)))
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_url(&url::Url::parse(&format!("{base}/ui/review")).unwrap())
        .await
        .expect("signed in, on the review queue");
}

/// Evaluate `script` (a function body) in the page.
async fn eval(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new()).await.unwrap()
}

/// Evaluate `script` until `ok` holds for its value; panics with the last value after `secs`.
async fn eval_until(c: &Client, script: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        // A page being replaced has no document for a moment: that is not an answer yet.
        if let Ok(v) = c.execute(script, Vec::new()).await
            && ok(&v)
        {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still not there after {secs} s: {:?}",
            c.execute(script, Vec::new()).await
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// What the segment page shows now: the phase, the attempt cards (number, status) and whether
/// the page is still the one `mark` was set on.
const SHOWN: &str = "return {
    phase: (document.getElementById('phase') || {}).textContent || null,
    cards: Array.from(document.querySelectorAll('article.attempt')).map(a => [
        Number(a.dataset.attempt), (a.querySelector('.badge') || {}).textContent || '']),
    images: Array.from(document.querySelectorAll('.output img')).map(i =>
        i.complete ? i.naturalWidth : -1),
    same_page: window.__mark === 'set before the retry',
    can_accept: !!document.getElementById('accept-form'),
};";

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert_eq!(&png[..4], b"\x89PNG", "a PNG screenshot");
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let path = artifacts.join(name);
    std::fs::write(&path, &png).unwrap();
    eprintln!("console screenshot: {}", path.display());
}

/// A render farm's segment (images that all fail QA, 2 attempts, an hour to review), escalated.
async fn escalated(app: &TestApp) -> String {
    escalated_named(app, "browser").await
}

/// [`escalated`], for the segment `<tag>-<name>`.
async fn escalated_named(app: &TestApp, name: &str) -> String {
    let segment = format!("{}-{name}", app.tag);
    app.start(json!({
        "segment_id": segment, "project_id": format!("{}-p", app.tag), "scene_type": "action",
        "params": {"seed": 99, "cfg_scale": 7.0},
        "failed_qa": {"scores": {"face": 0.3}, "failures": ["face_melt"]},
        "policy": {"enabled": true, "max_attempts": 2, "review_window_secs": 3600}
    }))
    .await;
    app.wait_for(&segment, "awaiting review", |s| {
        s.phase == Phase::AwaitingReview
    })
    .await;
    segment
}

/// A segment escalated on a render farm whose jobs take `polls` polls, the console served for
/// it, and a browser window signed in with `token` on the segment's page.
struct OnSegment {
    c: Client,
    app: TestApp,
    segment: String,
    _farm: FakeJobs,
    _profile: tempfile::TempDir,
}

impl OnSegment {
    async fn open(chromium: &Chromium, polls: u32, token: &str) -> Self {
        let farm = FakeJobs::render_farm(polls).await;
        let app = http_app(&farm).await;
        let segment = escalated(&app).await;
        let store = retake::connect::store(&app.db_url).await.unwrap();
        let base = serve_with(&app, store).await;
        let profile = tempfile::tempdir().unwrap();
        let c = chromium.window(profile.path()).await;
        sign_in(&c, &base, token).await;
        c.goto(&format!("{base}/ui/segments/{segment}"))
            .await
            .unwrap();
        Self {
            c,
            app,
            segment,
            _farm: farm,
            _profile: profile,
        }
    }

    /// What the page shows once both attempts' images have loaded.
    async fn with_images(&self) -> Value {
        eval_until(&self.c, SHOWN, 20, |v| {
            v["images"].as_array().is_some_and(|i| {
                i.len() == 2 && i.iter().all(|w| w.as_i64().is_some_and(|w| w > 0))
            })
        })
        .await
    }
}

#[tokio::test]
async fn a_creator_compares_images_retries_with_new_params_watches_them_arrive_and_accepts() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    // 15 polls of 200 ms: an attempt takes about 3 s, long enough to be seen in flight.
    let on = OnSegment::open(&chromium, 15, CREATOR).await;
    let (c, app, segment) = (&on.c, &on.app, &on.segment);
    let shown = on.with_images().await;
    assert_eq!(shown["phase"], "awaiting_review", "{shown}");
    assert_eq!(
        shown["cards"],
        json!([[1, "failed"], [2, "failed"]]),
        "both attempts side by side, each with its image loaded from the farm: {shown}"
    );
    let first = c
        .find(Locator::Css("article[data-attempt=\"1\"]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        first.contains("the face melts") && first.contains("cfg_scale"),
        "scores with their feedback, and the params: {first}"
    );
    screenshot(c, "console-escalated.png").await;

    // Retry with a lower CFG scale and two more attempts.
    fill(c, "#param-cfg_scale", "5.5").await;
    fill(c, "#attempts", "2").await;
    fill(c, "#retry-reason", "less guidance").await;
    click(c, "#retry-with-form button[type=submit]").await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#runs[data-live]"))
        .await
        .expect("the page follows the running retry");
    eval(c, "window.__mark = 'set before the retry'; return null;").await;

    // The new attempts appear while the page stays the same page (no reload).
    let live = eval_until(c, SHOWN, 60, |v| {
        v["same_page"] == true && v["cards"].as_array().is_some_and(|c| c.len() >= 3)
    })
    .await;
    assert_eq!(live["cards"][2][0], 3, "attempt 3 appears live: {live}");
    screenshot(c, "console-retrying.png").await;

    // Once both failed, the page reloads itself into review with the new attempts.
    let reviewed = eval_until(c, SHOWN, 60, |v| {
        v["phase"] == "awaiting_review" && v["can_accept"] == true
    })
    .await;
    assert_eq!(
        reviewed["cards"],
        json!([[1, "failed"], [2, "failed"], [3, "failed"], [4, "failed"]]),
        "{reviewed}"
    );

    // Accept attempt 3 by keyboard: choose it, type a reason, Tab to the button, Enter.
    c.find(Locator::Css("#accept-attempt"))
        .await
        .unwrap()
        .select_by_value("3")
        .await
        .unwrap();
    let reason = c.find(Locator::Css("#accept-reason")).await.unwrap();
    reason.click().await.unwrap();
    reason
        .send_keys(&format!("best face of four{}", char::from(Key::Tab)))
        .await
        .unwrap();
    let focused = eval(c, "return document.activeElement.textContent;").await;
    assert_eq!(focused, "Accept", "Tab moves from the reason to the button");
    c.active_element()
        .await
        .unwrap()
        .send_keys(&char::from(Key::Enter).to_string())
        .await
        .unwrap();
    let done = eval_until(c, SHOWN, 30, |v| {
        v["phase"].as_str().is_some_and(|p| p != "awaiting_review")
    })
    .await;
    screenshot(c, "console-accepted.png").await;

    let id = retake_domain::SegmentId::parse(segment).unwrap();
    let result = retake::retries::result(&retake::retries::handle(&app.client, &id))
        .await
        .unwrap();
    assert_eq!(result.outcome, Outcome::Passed, "{done}");
    assert_eq!(result.selected_attempt, Some(3));
    let retried = result
        .attempts
        .iter()
        .filter(|a| a.attempt >= 3)
        .collect::<Vec<_>>();
    assert_eq!(retried.len(), 2, "the two attempts asked for");
    assert!(
        retried
            .iter()
            .all(|a| a.original_params.0["cfg_scale"] == json!(5.5)
                && a.status == AttemptStatus::Failed),
        "{retried:#?}"
    );
    let decisions: Vec<(&str, &str, &str)> = result
        .decisions
        .iter()
        .map(|d| (d.action.as_str(), d.by.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        decisions,
        [
            ("retry_with", "api:creator", "less guidance"),
            ("accept", "api:creator", "best face of four")
        ]
    );
    c.clone().close().await.unwrap();
}

#[tokio::test]
async fn a_viewer_sees_every_attempt_and_no_way_to_decide() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    let on = OnSegment::open(&chromium, 1, VIEWER).await;
    let (c, app, segment) = (&on.c, &on.app, &on.segment);
    let shown = on.with_images().await;
    assert_eq!(shown["can_accept"], false, "{shown}");
    let forms = eval(c, "return document.querySelectorAll('main form').length;").await;
    assert_eq!(forms, 0, "no decision or steering form for a viewer");
    screenshot(c, "console-viewer.png").await;
    c.clone().close().await.unwrap();
    let id = retake_domain::SegmentId::parse(segment).unwrap();
    let still = retake::retries::status(&app.client, &id).await.unwrap();
    assert_eq!(still.phase, Phase::AwaitingReview, "nothing decided");
}

/// Click the element `css`.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Replace the text of the input `css` by `text`.
async fn fill(c: &Client, css: &str, text: &str) {
    let field = c.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn an_admin_edits_a_policy_field_by_field_and_each_error_shows_at_its_input() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    let app = TestApp::builder().without_worker().spawn().await;
    let scene = format!("{}-fields", app.tag);
    let before = json!({"enabled": true, "profile": "text",
                        "prompts": {"revise": "Chapter {chapter}, attempt {attempt}"}});
    let stored = retake_domain::RetryPolicy::parse(&before).unwrap();
    app.store
        .set_policy(&scene, &serde_json::to_value(&stored).unwrap(), "test")
        .await
        .unwrap();
    let store = retake::connect::store(&app.db_url).await.unwrap();
    let base = serve_with(&app, store).await;
    let profile = tempfile::tempdir().unwrap();
    let c = chromium.window(profile.path()).await;
    sign_in(&c, &base, crate::api::ADMIN).await;
    c.goto(&format!("{base}/ui/scene-types/{scene}"))
        .await
        .unwrap();

    fill(&c, "#max_attempts", "11").await;
    fill(&c, "#parallelism", "0").await;
    click(&c, "#policy-form button[type=submit]").await;
    let refused = eval_until(
        &c,
        "return Array.from(document.querySelectorAll('[aria-invalid=true]')).map(i => [i.id,
            (document.getElementById(i.id + '-error') || {}).textContent || null]);",
        10,
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    )
    .await;
    assert_eq!(refused[0][0], "max_attempts", "{refused}");
    assert!(
        refused[0][1].as_str().unwrap().contains("1..=10")
            || refused[0][1].as_str().unwrap().contains("10"),
        "the API's message at the input: {refused}"
    );
    assert_eq!(refused[1][0], "parallelism", "{refused}");
    assert_eq!(
        app.store.policy(&scene).await.unwrap(),
        Some(serde_json::to_value(&stored).unwrap()),
        "nothing saved"
    );
    screenshot(&c, "console-policy-errors.png").await;

    // Fix both, run two at once, and add a jitter row in the blank row.
    fill(&c, "#max_attempts", "5").await;
    fill(&c, "#ladder", "revise, revise_with_feedback").await;
    fill(&c, "#parallelism", "2").await;
    let blank = eval(
        &c,
        "return Array.from(document.querySelectorAll('#vary input'))
            .filter(i => i.name.endsWith('.param') && i.value === '')[0].name;",
    )
    .await;
    let row = blank
        .as_str()
        .unwrap()
        .trim_end_matches(".param")
        .to_owned();
    fill(&c, &format!("input[name='{row}.param']"), "temperature").await;
    fill(&c, &format!("input[name='{row}.range']"), "0.2").await;
    fill(&c, &format!("input[name='{row}.max']"), "1.5").await;
    click(&c, "#policy-form button[type=submit]").await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".flash"))
        .await
        .expect("saved");

    let saved =
        retake_domain::RetryPolicy::parse(&app.store.policy(&scene).await.unwrap().unwrap())
            .unwrap();
    assert_eq!((saved.max_attempts, saved.parallelism), (5, 2));
    assert_eq!(
        saved.ladder.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ["revise", "revise_with_feedback"]
    );
    let t = &saved.vary["temperature"];
    assert_eq!((t.range, t.min, t.max), (0.2, None, Some(1.5)));
    assert_eq!(
        saved.prompts, stored.prompts,
        "what the form has no input for is kept"
    );
    c.clone().close().await.unwrap();
}

/// Press and release `key` on whatever has the focus, as a person at the keyboard would.
async fn press(c: &Client, key: char) {
    let keys = KeyActions::new("keyboard".to_owned())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    c.perform_actions(keys).await.unwrap();
}

/// What the full-size viewer shows: whether it is open, its title, the image's source and size,
/// and whether it shows actual pixels.
const FULL_SIZE: &str = "const v = document.getElementById('viewer');
    const img = v && v.querySelector('#viewer-stage img');
    return {
        open: !!(v && v.open),
        title: v ? document.getElementById('viewer-title').textContent : null,
        src: img ? img.getAttribute('src') : null,
        natural: img && img.complete ? [img.naturalWidth, img.clientWidth] : null,
        actual: !!(v && document.getElementById('viewer-stage').classList.contains('actual')),
        path: window.location.pathname,
        decided: (document.getElementById('decided') || {}).textContent || null,
    };";

#[tokio::test]
async fn a_creator_compares_two_attempts_at_full_size_accepts_by_keyboard_and_lands_on_the_next() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    let farm = FakeJobs::render_farm(1).await;
    let app = http_app(&farm).await;
    let first = escalated_named(&app, "kb-a").await;
    let second = escalated_named(&app, "kb-b").await;
    let store = retake::connect::store(&app.db_url).await.unwrap();
    let base = serve_with(&app, store).await;
    let profile = tempfile::tempdir().unwrap();
    let c = chromium.window(profile.path()).await;
    sign_in(&c, &base, CREATOR).await;
    c.goto(&format!("{base}/ui/segments/{first}"))
        .await
        .unwrap();
    eval_until(&c, SHOWN, 20, |v| {
        v["images"]
            .as_array()
            .is_some_and(|i| i.len() == 2 && i.iter().all(|w| w.as_i64().is_some_and(|w| w > 0)))
    })
    .await;
    // The best attempt is marked, preselected under Accept, and has its own Accept button.
    let marked = eval(
        &c,
        "return {
            best: Array.from(document.querySelectorAll('article.attempt[data-best]'))
                .map(a => Number(a.dataset.attempt)),
            preselected: Number(document.getElementById('accept-attempt').value),
            buttons: Array.from(document.querySelectorAll('form.accept-here button'))
                .map(b => b.textContent),
            srcs: Array.from(document.querySelectorAll('article.attempt a.full'))
                .map(a => a.getAttribute('href')),
            below: Array.from(document.querySelectorAll('article.attempt[data-attempt=\"1\"] dd.failed'))
                .map(d => d.textContent),
        };",
    )
    .await;
    let best = marked["best"][0].as_u64().expect("one best attempt") as u32;
    assert_eq!(marked["best"].as_array().unwrap().len(), 1, "{marked}");
    assert_eq!(marked["preselected"], best, "{marked}");
    assert_eq!(
        marked["buttons"],
        json!(["Accept attempt 1", "Accept attempt 2"]),
        "{marked}"
    );
    assert_eq!(
        marked["below"],
        json!(["0.310 (needs ≥ 0.60) below"]),
        "the failing score is marked, with its threshold: {marked}"
    );
    let other = 3 - best;
    let src = |n: u32| marked["srcs"][(n - 1) as usize].clone();

    // f: the best attempt at full size; j: the other one in its place; z: actual pixels;
    // k: back to the best.
    press(&c, 'f').await;
    let shown = eval_until(&c, FULL_SIZE, 10, |v| v["open"] == true).await;
    assert_eq!(shown["src"], src(best), "{shown}");
    assert!(
        shown["title"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("Attempt {best}"))),
        "{shown}"
    );
    press(&c, 'j').await;
    let flipped = eval_until(&c, FULL_SIZE, 10, |v| v["src"] == src(other)).await;
    assert_eq!(flipped["open"], true, "{flipped}");
    press(&c, 'z').await;
    let actual = eval_until(&c, FULL_SIZE, 10, |v| {
        v["actual"] == true
            && v["natural"]
                .as_array()
                .is_some_and(|n| n[0].as_i64() > Some(0))
    })
    .await;
    assert_eq!(
        actual["natural"][0], actual["natural"][1],
        "shown at its own pixel size: {actual}"
    );
    screenshot(&c, "console-full-size.png").await;
    press(&c, 'k').await;
    eval_until(&c, FULL_SIZE, 10, |v| v["src"] == src(best)).await;

    // a: accept the attempt on screen; the console moves on to the next segment in review.
    press(&c, 'a').await;
    let landed = eval_until(&c, FULL_SIZE, 30, |v| {
        v["path"] == format!("/ui/segments/{second}")
    })
    .await;
    assert!(
        landed["decided"]
            .as_str()
            .is_some_and(|d| d.contains(&first) && d.contains("Accepted")),
        "the page says what happened to the segment just decided: {landed}"
    );
    screenshot(&c, "console-next-segment.png").await;

    let id = retake_domain::SegmentId::parse(&first).unwrap();
    let result = retake::retries::result(&retake::retries::handle(&app.client, &id))
        .await
        .unwrap();
    assert_eq!(result.outcome, Outcome::Passed);
    assert_eq!(result.selected_attempt, Some(best));
    let decisions: Vec<(&str, &str)> = result
        .decisions
        .iter()
        .map(|d| (d.action.as_str(), d.by.as_str()))
        .collect();
    assert_eq!(decisions, [("accept", "api:creator")]);

    // The decided segment is found again by typing part of its id, in another case.
    c.goto(&format!("{base}/ui/segments")).await.unwrap();
    let search = c.find(Locator::Css("#q")).await.unwrap();
    search
        .send_keys(&format!(
            "{}{}",
            first.to_uppercase(),
            char::from(Key::Enter)
        ))
        .await
        .unwrap();
    let found = eval_until(
        &c,
        "return Array.from(document.querySelectorAll('#segments tbody tr')).map(r =>
            [r.dataset.segment, r.querySelector('td[data-label=Status]').textContent]);",
        15,
        |v| v.as_array().is_some_and(|r| !r.is_empty()),
    )
    .await;
    assert_eq!(
        found,
        json!([[first.clone(), "passed (review accepted)"]]),
        "{found}"
    );
    screenshot(&c, "console-segments.png").await;
    c.goto(&format!("{base}/ui/segments/{second}"))
        .await
        .unwrap();

    // x: to the reject reason; Enter asks first, and dismissing it rejects nothing.
    eval_until(&c, SHOWN, 20, |v| v["can_accept"] == true).await;
    press(&c, 'x').await;
    c.active_element()
        .await
        .unwrap()
        .send_keys(&format!("blurry{}", char::from(Key::Enter)))
        .await
        .unwrap();
    let asked = c.get_alert_text().await.expect("a confirmation");
    assert!(
        asked.starts_with(&format!("Reject segment {second}?")),
        "{asked}"
    );
    c.dismiss_alert().await.unwrap();
    let second_id = retake_domain::SegmentId::parse(&second).unwrap();
    let still = retake::retries::status(&app.client, &second_id)
        .await
        .unwrap();
    assert_eq!(still.phase, Phase::AwaitingReview, "nothing rejected");
    assert!(still.decisions.is_empty(), "{:?}", still.decisions);
    eval(&c, "document.activeElement.blur(); return null;").await;

    // n on the last segment in review: the queue, saying there is no other.
    press(&c, 'n').await;
    let end = eval_until(
        &c,
        "return window.location.pathname + window.location.search;",
        15,
        |v| {
            v.as_str().is_some_and(|p| {
                p.starts_with("/ui/review") || p.starts_with(&format!("/ui/segments/{first}"))
            })
        },
    )
    .await;
    eprintln!("after n on the last segment: {end}");
    c.close().await.unwrap();
}

/// axe-core's source (`RETAKE_AXE_JS`, which `scripts/test` installs), or `None` off CI where it
/// is missing (on CI a missing one fails the test).
fn axe_source() -> Option<String> {
    match std::env::var("RETAKE_AXE_JS") {
        Ok(path) => Some(std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "RETAKE_AXE_JS is not set on CI (scripts/test installs axe-core)"
            );
            eprintln!("skipping the accessibility check: RETAKE_AXE_JS names no axe-core");
            None
        }
    }
}

/// The serious and critical violations axe-core finds in the page now: rule, impact, elements.
async fn axe_violations(c: &Client, axe: &str) -> Vec<Value> {
    c.execute(&format!("{axe}\n;return null;"), Vec::new())
        .await
        .expect("axe-core loads in the page");
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']}).then(r => done(
                 r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
                  .map(v => ({rule: v.id, impact: v.impact,
                              nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))),
               e => done([{rule: 'axe failed', impact: String(e)}]));",
            Vec::new(),
        )
        .await
        .expect("axe-core runs");
    found.as_array().cloned().unwrap_or_default()
}

/// How wide the page is against the window: `[scrollWidth, innerWidth]` and the widest
/// elements that stick out, to name in a failure.
const WIDTH: &str = "const w = window.innerWidth;
    const wide = Array.from(document.querySelectorAll('body *'))
        .filter(e => e.getBoundingClientRect().right > w + 1)
        .slice(0, 5)
        .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
             (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ')[0] : '') +
             ' ' + Math.round(e.getBoundingClientRect().right));
    return {scroll: document.documentElement.scrollWidth, inner: w, wide: wide};";

#[tokio::test]
async fn every_console_page_has_no_serious_accessibility_violation_and_fits_a_phone() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    let Some(axe) = axe_source() else {
        return;
    };
    let farm = FakeJobs::render_farm(1).await;
    let app = http_app(&farm).await;
    let segment = escalated_named(&app, "a11y").await;
    let project = format!("{}-p", app.tag);
    let store = retake::connect::store(&app.db_url).await.unwrap();
    store.set_limit(&project, Some(600_000)).await.unwrap();
    let base = serve_with(&app, store).await;
    let profile = tempfile::tempdir().unwrap();
    let c = chromium.window(profile.path()).await;

    let pages = [
        ("/ui/review".to_owned(), "queue"),
        (format!("/ui/segments/{segment}"), "segment"),
        (format!("/ui/segments?q={}", app.tag), "segments"),
        ("/ui/settings".to_owned(), "settings"),
        ("/ui/scene-types/action".to_owned(), "scene-type"),
        (format!("/ui/projects/{project}"), "project"),
        ("/ui/no-such-page".to_owned(), "not-found"),
    ];
    let mut problems = Vec::new();
    for phone in [false, true] {
        if phone {
            c.set_window_size(375, 812).await.unwrap();
        }
        c.goto(&format!("{base}/ui/sign-in")).await.unwrap();
        let mut seen = vec![("sign-in".to_owned(), check(&c, &axe, phone).await)];
        sign_in(&c, &base, ADMIN).await;
        for (path, name) in &pages {
            c.goto(&format!("{base}{path}")).await.unwrap();
            seen.push((path.clone(), check(&c, &axe, phone).await));
            if phone {
                screenshot(&c, &format!("console-375-{name}.png")).await;
            }
        }
        c.goto(&format!("{base}/ui/review")).await.unwrap();
        click(&c, "header form button[type=submit]").await;
        problems.extend(
            seen.into_iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(page, p)| {
                    format!(
                        "{page} ({}): {p:#?}",
                        if phone { "375 px" } else { "desktop" }
                    )
                }),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    c.close().await.unwrap();
}

/// What is wrong with the page now: axe-core's serious and critical violations, and on a phone
/// anything wider than the window.
async fn check(c: &Client, axe: &str, phone: bool) -> Vec<Value> {
    let mut found = axe_violations(c, axe).await;
    if phone {
        let width = eval(c, WIDTH).await;
        if width["scroll"].as_i64() > width["inner"].as_i64() {
            found.push(json!({"rule": "wider than the window", "width": width}));
        }
    }
    found
}

#[tokio::test]
async fn a_segment_escalated_while_the_queue_is_open_appears_in_it_without_a_reload() {
    let Some(chromium) = Chromium::start().await else {
        return;
    };
    let farm = FakeJobs::render_farm(1).await;
    let app = http_app(&farm).await;
    let first = escalated_named(&app, "q-1").await;
    let store = retake::connect::store(&app.db_url).await.unwrap();
    let base = serve_with(&app, store).await;
    let profile = tempfile::tempdir().unwrap();
    let c = chromium.window(profile.path()).await;
    sign_in(&c, &base, VIEWER).await;
    let rows = "return {
        rows: Array.from(document.querySelectorAll('#queue tbody tr')).map(r => r.dataset.segment),
        same_page: window.__mark === 'open before',
    };";
    eval_until(&c, rows, 30, |v| v["rows"] == json!([first.clone()])).await;
    eval(&c, "window.__mark = 'open before'; return null;").await;

    let second = escalated_named(&app, "q-2").await;
    let shown = eval_until(&c, rows, 30, |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert_eq!(shown["same_page"], true, "no reload: {shown}");
    assert_eq!(
        shown["rows"],
        json!([second, first]),
        "newest first: {shown}"
    );
    c.close().await.unwrap();
}
