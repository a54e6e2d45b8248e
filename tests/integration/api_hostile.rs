//! The HTTP API under hostile input: one table of malformed, oversized, mistyped and unauthorised
//! requests with the status and error body each must get, and the races and outages an
//! adversarial user found (concurrent starts, a decision after a reject, a closed database).

use crate::api::{ADMIN, Api, CREATOR, VIEWER, api_for, serve_with};
use crate::harness::{TestApp, find_segment, request, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use retake_activities::sim::Simulator;
use retake_activities::store::SqlStore;
use retake_domain::SegmentId;
use retake_domain::review::Phase;
use serde_json::{Value, json};
use std::sync::Arc;

/// What a request sends as its body.
enum Body {
    None,
    /// Sent as `application/json`.
    Json(Value),
    /// Sent as it is, with this content type (`None`: no Content-Type header).
    Raw(Option<&'static str>, String),
}

/// What the error body must say.
enum Says {
    /// A 422's `fields`, in order.
    Fields(&'static [&'static str]),
    /// Its `error` contains this.
    Error(&'static str),
}

struct Case {
    what: &'static str,
    method: Method,
    path: String,
    token: Option<&'static str>,
    body: Body,
    status: u16,
    says: Says,
}

async fn send(api: &Api, c: &Case) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut req = api
        .http
        .request(c.method.clone(), format!("{}{}", api.base, c.path));
    if let Some(t) = c.token {
        req = req.bearer_auth(t);
    }
    req = match &c.body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Raw(ct, text) => {
            let req = req.body(text.clone());
            match ct {
                Some(ct) => req.header("content-type", *ct),
                None => req,
            }
        }
    };
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// A valid workflow argument for `segment` (left out of the body) with a policy override.
fn start_body(segment: &str, policy: Value) -> Value {
    let mut body = request(segment, "p1", Some(policy));
    body.as_object_mut().unwrap().remove("segment_id");
    body
}

#[tokio::test]
async fn hostile_requests_get_the_documented_status_and_json_error_body() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let seg = |name: &str| format!("{}-{name}", app.tag);
    use Body::{Json, Raw};
    use Says::{Error, Fields};
    let big = "x".repeat(retake_api::BODY_LIMIT + 1);
    let budget = "/projects/p1/budget".to_owned();
    let policy = "/scene-types/action/retry-policy".to_owned();
    let cases = vec![
        Case {
            what: "a limit of 2^63",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Raw(
                Some("application/json"),
                r#"{"limit_ms": 9223372036854775808}"#.into(),
            ),
            status: 422,
            says: Fields(&["limit_ms"]),
        },
        Case {
            what: "a limit of 2^64 - 1",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Json(json!({"limit_ms": u64::MAX})),
            status: 422,
            says: Error("invalid input"),
        },
        Case {
            what: "an unknown budget field",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Json(json!({"limit_ms": 5, "currency": "eur"})),
            status: 422,
            says: Fields(&["currency"]),
        },
        Case {
            what: "an estimated attempt cost of 2^63 ms",
            method: Method::PUT,
            path: policy.clone(),
            token: Some(ADMIN),
            body: Json(json!({"enabled": true, "est_gpu_ms_per_attempt": 1_u64 << 63})),
            status: 422,
            says: Fields(&["est_gpu_ms_per_attempt"]),
        },
        Case {
            what: "an unknown policy field",
            method: Method::PUT,
            path: policy.clone(),
            token: Some(ADMIN),
            body: Json(json!({"max_attempt": 4})),
            status: 422,
            says: Fields(&["max_attempt"]),
        },
        Case {
            what: "a scene type that is not UTF-8",
            method: Method::PUT,
            path: "/scene-types/%FF/retry-policy".into(),
            token: Some(ADMIN),
            body: Json(json!({"enabled": true})),
            status: 422,
            says: Fields(&["scene_type"]),
        },
        Case {
            what: "a segment id with a slash",
            method: Method::GET,
            path: "/segments/a%2Fb/retry-history".into(),
            token: Some(VIEWER),
            body: Body::None,
            status: 422,
            says: Fields(&["segment_id"]),
        },
        Case {
            what: "a page that is not a number",
            method: Method::GET,
            path: "/segments/s1/retry-history?page=abc".into(),
            token: Some(VIEWER),
            body: Body::None,
            status: 422,
            says: Fields(&["page"]),
        },
        Case {
            what: "a negative page",
            method: Method::GET,
            path: "/segments/s1/retry-history?page=-1".into(),
            token: Some(VIEWER),
            body: Body::None,
            status: 422,
            says: Fields(&["page"]),
        },
        Case {
            what: "per_page over 500",
            method: Method::GET,
            path: "/segments/s1/retry-history?per_page=501".into(),
            token: Some(VIEWER),
            body: Body::None,
            status: 422,
            says: Fields(&["per_page"]),
        },
        Case {
            what: "malformed JSON",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Raw(Some("application/json"), "{not json".into()),
            status: 422,
            says: Fields(&["body"]),
        },
        Case {
            what: "JSON sent as text/plain",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Raw(Some("text/plain"), r#"{"limit_ms": 5}"#.into()),
            status: 415,
            says: Error("must be JSON"),
        },
        Case {
            what: "a body without a content type",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("noct")),
            token: Some(CREATOR),
            body: Raw(None, start_body("x", json!({})).to_string()),
            status: 415,
            says: Error("must be JSON"),
        },
        Case {
            what: "an oversize body",
            method: Method::PUT,
            path: policy.clone(),
            token: Some(ADMIN),
            body: Raw(Some("application/json"), big),
            status: 413,
            says: Error("larger than"),
        },
        Case {
            what: "a viewer's malformed write",
            method: Method::PUT,
            path: policy.clone(),
            token: Some(VIEWER),
            body: Raw(Some("application/json"), "{not json".into()),
            status: 403,
            says: Error("admin role"),
        },
        Case {
            what: "a viewer's malformed start",
            method: Method::POST,
            path: "/segments/%FF/retries".into(),
            token: Some(VIEWER),
            body: Raw(Some("text/plain"), "x".into()),
            status: 403,
            says: Error("creator role"),
        },
        Case {
            what: "a bad token",
            method: Method::GET,
            path: policy.clone(),
            token: Some("not-a-configured-token"),
            body: Body::None,
            status: 401,
            says: Error("bearer token"),
        },
        Case {
            what: "no token",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("anon")),
            token: None,
            body: Json(start_body("x", json!({}))),
            status: 401,
            says: Error("bearer token"),
        },
        Case {
            what: "an override with zero attempts",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("zero")),
            token: Some(CREATOR),
            body: Json(start_body("x", json!({"enabled": true, "max_attempts": 0}))),
            status: 422,
            says: Fields(&["policy.max_attempts"]),
        },
        Case {
            what: "an override with 1000 attempts",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("many")),
            token: Some(CREATOR),
            body: Json(start_body(
                "x",
                json!({"enabled": true, "max_attempts": 1000}),
            )),
            status: 422,
            says: Fields(&["policy.max_attempts"]),
        },
        Case {
            what: "an override with a negative jitter range",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("neg")),
            token: Some(CREATOR),
            body: Json(start_body(
                "x",
                json!({"enabled": true, "vary": {"cfg_scale": {"range": -1}}}),
            )),
            status: 422,
            says: Fields(&["policy.vary.cfg_scale.range"]),
        },
        Case {
            what: "an override with an unknown field",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("unknown")),
            token: Some(CREATOR),
            body: Json(start_body("x", json!({"enabled": true, "retries": 3}))),
            status: 422,
            says: Fields(&["policy.retries"]),
        },
        Case {
            what: "an override with a 2^64 - 1 ms estimate",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("huge")),
            token: Some(CREATOR),
            body: Json(start_body(
                "x",
                json!({"enabled": true, "est_gpu_ms_per_attempt": u64::MAX}),
            )),
            status: 422,
            says: Fields(&["policy.est_gpu_ms_per_attempt"]),
        },
        Case {
            what: "a start body that is not an object",
            method: Method::POST,
            path: format!("/segments/{}/retries", seg("array")),
            token: Some(CREATOR),
            body: Json(json!([1, 2])),
            status: 422,
            says: Fields(&["body"]),
        },
        Case {
            what: "a numeric segment id naming another segment",
            method: Method::POST,
            path: "/segments/77/retries".into(),
            token: Some(CREATOR),
            body: Json({
                let mut b = start_body("x", json!({}));
                b["segment_id"] = json!(78);
                b
            }),
            status: 422,
            says: Fields(&["segment_id"]),
        },
        Case {
            what: "an unknown field in an abort",
            method: Method::POST,
            path: format!("/segments/{}/retries/abort", seg("abort")),
            token: Some(CREATOR),
            body: Json(json!({"reason": "x", "force": true})),
            status: 422,
            says: Fields(&["force"]),
        },
        Case {
            what: "an unknown decision",
            method: Method::POST,
            path: format!("/segments/{}/retries/decision", seg("decide")),
            token: Some(CREATOR),
            body: Json(json!({"decision": "maybe"})),
            status: 422,
            says: Fields(&["decision"]),
        },
        Case {
            what: "an abort of a segment never retried",
            method: Method::POST,
            path: format!("/segments/{}/retries/abort", seg("never")),
            token: Some(CREATOR),
            body: Body::None,
            status: 404,
            says: Error("has no retry"),
        },
        Case {
            what: "an unknown endpoint",
            method: Method::GET,
            path: "/segments".into(),
            token: Some(VIEWER),
            body: Body::None,
            status: 404,
            says: Error("no endpoint /segments"),
        },
        Case {
            what: "a wrong method",
            method: Method::DELETE,
            path: policy.clone(),
            token: Some(ADMIN),
            body: Body::None,
            status: 405,
            says: Error("does not take DELETE"),
        },
    ];

    let mut wrong = Vec::new();
    for c in &cases {
        let (status, headers, text) = send(&api, c).await;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let json_typed = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let says = match &c.says {
            Says::Fields(fields) => {
                let got: Vec<&str> = body["fields"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|f| f["field"].as_str()).collect())
                    .unwrap_or_default();
                body["error"] == "invalid input" && got == *fields
            }
            Says::Error(part) => body["error"].as_str().is_some_and(|e| e.contains(part)),
        };
        if status.as_u16() != c.status || !json_typed || !says {
            wrong.push(format!(
                "{}: {} {} → {status} {text} (want {})",
                c.what, c.method, c.path, c.status
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    for name in ["zero", "many", "neg", "unknown", "huge", "noct", "anon"] {
        let segment = SegmentId::parse(seg(name)).unwrap();
        assert_eq!(
            retake::retries::latest_run(&app.client, &segment)
                .await
                .unwrap(),
            None,
            "{name}: an invalid start must not start a workflow"
        );
    }
    assert_eq!(
        app.store.budget("p1").await.unwrap(),
        None,
        "no rejected limit was stored"
    );
}

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
    assert_eq!(result.segment_id, n.to_string());
}

#[tokio::test]
async fn twenty_concurrent_starts_make_one_run_one_202_and_nineteen_running() {
    // Attempts take 20 s: every start arrives while the first run is still running.
    let app = spawn_app_with(Simulator::new(20_000)).await;
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
                        || error.contains("a decision is already being applied")
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
