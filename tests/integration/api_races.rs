//! The races and outages an adversarial user found in the HTTP API: concurrent starts, a
//! decision right after a reject, a closed database, a numeric segment id, a token given two
//! roles.

use crate::api::{ADMIN, Api, CREATOR, VIEWER, api_for, serve_with, start_body};
use crate::harness::{TcpProxy, TestApp, find_segment, fresh_postgres, request, spawn_app};
use reqwest::{Method, StatusCode};
use retake_activities::sim::Simulator;
use retake_activities::store::SqlStore;
use retake_domain::SegmentId;
use retake_domain::review::Phase;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_numeric_segment_id_in_the_body_matches_the_same_segment_in_the_path() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    // Numeric, and unique on the dev server this test binary shares.
    let n = u64::from(std::process::id()) * 1000 + 77;
    let mut body = request("x", "p1", None);
    body["segment_id"] = json!(n);

    let (status, started) = api
        .post(&format!("/segments/{n}/retries"), CREATOR, body)
        .await;

    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["workflow_id"], format!("segment-retry-{n}"));
    let result = retake::retries::result(&retake::retries::handle(
        &app.client,
        &SegmentId::parse(n.to_string()).unwrap(),
    ))
    .await
    .unwrap();
    assert_eq!(result.segment_id.as_str(), n.to_string());
}

