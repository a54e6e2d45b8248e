//! A fake OpenAI-compatible server that records what it was sent, and test helpers.

mod generate;
mod judge;

use crate::backends::http::fake::Beats;
use crate::io::AttemptKey;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake server answers to every request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    delay: Duration,
}

impl Reply {
    /// A 200 completion whose message content is `content`.
    fn content(content: &str) -> Self {
        Self::json(
            200,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "fake",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
            }),
        )
    }

    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request the fake server got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Debug)]
struct Fake {
    reply: Reply,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The only request received.
    fn one(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen.into_iter().next().unwrap()
    }
}

async fn chat(
    State(fake): State<Arc<Fake>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    fake.seen.lock().unwrap().push(Seen {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    });
    if !fake.reply.delay.is_zero() {
        tokio::time::sleep(fake.reply.delay).await;
    }
    let status = StatusCode::from_u16(fake.reply.status).unwrap();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        fake.reply.body.clone(),
    )
        .into_response()
}

/// Start a fake server answering `reply`; its base URL (with `/v1`) and its record.
async fn serve(reply: Reply) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        reply,
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), fake)
}

fn key() -> AttemptKey {
    AttemptKey {
        workflow_id: "segment-retry-ch-12".into(),
        run_id: "run-1".into(),
        attempt: 2,
    }
}

/// The text of a message of a recorded request, by role.
fn message(seen: &Seen, role: &str) -> String {
    seen.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == role)
        .unwrap_or_else(|| panic!("no {role} message in {}", seen.body))["content"]
        .as_str()
        .unwrap()
        .to_owned()
}
