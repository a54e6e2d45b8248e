//! The HTTP API through a real socket on port 0: auth, validation, idempotent start, steering and
//! history after a real workflow ran. The helpers here serve the other API test modules too.

use crate::harness::{TestApp, find_segment, request, spawn_app};
use reqwest::StatusCode;
use retake_activities::ports::Store;
use retake_activities::sim::Simulator;
use serde_json::{Value, json};
use std::sync::Arc;

pub const ADMIN: &str = "admin-token-0123456789";
pub const CREATOR: &str = "creator-token-0123456789";
pub const VIEWER: &str = "viewer-token-0123456789";
/// A creator's token the operator named `mina`, and an admin's named `ops`.
pub const MINA: &str = "mina-creator-token-0123456789";
pub const OPS: &str = "ops-admin-token-0123456789";

/// The API served for `app` on a free port; returns its base URL.
async fn serve(app: &TestApp) -> String {
    let store = retake::connect::store(&app.db_url).await.unwrap();
    serve_with(app, store).await
}

/// The API served for `app` with `store` (e.g. one the test closes) on a free port.
pub async fn serve_with(app: &TestApp, store: Arc<dyn Store>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let tokens = retake_api::Tokens::parse(&format!(
        "admin={ADMIN},creator={CREATOR},viewer={VIEWER},creator:mina={MINA},admin:ops={OPS}"
    ))
    .unwrap();
    let state = retake_api::AppState {
        store,
        temporal: app.client.clone(),
        task_queue: app.task_queue.clone(),
        tokens: Arc::new(tokens),
        console: retake_api::Console::default(),
        files: app.files.clone(),
        urls: app.urls.clone(),
    };
    tokio::spawn(retake_api::serve(listener, state, std::future::pending()));
    base
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), Some(body))
            .await
    }
}

/// A valid workflow argument for `segment` (left out of the body) with a policy override.
pub fn start_body(segment: &str, policy: Value) -> Value {
    let mut body = request(segment, "p1", Some(policy));
    body.as_object_mut().unwrap().remove("segment_id");
    body
}