#[tokio::test]
async fn twenty_concurrent_starts_make_one_run_one_202_and_nineteen_running() {
    // Attempts take 20 s: every start arrives while the first run is still running.
    let app = TestApp::builder()
        .simulator(Simulator::new(20_000))
        .spawn()
        .await;
    let api = Arc::new(api_for(&app).await);
    let segment = format!("{}-race", app.tag);
    let body = start_body(&segment, json!({"enabled": true}));
    let path = format!("/segments/{segment}/retries");

    let answers = futures::future::join_all((0..20).map(|_| {
        let (api, path, body) = (api.clone(), path.clone(), body.clone());
        async move { api.post(&path, CREATOR, body).await }
    }))
    .await;

    let started: Vec<_> = answers
        .iter()
        .filter(|(s, b)| *s == StatusCode::ACCEPTED && b["status"] == "started")
        .collect();
    let running = answers
        .iter()
        .filter(|(s, b)| *s == StatusCode::OK && b["status"] == "running")
        .count();
    assert_eq!((started.len(), running), (1, 19), "{answers:#?}");
    let run_id = &started[0].1["run_id"];
    assert!(
        answers.iter().all(|(_, b)| &b["run_id"] == run_id),
        "one run: {answers:#?}"
    );
    let latest = retake::retries::latest_run(&app.client, &SegmentId::parse(&segment).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(json!(latest.run_id), *run_id);

    let (status, _) = api
        .post(
            &format!("{path}/abort"),
            CREATOR,
            json!({"reason": "test over"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let handle = retake::retries::handle(&app.client, &SegmentId::parse(&segment).unwrap());
    assert_eq!(
        retake::retries::result(&handle).await.unwrap().outcome,
        retake_domain::Outcome::Aborted
    );
}

#[tokio::test]
async fn a_decision_right_after_a_reject_says_the_review_is_over() {
    let app = spawn_app().await;
    let api = Arc::new(api_for(&app).await);
    let policy = json!({"enabled": true, "review_window_secs": 3600});
    // Several reviews: the second decision races the closing workflow differently each time.
    let segments: Vec<String> = (0..4)
        .map(|i| {
            find_segment(&app.tag, &format!("over{i}"), &policy, |a| {
                a.len() == 3 && a.iter().all(|x| !x.passed)
            })
            .0
        })
        .collect();
    let mut handles = Vec::new();
    for segment in &segments {
        handles.push(
            app.start(request(segment, "p1", Some(policy.clone())))
                .await,
        );
    }
    for segment in &segments {
        app.wait_for(segment, "awaiting review", |s| {
            s.phase == Phase::AwaitingReview
        })
        .await;
    }

    // After the reject, decisions keep coming until the workflow has closed: those that arrive
    // while it records its outcome are refused by its validator, those that race its closing
    // (an update aborted by the closing workflow) or come after must say the review is over.
    let answers = futures::future::join_all(segments.iter().map(|segment| {
        let api = api.clone();
        async move {
            let path = format!("/segments/{segment}/retries/decision");
            let reject = api
                .post(&path, CREATOR, json!({"decision": "reject"}))
                .await;
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut late = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let answer = api
                    .post(&path, CREATOR, json!({"decision": "accept", "attempt": 1}))
                    .await;
                let refused_while_closing = answer.0 == StatusCode::UNPROCESSABLE_ENTITY;
                late.push(answer);
                if !refused_while_closing {
                    break;
                }
            }
            (reject, late)
        }
    }))
    .await;

    for ((reject, reject_body), late) in &answers {
        assert_eq!(*reject, StatusCode::OK, "{reject_body}");
        for (status, body) in late {
            let error = body["error"].as_str().unwrap_or_default();
            let said_over = match *status {
                StatusCode::CONFLICT => error.contains("has already finished: its review is over"),
                StatusCode::UNPROCESSABLE_ENTITY => {
                    error.contains("not awaiting review")
                        || error.contains("review is already closing")
                }
                _ => false,
            };
            assert!(said_over, "a late decision got {status} {body}");
        }
        assert_eq!(
            late.last().map(|(s, _)| *s),
            Some(StatusCode::CONFLICT),
            "once the workflow closed: {late:?}"
        );
    }
    for (segment, handle) in segments.iter().zip(&handles) {
        let result = retake::retries::result(handle).await.unwrap();
        assert_eq!(
            result.reason, "rejected by api:creator in review",
            "the first decision stands"
        );
        let outcomes = app.store.outcomes(segment).await.unwrap();
        assert_eq!(outcomes[0].review, "rejected");
    }
}

#[tokio::test]
async fn a_closed_database_is_a_503_with_retry_after_on_every_endpoint_that_needs_it() {
    let app = spawn_app().await;
    let store = Arc::new(SqlStore::connect(&app.db_url).await.unwrap());
    let api = Api {
        base: serve_with(&app, store.clone()).await,
        http: reqwest::Client::new(),
    };
    store.close().await;
    let segment = format!("{}-nodb", app.tag);

    let calls = [
        (
            Method::GET,
            "/scene-types/action/retry-policy".to_owned(),
            Some(VIEWER),
            None,
        ),
        (
            Method::PUT,
            "/scene-types/action/retry-policy".to_owned(),
            Some(ADMIN),
            Some(json!({"enabled": true})),
        ),
        (
            Method::GET,
            "/projects/p1/budget".to_owned(),
            Some(VIEWER),
            None,
        ),
        (
            Method::PUT,
            "/projects/p1/budget".to_owned(),
            Some(ADMIN),
            Some(json!({"limit_ms": 5})),
        ),
        (
            Method::GET,
            format!("/segments/{segment}/retry-history"),
            Some(VIEWER),
            None,
        ),
        (
            Method::POST,
            format!("/segments/{segment}/retries"),
            Some(CREATOR),
            Some(start_body(&segment, json!({"enabled": true}))),
        ),
        (Method::GET, "/metrics".to_owned(), None, None),
        (Method::GET, "/healthz".to_owned(), None, None),
    ];
    for (method, path, token, body) in calls {
        let mut req = api
            .http
            .request(method.clone(), format!("{}{path}", api.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {body}"
        );
        assert_eq!(
            retry_after.as_ref().map(|v| v.as_bytes()),
            Some(&b"5"[..]),
            "{method} {path}"
        );
        assert_eq!(
            (
                &body["error"],
                &body["unavailable"],
                &body["retry_after_secs"]
            ),
            (
                &json!("the database is unavailable; retry later"),
                &json!(["database"]),
                &json!(5)
            ),
            "{method} {path}: Temporal is up, only the database is named"
        );
    }
    assert_eq!(
        retake::retries::latest_run(&app.client, &SegmentId::parse(&segment).unwrap())
            .await
            .unwrap(),
        None,
        "nothing starts without the policy check"
    );
}

/// Postgres going down under the API: a call answers `503` within seconds, not after the 30 s a
/// worker's store step waits for a connection. The server goes away for real: the API's store
/// (opened as `retake api` opens it) reaches it through a proxy that is stopped, and the port
/// then refuses connections, which sqlx keeps trying until the store's acquire timeout.
#[tokio::test]
async fn the_api_answers_503_within_seconds_while_postgres_refuses_connections() {
    let Some(db) = fresh_postgres().await else {
        return;
    };
    let app = spawn_app().await;
    let mut url = url::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = TcpProxy::start(upstream).await;
    let (host, port) = proxy.address.rsplit_once(':').unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_port(Some(port.parse().unwrap())).unwrap();
    let store = retake::connect::api_store(url.as_str()).await.unwrap();
    let api = Api {
        base: serve_with(&app, store).await,
        http: reqwest::Client::new(),
    };
    let budget = "/projects/p1/budget";
    let (status, body) = api.get(budget, Some(VIEWER)).await;
    assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    proxy.stop().await;
    let asked = Instant::now();
    let (status, body) = api.get(budget, Some(VIEWER)).await;
    let waited = asked.elapsed();

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["unavailable"], json!(["database"]), "{body}");
    assert!(
        waited < Duration::from_secs(3),
        "the 503 came after {waited:?}"
    );
}

/// The `retake api` process with `tokens` as its configuration; what it printed and whether it
/// exited (it must, at once, without serving).
async fn api_process(app: &TestApp, tokens: &str) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_retake"))
        .args([
            "api",
            "--listen",
            "127.0.0.1:0",
            "--temporal-address",
            &app.address,
        ])
        .env("RETAKE_API_TOKENS", tokens)
        .env("RETAKE_DATABASE_URL", &app.db_url)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("the API refuses to start instead of serving")
        .expect("run retake api")
}

#[tokio::test]
async fn the_api_refuses_to_start_when_one_token_is_given_two_roles() {
    let app = spawn_app().await;

    let out = api_process(
        &app,
        &format!("admin={ADMIN},creator={CREATOR},viewer={ADMIN}"),
    )
    .await;

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("entries 1 and 3 give the same token"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(ADMIN),
        "the token is never echoed: {stderr}"
    );
}
