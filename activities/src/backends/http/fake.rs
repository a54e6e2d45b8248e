//! A scripted fake server that records what it is sent, and a counting [`Progress`], for the
//! HTTP and ComfyUI tests.

use crate::ports::{BackendError, Progress};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// One scripted answer.
#[derive(Debug, Clone)]
pub(in crate::backends) struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    pub(in crate::backends) fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: body.to_string(),
        }
    }

    pub(in crate::backends) fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.to_owned(),
        }
    }
}

/// One request the fake server got.
#[derive(Debug, Clone)]
pub(in crate::backends) struct Seen {
    pub(in crate::backends) method: Method,
    pub(in crate::backends) path: String,
    pub(in crate::backends) query: Option<String>,
    pub(in crate::backends) headers: HeaderMap,
    pub(in crate::backends) body: Value,
}

/// Answers by `"METHOD /path"`: the scripted replies in order, the last one repeated; 404 for
/// anything unscripted.
#[derive(Debug, Default)]
pub(in crate::backends) struct Fake {
    script: Mutex<BTreeMap<String, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
}

impl Fake {
    pub(in crate::backends) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests to `"METHOD /path"`.
    pub(in crate::backends) fn to(&self, route: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| format!("{} {}", s.method, s.path) == route)
            .collect()
    }
}

async fn answer(
    State(fake): State<Arc<Fake>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let route = format!("{method} {}", uri.path());
    fake.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    });
    let reply = {
        let mut script = fake.script.lock().unwrap();
        match script.get_mut(&route) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    let reply = reply.unwrap_or_else(|| Reply::text(404, "not scripted"));
    let status = StatusCode::from_u16(reply.status).unwrap();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response()
}

/// Start a fake server answering by `script` (`("POST /generate", [replies…])`); its base URL
/// and its record.
pub(in crate::backends) async fn serve(
    script: impl IntoIterator<Item = (&str, Vec<Reply>)>,
) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    {
        let mut s = fake.script.lock().unwrap();
        for (route, replies) in script {
            s.insert(route.to_owned(), replies.into());
        }
    }
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

/// Counts heartbeats; answers `Cancelled` from the `cancel_at`-th one on.
#[derive(Debug, Default)]
pub(in crate::backends) struct Beats {
    count: AtomicU32,
    cancel_at: Option<u32>,
}

impl Beats {
    pub(in crate::backends) fn cancelling_at(n: u32) -> Self {
        Self {
            cancel_at: Some(n),
            ..Self::default()
        }
    }

    pub(in crate::backends) fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Progress for Beats {
    async fn checkpoint(&self, _done: u32, _total: u32) -> Result<(), BackendError> {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        match self.cancel_at {
            Some(at) if n >= at => Err(BackendError::Cancelled),
            _ => Ok(()),
        }
    }

    fn resume_from(&self) -> u32 {
        0
    }
}
