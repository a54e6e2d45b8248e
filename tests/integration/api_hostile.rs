//! The HTTP API under hostile input: one table of malformed, oversized, mistyped and unauthorised
//! requests with the status and error body each must get.

use crate::api::{ADMIN, Api, CREATOR, VIEWER, api_for, start_body};
use crate::harness::spawn_app;
use reqwest::{Method, StatusCode};
use retake_domain::SegmentId;
use serde_json::{Value, json};

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
            what: "a reason sent twice",
            method: Method::POST,
            path: format!("/segments/{}/retries/abort", seg("twice")),
            token: Some(CREATOR),
            body: Raw(
                Some("application/json"),
                r#"{"reason": "a", "reason": "b"}"#.into(),
            ),
            status: 422,
            says: Fields(&["reason"]),
        },
        Case {
            what: "a limit sent twice",
            method: Method::PUT,
            path: budget.clone(),
            token: Some(ADMIN),
            body: Raw(
                Some("application/json"),
                r#"{"limit_ms": 5, "limit_ms": 6}"#.into(),
            ),
            status: 422,
            says: Fields(&["limit_ms"]),
        },
        Case {
            what: "a nested policy key sent twice",
            method: Method::PUT,
            path: policy.clone(),
            token: Some(ADMIN),
            body: Raw(
                Some("application/json"),
                r#"{"enabled": true, "vary": {"cfg_scale": {"range": 1, "range": 2}}}"#.into(),
            ),
            status: 422,
            says: Fields(&["vary.cfg_scale.range"]),
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

/// Send `head` (a request's head and the first bytes of its body) over raw TCP and return the
/// status line, which must come within 5 s.
async fn status_of_raw(base: &str, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("answered at once, not after a timeout");
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_body_declared_over_the_limit_gets_413_at_once_from_the_api_and_the_console() {
    let app = spawn_app().await;
    let api = api_for(&app).await;
    let huge = "Content-Length: 1000000000000\r\n\r\n{}";
    let put = format!(
        "PUT /projects/p1/budget HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\n{huge}"
    );
    assert_eq!(
        status_of_raw(&api.base, &put).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    let sign_in = format!(
        "POST /ui/sign-in HTTP/1.1\r\nHost: t\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{huge}"
    );
    assert_eq!(
        status_of_raw(&api.base, &sign_in).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    let anonymous = format!(
        "PUT /projects/p1/budget HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{huge}"
    );
    assert_eq!(
        status_of_raw(&api.base, &anonymous).await,
        "HTTP/1.1 401 Unauthorized",
        "the role is still checked first"
    );
}
