//! The review console (`/ui`) over HTTP against a real dev server, worker and SQLite store:
//! sign-in and its cookie, CSRF, roles, the queue, decisions through the forms and their errors.
//! The same pages in a real browser: `console_browser.rs`.

use crate::api::{ADMIN, CREATOR, MINA, OPS, VIEWER, api_for, serve_with};
use crate::harness::{TestApp, find_segment, request, spawn_app};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use retake_domain::contract::Outcome;
use retake_domain::review::Phase;
use serde_json::json;
use std::time::Duration;

/// A browser as far as HTTP goes: its session cookie and the CSRF token of the last page.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
    csrf: String,
}

/// What a console request answered.
struct Page {
    status: StatusCode,
    location: String,
    set_cookie: Vec<String>,
    body: String,
}

/// The value of the first `name="csrf" value="…"` of `html`.
fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].chars().take_while(|c| *c != '"').collect())
}

/// Undo the HTML escaping of the few characters the messages contain.
fn unescape(html: &str) -> String {
    html.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

impl Browser {
    async fn new(app: &TestApp) -> Self {
        let store = retake::connect::store(&app.db_url).await.unwrap();
        Self::at(serve_with(app, store).await)
    }

    /// Another browser, of the console served at `base`.
    fn at(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
            csrf: String::new(),
        }
    }

    async fn answer(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header(COOKIE, c),
            None => req,
        };
        let resp = req.send().await.expect("console request");
        let set_cookie: Vec<String> = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        if let Some(c) = set_cookie.last() {
            let pair = c.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let page = Page {
            status: resp.status(),
            location: resp
                .headers()
                .get(LOCATION)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default(),
            set_cookie,
            body: resp.text().await.unwrap(),
        };
        if let Some(csrf) = csrf_of(&page.body) {
            self.csrf = csrf;
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.answer(req).await
    }

    /// POST `fields` as a form, with this session's CSRF token unless `fields` name `csrf`.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            form.push(("csrf".into(), self.csrf.clone()));
        }
        let req = self.http.post(format!("{}{path}", self.base)).form(&form);
        self.answer(req).await
    }

    /// Sign in with `token` through the form; panics unless it lands on the queue.
    async fn sign_in(&mut self, token: &str) -> Page {
        let form = self.get("/ui/sign-in").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.body);
        let signed = self.post("/ui/sign-in", &[("token", token)]).await;
        assert_eq!(
            (signed.status, signed.location.as_str()),
            (StatusCode::SEE_OTHER, "/ui/review"),
            "{}",
            signed.body
        );
        let queue = self.get("/ui/review").await;
        assert_eq!(queue.status, StatusCode::OK, "{}", queue.body);
        signed
    }
}

/// Start a retry of a segment of `project` whose three attempts all fail, with a one-hour review
/// window, and wait until it awaits a decision.
async fn in_review(app: &TestApp, name: &str, project: &str) -> String {
    let policy = json!({"enabled": true, "review_window_secs": 3600});
    let (segment, _) = find_segment(&app.tag, name, &policy, |a| {
        a.len() == 3 && a.iter().all(|x| !x.passed)
    });
    app.start(request(&segment, project, Some(policy))).await;
    app.wait_for(&segment, "awaiting review", |s| {
        s.phase == Phase::AwaitingReview
    })
    .await;
    segment
}