pub async fn api_for(app: &TestApp) -> Api {
    Api {
        base: serve(app).await,
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn the_auth_matrix_is_enforced() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let policy = "/scene-types/action/retry-policy";

    let resp = api
        .http
        .get(format!("{}{policy}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        api.get(policy, Some("not-a-token-at-all")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.put(policy, VIEWER, json!({"enabled": true})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.put(policy, CREATOR, json!({"enabled": true})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.put("/projects/p1/budget", CREATOR, json!({"limit_ms": 5}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.post("/segments/s1/retries", VIEWER, json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.put(policy, ADMIN, json!({"enabled": true})).await.0,
        StatusCode::OK
    );
    assert_eq!(api.get(policy, Some(VIEWER)).await.0, StatusCode::OK);
    let (status, body) = api.get(policy, Some("x")).await;
    assert!(status == StatusCode::UNAUTHORIZED && !body.to_string().contains(ADMIN));
}

#[tokio::test]
async fn policies_and_budgets_are_validated_stored_and_shown() {
    let app = spawn_app().await;
    let api = api_for(&app).await;

    let (status, body) = api
        .put(
            "/scene-types/dialogue/retry-policy",
            ADMIN,
            json!({"max_attempts": 0, "vary": {"cfg_scale": {"range": -1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["max_attempts", "vary.cfg_scale.range"]);
    assert_eq!(
        api.get("/scene-types/dialogue/retry-policy", Some(VIEWER))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = api
        .put(
            "/scene-types/dialogue/retry-policy",
            ADMIN,
            json!({"enabled": true, "selection": "best_of_n"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["max_attempts"], 3, "defaults are filled in");
    assert_eq!(
        api.get("/scene-types/dialogue/retry-policy", Some(VIEWER))
            .await
            .1,
        body
    );
    assert_eq!(
        api.get("/scene-types/bad%20id/retry-policy", Some(VIEWER))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    assert_eq!(
        api.get("/projects/p7/budget", Some(VIEWER)).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = api
        .put("/projects/p7/budget", ADMIN, json!({"limit_ms": -4}))
        .await;
    assert_eq!(
        (status, body["fields"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limit_ms"))
    );
    let (status, body) = api
        .put("/projects/p7/budget", ADMIN, json!({"limit_ms": 3600000}))
        .await;
    assert_eq!(
        (status, body["limit_ms"].as_u64()),
        (StatusCode::OK, Some(3600000))
    );
    assert_eq!(
        api.get("/projects/p7/budget", Some(VIEWER)).await.1["spent_ms"],
        0
    );

    let resp = api
        .http
        .put(format!("{}/projects/p7/budget", api.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let big = "x".repeat(retake_api::BODY_LIMIT + 1);
    let resp = api
        .http
        .put(format!("{}/projects/p7/budget", api.base))
        .bearer_auth(ADMIN)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn starting_a_retry_is_idempotent_and_its_history_is_served_after_it_ran() {
    let app = TestApp::builder()
        .simulator(Simulator::new(1500))
        .spawn()
        .await;
    let api = api_for(&app).await;
    let policy = json!({"enabled": true, "review_window_secs": 0});
    let (segment, predicted) = find_segment(&app.tag, "api", &policy, |a| a.len() >= 2);
    let mut body = request(&segment, "p1", Some(policy));
    body.as_object_mut().unwrap().remove("segment_id");
    let path = format!("/segments/{segment}/retries");

    let (first, started) = api.post(&path, CREATOR, body.clone()).await;
    let (second, running) = api.post(&path, CREATOR, body.clone()).await;

    assert_eq!(
        (first, started["status"].as_str()),
        (StatusCode::ACCEPTED, Some("started"))
    );
    assert_eq!(
        (second, running["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    assert_eq!(
        started["run_id"], running["run_id"],
        "the running retry is returned, not a second one"
    );
    let mut bad = body.clone();
    bad["params"]["seed"] = json!("abc");
    let (status, err) = api.post(&path, CREATOR, bad).await;
    assert_eq!(
        (status, err["fields"][0]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("params.seed"))
    );

    let result = retake::retries::result(&retake::retries::handle(
        &app.client,
        &retake_domain::SegmentId::parse(&segment).unwrap(),
    ))
    .await
    .unwrap();
    let (status, history) = api
        .get(&format!("/segments/{segment}/retry-history"), Some(VIEWER))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["total_attempts"], predicted.len());
    assert_eq!(history["runs"][0]["report"], json!(result.report));
    for (row, a) in history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&result.attempts)
    {
        assert_eq!(row["seed"], json!(a.seed));
        assert_eq!(row["params"], serde_json::to_value(&a.params).unwrap());
        assert_eq!(
            row["original_params"],
            serde_json::to_value(&a.original_params).unwrap()
        );
        assert_eq!(row["gpu_ms"], json!(a.gpu_ms));
        assert_eq!(
            row["selected"],
            json!(result.selected_attempt == Some(a.attempt))
        );
    }
    let (_, page2) = api
        .get(
            &format!("/segments/{segment}/retry-history?page=2&per_page=1"),
            Some(VIEWER),
        )
        .await;
    assert_eq!(page2["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(page2["attempts"][0]["attempt"], 2);
    assert_eq!(
        api.get("/segments/never-seen/retry-history", Some(VIEWER))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(
            &format!("/segments/{segment}/retry-history?per_page=0"),
            Some(VIEWER)
        )
        .await
        .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn creators_steer_a_running_retry_through_the_api() {
    let app = TestApp::builder()
        .simulator(Simulator::new(20_000))
        .spawn()
        .await;
    let api = api_for(&app).await;
    let segment = format!("{}-steer", app.tag);
    let mut body = request(&segment, "p1", Some(json!({"enabled": true})));
    body.as_object_mut().unwrap().remove("segment_id");
    assert_eq!(
        api.post(&format!("/segments/{segment}/retries"), CREATOR, body)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    app.wait_for(&segment, "attempt 1 running", |s| {
        s.running_attempt == Some(1)
    })
    .await;

    let (status, live) = api
        .get(&format!("/segments/{segment}/retries/status"), Some(VIEWER))
        .await;
    assert_eq!(
        (status, live["phase"].as_str()),
        (StatusCode::OK, Some("retrying"))
    );
    let (status, err) = api
        .post(
            &format!("/segments/{segment}/retries/decision"),
            CREATOR,
            json!({"decision": "reject"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("not awaiting review"),
        "{err}"
    );
    let (status, sent) = api
        .post(
            &format!("/segments/{segment}/retries/abort"),
            CREATOR,
            json!({"reason": "wrong prompt"}),
        )
        .await;
    assert_eq!(
        (status, sent["by"].as_str()),
        (StatusCode::ACCEPTED, Some("api:creator"))
    );

    let result = retake::retries::result(&retake::retries::handle(
        &app.client,
        &retake_domain::SegmentId::parse(&segment).unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(result.outcome, retake_domain::Outcome::Aborted);
    assert_eq!(result.reason, "aborted by api:creator: wrong prompt");
    let (status, err) = api
        .post(
            &format!("/segments/{segment}/retries/escalate"),
            CREATOR,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a finished retry: {err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("has already finished"),
        "{err}"
    );
    assert_eq!(
        api.post("/segments/nobody/retries/abort", CREATOR, json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn health_metrics_and_the_openapi_document_are_served() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let policy = json!({"enabled": true});
    let (segment, predicted) = find_segment(&app.tag, "met", &policy, |a| {
        a.last().is_some_and(|l| l.passed)
    });
    app.retry(request(&segment, "p1", Some(policy))).await;

    assert_eq!(
        api.get("/healthz", None).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (status, metrics) = api.get("/metrics", None).await;
    let text = metrics.as_str().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("retake_segments_fixed_total 1"), "{text}");
    assert!(
        text.contains("retake_attempts_total{status=\"passed\"} 1"),
        "{text}"
    );
    let failed = predicted.len() - 1;
    if failed > 0 {
        assert!(
            text.contains(&format!(
                "retake_attempts_total{{status=\"failed\"}} {failed}"
            )),
            "{text}"
        );
    }
    let (status, doc) = api.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/segments/{id}/retries",
        "/segments/{id}/retry-history",
        "/scene-types/{id}/retry-policy",
        "/projects/{id}/budget",
        "/segments/{id}/retries/decision",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "openapi.json lacks {path}"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn temporal_being_down_is_a_503_with_a_retry_hint() {
    use crate::harness::own_dev_server;
    let dir = tempfile::tempdir().unwrap();
    let server = own_dev_server(&dir.path().join("t.db"));
    let app = TestApp::builder()
        .without_worker()
        .on(&server)
        .spawn()
        .await;
    let api = api_for(&app).await;
    drop(server);

    let resp = api
        .http
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "Temporal is unavailable; retry later");
    assert_eq!(
        body["unavailable"],
        json!(["temporal"]),
        "the database is up"
    );
    let mut start = request(&format!("{}-down", app.tag), "p1", None);
    start.as_object_mut().unwrap().remove("segment_id");
    let (status, _) = api
        .post(
            &format!("/segments/{}-down/retries", app.tag),
            CREATOR,
            start,
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_named_tokens_person_is_recorded_on_decisions_signals_and_policy_changes() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let policy = "/scene-types/named/retry-policy";

    // Policy changes: who, when, what; newest first.
    let (status, changes) = api.get(&format!("{policy}/changes"), Some(VIEWER)).await;
    assert_eq!((status, changes), (StatusCode::OK, json!([])));
    for (token, attempts) in [(ADMIN, 2), (OPS, 3)] {
        let body = json!({"enabled": true, "max_attempts": attempts, "review_window_secs": 3600});
        assert_eq!(api.put(policy, token, body).await.0, StatusCode::OK);
    }
    let (_, changes) = api.get(&format!("{policy}/changes"), Some(VIEWER)).await;
    let who: Vec<(&str, u64)> = changes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["by"].as_str().unwrap(),
                c["policy"]["max_attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, [("api:admin ops", 3), ("api:admin", 2)]);
    assert!(changes[0]["changed_at"].as_str().unwrap().ends_with('Z'));
    let stored = app.store.policy_changes("named", 10).await.unwrap();
    assert_eq!(stored[0].by, "api:admin ops");

    // A decision by mina's token carries her name; she cannot write someone else's.
    let failing = crate::harness::find_segment(
        &app.tag,
        "named",
        &json!({"enabled": true, "max_attempts": 3, "review_window_secs": 3600}),
        |a| a.iter().all(|x| !x.passed),
    )
    .0;
    let body = {
        let mut b = request(&failing, "p1", None);
        b["scene_type"] = json!("named");
        b.as_object_mut().unwrap().remove("segment_id");
        b
    };
    let (status, started) = api
        .post(&format!("/segments/{failing}/retries"), MINA, body)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    app.wait_for(&failing, "awaiting review", |s| {
        s.phase == retake_domain::review::Phase::AwaitingReview
    })
    .await;
    let decision = format!("/segments/{failing}/retries/decision");
    let (status, err) = api
        .post(&decision, MINA, json!({"decision": "reject", "by": "jun"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err.to_string().contains("speaks for mina"), "{err}");
    let (status, _) = api
        .post(
            &decision,
            MINA,
            json!({"decision": "reject", "reason": "off-model"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = retake::retries::result(&retake::retries::handle(
        &app.client,
        &retake_domain::SegmentId::parse(&failing).unwrap(),
    ))
    .await
    .unwrap();
    let decisions: Vec<&str> = result.decisions.iter().map(|d| d.by.as_str()).collect();
    assert_eq!(decisions, ["api:creator mina"]);
    let stored = app.store.outcomes(&failing).await.unwrap();
    assert!(
        stored
            .iter()
            .any(|o| o.decisions.iter().any(|d| d.by == "api:creator mina")),
        "the store records her name too"
    );
}

/// `retake api` on a free port of this app's server and database, with `extra` arguments; its
/// base URL once it answers `/healthz` (panics with its stderr if it exits first).
async fn retake_api_process(app: &TestApp, extra: &[&str]) -> (tokio::process::Child, String) {
    let [port] = retake_testkit::free_ports::<1>().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_retake"))
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--temporal-address", &app.address])
        .args(extra)
        .env("RETAKE_API_TOKENS", format!("admin={ADMIN}"))
        .env("RETAKE_DATABASE_URL", &app.db_url)
        .env("RUST_LOG", "error")
        .env_remove("TEMPORAL_ADDRESS")
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start retake api");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "retake api exited ({status}): {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            return (child, base);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retake api never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn behind_an_auth_proxy_the_name_comes_from_its_user_header_only_when_opted_in() {
    let app = spawn_app().await;
    let put = |base: &str, user: &str, n: u32| {
        reqwest::Client::new()
            .put(format!("{base}/scene-types/proxied/retry-policy"))
            .bearer_auth(ADMIN)
            .header("X-Forwarded-User", user)
            .json(&json!({"enabled": true, "max_attempts": n}))
            .send()
    };
    let (_plain, base) = retake_api_process(&app, &[]).await;
    assert_eq!(put(&base, "jun", 2).await.unwrap().status(), StatusCode::OK);
    let (_proxied, base) = retake_api_process(&app, &["--user-header", "X-Forwarded-User"]).await;
    assert_eq!(
        put(&base, "mina@studio", 3).await.unwrap().status(),
        StatusCode::OK
    );
    let refused = put(&base, "api:admin", 4).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let by: Vec<String> = app
        .store
        .policy_changes("proxied", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.by)
        .collect();
    assert_eq!(
        by,
        ["api:admin mina@studio", "api:admin"],
        "the header is nobody's word unless opted in"
    );

    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "api",
            "--user-header",
            "not a header",
            "--temporal-address",
            &app.address,
        ])
        .env("RETAKE_API_TOKENS", format!("admin={ADMIN}"))
        .env("RETAKE_DATABASE_URL", &app.db_url)
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("--user-header \"not a header\""), "{said}");
}