/// Load the queue at `path` until its table has a row for `segment` (visibility is eventually
/// consistent); panics after 30 s.
async fn queue_until_listed(b: &mut Browser, path: &str, segment: &str) -> String {
    let row = format!("data-segment=\"{segment}\"");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        if page.body.contains(&row) {
            return page.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{segment} never appeared in {path}: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn signing_in_sets_an_http_only_same_site_cookie_and_the_token_goes_nowhere_else() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut b = Browser::new(&app).await;

    let away = b.get("/ui/review").await;
    assert_eq!(
        (away.status, away.location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/sign-in"),
        "a page without a session sends the browser to sign in"
    );
    b.get("/ui/sign-in").await;
    let wrong = b
        .post("/ui/sign-in", &[("token", "not-a-known-token-at-all")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("That token is not known here."));
    assert!(!wrong.body.contains("not-a-known-token-at-all"));

    let anonymous = b
        .cookie
        .clone()
        .expect("the sign-in form sets its CSRF cookie");
    let signed = b.sign_in(CREATOR).await;
    let cookie = &signed.set_cookie[0];
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains(CREATOR), "the cookie holds an opaque id");
    assert!(!signed.location.contains(CREATOR));
    assert_ne!(
        b.cookie.as_deref(),
        Some(anonymous.as_str()),
        "signing in gives a fresh session id"
    );
    let queue = b.get("/ui/review").await;
    assert!(
        queue.body.contains("signed in as creator"),
        "{}",
        queue.body
    );
    assert!(!queue.body.contains(CREATOR));

    let session = b.cookie.clone();
    let out = b.post("/ui/sign-out", &[]).await;
    assert_eq!(
        (out.status, out.location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/sign-in")
    );
    assert!(out.set_cookie[0].contains("Max-Age=0"));
    b.cookie = session;
    assert_eq!(
        b.get("/ui/review").await.status,
        StatusCode::SEE_OTHER,
        "the signed-out session id is worth nothing"
    );
}

#[tokio::test]
async fn a_flood_of_anonymous_sign_in_pages_does_not_stop_a_sign_in_and_forged_tokens_still_fail() {
    let app = TestApp::builder().without_worker().spawn().await;
    let mut b = Browser::new(&app).await;
    let form = b.get("/ui/sign-in").await;
    assert_eq!(form.status, StatusCode::OK);
    let (cookie, token) = (b.cookie.clone(), b.csrf.clone());

    // More anonymous loads than the console ever kept sessions (10,000), each without a cookie:
    // when each made server-side state, this evicted the form above.
    let flood = reqwest::Client::new();
    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url) = (flood.clone(), format!("{}/ui/sign-in", b.base));
        loads.spawn(async move {
            for _ in 0..1_300 {
                let status = http.get(&url).send().await.expect("flood").status();
                assert_eq!(status, StatusCode::OK);
            }
        });
    }
    while let Some(done) = loads.join_next().await {
        done.unwrap();
    }

    let mut forger = Browser::at(b.base.clone());
    forger.get("/ui/sign-in").await;
    let mismatched = forger
        .post("/ui/sign-in", &[("token", ADMIN), ("csrf", &token)])
        .await;
    assert_eq!(
        mismatched.status,
        StatusCode::FORBIDDEN,
        "another browser's token does not pass with this cookie"
    );
    let forged = forger
        .post(
            "/ui/sign-in",
            &[("token", ADMIN), ("csrf", &"0".repeat(64))],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    forger.cookie = None;
    let cookieless = forger
        .post("/ui/sign-in", &[("token", ADMIN), ("csrf", &token)])
        .await;
    assert_eq!(
        cookieless.status,
        StatusCode::FORBIDDEN,
        "no cookie, no sign-in"
    );

    assert_eq!((b.cookie.clone(), b.csrf.clone()), (cookie, token));
    let signed = b.post("/ui/sign-in", &[("token", CREATOR)]).await;
    assert_eq!(
        (signed.status, signed.location.as_str()),
        (StatusCode::SEE_OTHER, "/ui/review"),
        "the form fetched before the flood still signs in: {}",
        signed.body
    );
    assert_eq!(b.get("/ui/review").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_post_without_the_csrf_token_is_refused_and_an_admin_form_saves_like_put() {
    let app = TestApp::builder().without_worker().spawn().await;
    let project = format!("{}-budget", app.tag);
    let path = format!("/ui/projects/{project}/budget");
    let mut b = Browser::new(&app).await;
    b.sign_in(ADMIN).await;

    let csrf = b.csrf.clone();
    let missing = b.post(&path, &[("limit_ms", "5000"), ("csrf", "")]).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN, "{}", missing.body);
    let forged = b
        .post(&path, &[("limit_ms", "5000"), ("csrf", "0123456789abcdef")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.store.budget(&project).await.unwrap(),
        None,
        "nothing saved"
    );

    b.csrf = csrf;
    let bad = b.post(&path, &[("limit_ms", "-5")]).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let api = api_for(&app).await;
    let (_, refused) = api
        .put(
            &format!("/projects/{project}/budget"),
            ADMIN,
            json!({"limit_ms": -5}),
        )
        .await;
    let message = refused["fields"][0]["message"].as_str().unwrap();
    assert!(
        unescape(&bad.body).contains(message),
        "the form shows the API's message {message:?}: {}",
        bad.body
    );

    let saved = b.post(&path, &[("limit_ms", "5000")]).await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    assert_eq!(
        app.store.budget(&project).await.unwrap().unwrap().limit_ms,
        Some(5000)
    );
    let shown = b.get(&saved.location).await;
    assert!(shown.body.contains("5000 ms"), "{}", shown.body);
}

#[tokio::test]
async fn the_queue_lists_an_escalated_segment_and_a_form_decision_ends_its_review_as_the_api_would()
{
    let app = spawn_app().await;
    let project = format!("{}-queue", app.tag);
    let segment = in_review(&app, "queue", &project).await;
    let mut viewer = Browser::new(&app).await;
    viewer.sign_in(VIEWER).await;

    let listed = queue_until_listed(
        &mut viewer,
        &format!("/ui/review?project={project}"),
        &segment,
    )
    .await;
    let outcome = &app.store.outcomes(&segment).await.unwrap()[0];
    assert_eq!(outcome.review, "pending");
    assert!(
        unescape(&listed).contains(&outcome.report),
        "the row shows the report {:?}",
        outcome.report
    );
    let other = viewer
        .get(&format!(
            "/ui/review?project={project}&scene_type=landscape"
        ))
        .await;
    assert!(!other.body.contains(&segment), "filtered out by scene type");

    let page = viewer.get(&format!("/ui/segments/{segment}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for n in 1..=3 {
        assert!(
            page.body.contains(&format!("data-attempt=\"{n}\"")),
            "attempt {n} shown"
        );
    }
    assert!(
        !page.body.contains("accept-form"),
        "a viewer gets no decision forms"
    );
    let refused = viewer
        .post(
            &format!("/ui/segments/{segment}/decision"),
            &[("decision", "reject")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let mut creator = Browser::new(&app).await;
    creator.sign_in(CREATOR).await;
    let page = creator.get(&format!("/ui/segments/{segment}")).await;
    assert!(page.body.contains("accept-form"), "{}", page.body);
    assert!(
        page.body
            .contains("Each reserves about 60.00 s of the project"),
        "the retry-with form says what an attempt reserves: {}",
        page.body
    );
    let accepted = creator
        .post(
            &format!("/ui/segments/{segment}/decision"),
            &[
                ("decision", "accept"),
                ("attempt", "2"),
                ("reason", "good enough"),
            ],
        )
        .await;
    assert_eq!(accepted.status, StatusCode::SEE_OTHER, "{}", accepted.body);
    // On to the next segment in review; with none left, back to this one, saying so.
    assert_eq!(
        accepted.location,
        format!("/ui/review/next?after={segment}&done=accept")
    );
    let next = creator.get(&accepted.location).await;
    assert_eq!(next.status, StatusCode::SEE_OTHER, "{}", next.body);
    assert_eq!(next.location, format!("/ui/segments/{segment}?done=accept"));

    let id = retake_domain::SegmentId::parse(&segment).unwrap();
    let result = retake::retries::result(&retake::retries::handle(&app.client, &id))
        .await
        .unwrap();
    assert_eq!(result.outcome, Outcome::Passed);
    assert_eq!(result.selected_attempt, Some(2));
    let decision = result.decisions.last().unwrap();
    assert_eq!(
        (
            decision.action.as_str(),
            decision.by.as_str(),
            decision.reason.as_str()
        ),
        ("accept", "api:creator", "good enough"),
        "recorded with the `by` the API gives a creator"
    );
    let stored = app.store.outcomes(&segment).await.unwrap();
    assert_eq!(stored.last().unwrap().review, "accepted");
    let done = creator.get(&format!("/ui/segments/{segment}")).await;
    assert!(
        done.body.contains("api:creator"),
        "the decision and who took it are shown"
    );
    let card = done
        .body
        .find("class=\"attempt selected\"")
        .map(|i| &done.body[i..(i + 200).min(done.body.len())])
        .expect("a selected attempt is marked");
    assert!(
        card.contains("data-attempt=\"2\""),
        "attempt 2 is marked: {card}"
    );
}

/// The `href` of the element with `id` in `html`, unescaped.
fn href_of(html: &str, id: &str) -> Option<String> {
    let at = html.find(&format!("id=\"{id}\""))?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..at + html[at..].find('>')?];
    let href = tag.split("href=\"").nth(1)?.split('"').next()?;
    Some(unescape(href))
}

#[tokio::test]
async fn the_queue_pages_through_every_segment_awaiting_review_once() {
    let app = spawn_app().await;
    let project = format!("{}-pages", app.tag);
    let (a, b, c) = tokio::join!(
        in_review(&app, "page-a", &project),
        in_review(&app, "page-b", &project),
        in_review(&app, "page-c", &project),
    );
    let mut viewer = Browser::new(&app).await;
    viewer.sign_in(VIEWER).await;
    let first_path = format!("/ui/review?project={project}&per_page=2");
    // Visibility is eventually consistent: wait until it counts all three.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let page = viewer.get(&first_path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        if page.body.contains("3 awaiting a decision") {
            break page.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", page.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(first.matches("data-segment=").count(), 2, "{first}");
    assert!(href_of(&first, "first-page").is_none(), "on the first page");
    let next = href_of(&first, "next-page").expect("a link to the next page");
    assert!(next.contains(&format!("project={project}")) && next.contains("per_page=2"));
    let second = viewer.get(&next).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body.matches("data-segment=").count(), 1);
    assert!(
        href_of(&second.body, "next-page").is_none(),
        "the last page"
    );
    assert_eq!(
        href_of(&second.body, "first-page").as_deref(),
        Some(format!("/ui/review?project={project}&per_page=2").as_str())
    );
    let mut seen: Vec<&str> = [a.as_str(), b.as_str(), c.as_str()]
        .into_iter()
        .filter(|s| {
            let row = format!("data-segment=\"{s}\"");
            first.contains(&row) as u8 + second.body.contains(&row) as u8 == 1
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen.len(), 3, "each segment on exactly one page");

    for bad in ["per_page=0", "per_page=201", "page=zz", "page=00ff"] {
        let page = viewer.get(&format!("/ui/review?{bad}")).await;
        assert_eq!(
            page.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            page.body
        );
    }
}

#[tokio::test]
async fn a_retry_with_form_with_a_bad_value_shows_the_apis_field_error_and_decides_nothing() {
    let app = spawn_app().await;
    let segment = in_review(&app, "rw", &format!("{}-rw", app.tag)).await;
    let mut b = Browser::new(&app).await;
    b.sign_in(CREATOR).await;
    let page = b.get(&format!("/ui/segments/{segment}")).await;
    assert!(
        page.body.contains("name=\"param:cfg_scale\" value=\"7.5\""),
        "the form is pre-filled with the params: {}",
        page.body
    );
    let path = format!("/ui/segments/{segment}/decision");

    let zero = b
        .post(
            &path,
            &[
                ("decision", "retry_with"),
                ("param:cfg_scale", "6.5"),
                ("attempts", "0"),
            ],
        )
        .await;
    assert_eq!(
        zero.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        zero.body
    );
    assert!(
        zero.body
            .contains("<span class=\"field-error\" id=\"attempts-error\">must be between 1 and 10, got 0</span>"),
        "{}",
        zero.body
    );
    assert!(
        zero.body.contains("value=\"6.5\""),
        "the form keeps what was typed"
    );

    let typo = b
        .post(&path, &[("decision", "retry_with"), ("attempts", "three")])
        .await;
    assert_eq!(typo.status, StatusCode::UNPROCESSABLE_ENTITY);
    let api = api_for(&app).await;
    let (status, refused) = api
        .post(
            &format!("/segments/{segment}/retries/decision"),
            CREATOR,
            json!({"decision": "retry_with", "reason": "", "attempts": "three"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = refused["fields"][0]["message"].as_str().unwrap();
    assert_eq!(refused["fields"][0]["field"], "attempts");
    assert!(
        unescape(&typo.body).contains(message),
        "the form shows the API's own message {message:?}"
    );

    let status = app.wait_for(&segment, "still in review", |_| true).await;
    assert_eq!(status.phase, Phase::AwaitingReview, "nothing was decided");
    assert!(status.decisions.iter().all(|d| d.action != "retry_with"));
}

#[tokio::test]
async fn a_segment_with_ten_attempts_shows_every_attempt() {
    let app = spawn_app().await;
    let policy = json!({"enabled": true, "max_attempts": 10, "review_window_secs": 3600});
    let (segment, _) = find_segment(&app.tag, "ten", &policy, |a| {
        a.len() == 10 && a.iter().all(|x| !x.passed)
    });
    app.start(request(&segment, &format!("{}-ten", app.tag), Some(policy)))
        .await;
    app.wait_for(&segment, "awaiting review", |s| {
        s.phase == Phase::AwaitingReview
    })
    .await;
    let mut b = Browser::new(&app).await;
    b.sign_in(CREATOR).await;
    let path = format!("/ui/segments/{segment}");
    b.get(&path).await;
    // Speed is not asserted here (timed tests flake on a loaded machine); the render time is
    // printed for a person to read (16 ms in a debug build on the 2-core dev machine).
    let started = std::time::Instant::now();
    let page = b.get(&path).await;
    eprintln!("a ten-attempt segment page took {:?}", started.elapsed());
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body.matches("<article class=\"attempt").count(), 10);
}

#[tokio::test]
async fn a_revised_chapter_shows_its_changes_from_the_draft_it_revised() {
    let dir = tempfile::tempdir().unwrap();
    let draft = dir.path().join("ch12-draft.md");
    std::fs::write(&draft, "12화 초고\n\n이야기가 계속된다.\n").unwrap();
    let llm = crate::harness::FakeLlm::start(vec![crate::ladder::scores([60, 60, 50, 60])]).await;
    let app = crate::ladder::chapter_app(&llm, &dir.path().join("artifacts")).await;
    let mut input = crate::ladder::chapter_request(&app, &draft);
    input["policy"]["max_attempts"] = json!(2);
    let result = app.retry(input.clone()).await;
    assert_eq!(result.outcome, Outcome::Escalated, "{result:#?}");
    let revises: Vec<Option<u32>> = result.attempts.iter().map(|a| a.revises).collect();
    assert!(
        matches!(revises[..], [Some(0), Some(_)]),
        "both revise a draft: {revises:?}"
    );
    let mut b = Browser::new(&app).await;
    b.sign_in(VIEWER).await;
    let segment = input["segment_id"].as_str().unwrap();
    let page = b.get(&format!("/ui/segments/{segment}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let card = |n: u32| {
        let at = page
            .body
            .find(&format!("data-attempt=\"{n}\""))
            .expect("the card");
        let end = page.body[at..]
            .find("</article>")
            .map_or(page.body.len(), |e| at + e);
        unescape(&page.body[at..end])
    };
    let first = card(1);
    assert!(
        first.contains("Changes from the original draft")
            && first.contains("<span class=\"del\">- 12화 초고</span>")
            && first.contains("<span class=\"ins\">+ 12화 원고 (버전 1)</span>")
            && first.contains("<span class=\"eq\">  이야기가 계속된다.</span>"),
        "{first}"
    );
    let second = card(2);
    let (against, old) = match revises[1] {
        Some(0) => ("the original draft".to_owned(), "12화 초고".to_owned()),
        Some(k) => (format!("attempt {k}"), format!("12화 원고 (버전 {k})")),
        None => unreachable!(),
    };
    assert!(
        second.contains(&format!("Changes from {against}"))
            && second.contains(&format!("<span class=\"del\">- {old}</span>"))
            && second.contains("<span class=\"ins\">+ 12화 원고 (버전 2)</span>"),
        "{second}"
    );
}

/// An attempt of `segment` recorded straight into the store: `output_uri` as a backend named it,
/// revising the run's original draft `draft` (its `params.output_uri`) when `revises` is 0.
async fn record_text_attempt(
    app: &TestApp,
    segment: &str,
    attempt: u32,
    output_uri: &str,
    draft: &str,
) {
    use retake_activities::io::{AttemptKey, RecordAttempt};
    use retake_domain::contract::{AttemptRecord, AttemptStatus};
    use retake_domain::params::Params;
    let params = Params::parse(&json!({"seed": 7, "output_uri": draft})).unwrap();
    let record = AttemptRecord {
        attempt,
        seed: 7,
        params: params.clone(),
        original_params: params,
        jitter: vec![],
        scores: [("overall".to_owned(), 0.5)].into(),
        passed: false,
        failures: vec!["below_threshold".into()],
        gpu_ms: 10,
        status: AttemptStatus::Failed,
        output_uri: Some(output_uri.to_owned()),
        error: None,
        error_type: None,
        note: None,
        strategy: None,
        prompt: None,
        revises: Some(0),
        breakdown: vec![],
        variation: None,
        worker: None,
    };
    app.store
        .record_attempt(&RecordAttempt {
            key: AttemptKey {
                workflow_id: retake_domain::workflow_id(&segment.parse().unwrap()),
                run_id: "r1".into(),
                attempt,
            },
            segment_id: segment.parse().unwrap(),
            project_id: "p1".parse().unwrap(),
            scene_type: "chapter".parse().unwrap(),
            record,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_viewer_never_sees_a_local_file_outside_the_folders_retake_may_read() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let secret = dir.path().join("tokens.md");
    std::fs::write(&secret, "RETAKE_API_TOKENS=admin=leaked-admin-token").unwrap();
    let inside = artifacts.join("attempt-2.md");
    std::fs::write(&inside, "12화 원고").unwrap();
    let config = retake_activities::backends::BackendsConfig::parse(
        "test",
        &json!({"artifacts_dir": artifacts}).to_string(),
    )
    .unwrap();
    let app = TestApp::builder()
        .backends(config)
        .without_worker()
        .spawn()
        .await;
    let segment = format!("{}-leak", app.tag);
    let uri = |p: &std::path::Path| url::Url::from_file_path(p).unwrap().to_string();
    // A backend named a file outside the roots as its output; a creator (through a raw client)
    // named the process environment as the draft both attempts revise.
    let environ = "file:///proc/self/environ";
    record_text_attempt(&app, &segment, 1, &uri(&secret), environ).await;
    record_text_attempt(&app, &segment, 2, &uri(&inside), environ).await;

    let mut b = Browser::new(&app).await;
    b.sign_in(VIEWER).await;
    let page = b.get(&format!("/ui/segments/{segment}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body = unescape(&page.body);
    assert!(!body.contains("leaked-admin-token"), "{body}");
    assert!(!body.contains("PATH="), "the environment was read: {body}");
    assert!(body.contains(&uri(&secret)), "shown as its URI: {body}");
    assert!(body.contains("12화 원고"), "a file inside is shown: {body}");
}

#[tokio::test]
async fn every_parallel_attempt_in_flight_has_its_generating_card() {
    let app = TestApp::builder()
        .simulator(retake_activities::sim::Simulator::new(30_000))
        .spawn()
        .await;
    let segment = format!("{}-live2", app.tag);
    let policy = json!({"enabled": true, "parallelism": 2, "max_attempts": 4});
    app.start(request(&segment, "p1", Some(policy))).await;
    let live = app
        .wait_for(&segment, "two attempts generating", |s| {
            s.running_attempts == [1, 2]
                && s.in_flight
                    .iter()
                    .filter(|i| i.stage == "generating")
                    .count()
                    == 2
        })
        .await;

    let mut b = Browser::new(&app).await;
    b.sign_in(VIEWER).await;
    let page = b.get(&format!("/ui/segments/{segment}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    for n in [1, 2] {
        assert!(
            page.body.contains(&format!("data-attempt=\"{n}\"")),
            "a card for attempt {n}: {}",
            page.body
        );
    }
    assert_eq!(page.body.matches("Generating…").count(), 2, "{}", page.body);
    // Each card already shows the seed and parameters its generation was sent.
    for known in &live.in_flight {
        assert!(
            page.body
                .contains(&format!("<dt>Seed</dt><dd>{}</dd>", known.seed)),
            "attempt {}'s seed on its card: {}",
            known.attempt,
            page.body
        );
        let cfg = known.params.0["cfg_scale"].to_string();
        assert!(
            page.body
                .contains(&format!("<dt>cfg_scale</dt><dd>{cfg}</dd>")),
            "{}",
            page.body
        );
    }
    retake::retries::signal(
        &app.client,
        &segment.parse::<retake_domain::SegmentId>().unwrap(),
        retake::retries::Creator::Abort,
        "done looking",
        "test",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_named_person_is_shown_signed_in_and_recorded_on_console_decisions_and_policy_saves() {
    let app = spawn_app().await;
    let segment = in_review(&app, "named", "p1").await;

    let mut mina = Browser::new(&app).await;
    mina.sign_in(MINA).await;
    let page = mina.get(&format!("/ui/segments/{segment}")).await;
    assert!(
        page.body.contains("signed in as mina (creator)"),
        "{}",
        page.body
    );
    let rejected = mina
        .post(
            &format!("/ui/segments/{segment}/decision"),
            &[("decision", "reject"), ("reason", "off-model")],
        )
        .await;
    assert_eq!(rejected.status, StatusCode::SEE_OTHER, "{}", rejected.body);
    let id = retake_domain::SegmentId::parse(&segment).unwrap();
    let result = retake::retries::result(&retake::retries::handle(&app.client, &id))
        .await
        .unwrap();
    assert_eq!(result.decisions.last().unwrap().by, "api:creator mina");
    let done = mina.get(&format!("/ui/segments/{segment}")).await;
    assert!(done.body.contains("api:creator mina"), "{}", done.body);

    let mut ops = Browser::new(&app).await;
    ops.sign_in(OPS).await;
    let scene = ops.get("/ui/scene-types/sound").await;
    assert!(scene.body.contains("id=\"no-changes\""), "{}", scene.body);
    let saved = ops
        .post(
            "/ui/scene-types/sound/policy",
            &[("policy", r#"{"enabled": true, "max_attempts": 4}"#)],
        )
        .await;
    assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
    let scene = ops.get("/ui/scene-types/sound").await;
    assert!(
        scene
            .body
            .contains("<td data-label=\"By\">api:admin ops</td>")
            && scene.body.contains("first stored"),
        "{}",
        scene.body
    );
    let stored = app.store.policy_changes("sound", 5).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].by, "api:admin ops");
}

#[tokio::test]
async fn a_finished_segment_is_found_by_part_of_its_id_in_any_case_and_filtered_by_status() {
    let app = spawn_app().await;
    let segment = in_review(&app, "Findable", "p1").await;
    let id = retake_domain::SegmentId::parse(&segment).unwrap();
    retake::retries::decide(&app.client, &id, json!({"decision": "reject", "by": "jun"}))
        .await
        .unwrap();
    retake::retries::result(&retake::retries::handle(&app.client, &id))
        .await
        .unwrap();

    let mut b = Browser::new(&app).await;
    b.sign_in(VIEWER).await;
    let row = format!("data-segment=\"{segment}\"");
    let found = b.get("/ui/segments?q=FINDABLE").await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    assert!(
        found.body.contains(&row) && found.body.contains("rejected in review"),
        "{}",
        found.body
    );
    let escalated = b.get("/ui/segments?q=findable&status=escalated").await;
    assert!(escalated.body.contains(&row), "{}", escalated.body);
    let passed = b.get("/ui/segments?q=findable&status=passed").await;
    assert!(
        !passed.body.contains(&row) && passed.body.contains("id=\"empty\""),
        "{}",
        passed.body
    );
    let bad = b.get("/ui/segments?status=done").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);
    assert!(bad.body.contains("budget_exhausted"), "{}", bad.body);
}

#[tokio::test]
async fn settings_list_every_scene_type_and_project_and_a_wrong_case_id_is_not_taken_for_another() {
    let app = spawn_app().await;
    app.store
        .set_policy("Action", &json!({"enabled": true}), "test")
        .await
        .unwrap();
    app.store.set_limit("Film-7", Some(60_000)).await.unwrap();

    let mut b = Browser::new(&app).await;
    b.sign_in(ADMIN).await;
    let settings = b.get("/ui/settings").await;
    assert_eq!(settings.status, StatusCode::OK, "{}", settings.body);
    assert!(
        settings
            .body
            .contains("<a href=\"/ui/scene-types/Action\">Action</a> <span class=\"muted\">policy stored</span>")
            && settings
                .body
                .contains("<a href=\"/ui/projects/Film-7\">Film-7</a> <span class=\"muted\">budget set</span>"),
        "{}",
        settings.body
    );
    let wrong = b.get("/ui/scene-types/action").await;
    assert!(
        wrong.body.contains("id=\"similar\"")
            && wrong.body.contains("href=\"/ui/scene-types/Action\"")
            && wrong.body.contains("stores a policy for a new scene type"),
        "{}",
        wrong.body
    );
    let right = b.get("/ui/scene-types/Action").await;
    assert!(!right.body.contains("id=\"similar\""), "{}", right.body);
}
