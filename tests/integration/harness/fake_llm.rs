//! A scripted OpenAI-compatible server on a free port: chat completions for the generator and,
//! when a request asks for a JSON object, the judge's breakdown. It records every request.

use super::fake_http::Served;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The judge's scores (0-100) for the n-th judged chapter (the last repeats).
type Scores = Vec<[(&'static str, u32); 4]>;

#[derive(Default)]
struct Script {
    judge: Scores,
    requests: Vec<Value>,
    judged: usize,
    written: usize,
}

/// The server; stops when dropped.
pub struct FakeLlm {
    pub base_url: String,
    script: Arc<Mutex<Script>>,
    _served: Served,
}

impl FakeLlm {
    /// Serve completions; the judge answers with `judge[i]` for its i-th request.
    pub async fn start(judge: Scores) -> Self {
        let script = Arc::new(Mutex::new(Script {
            judge,
            ..Script::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(script.clone());
        let served = Served::start(app).await;
        let addr = served.addr;
        Self {
            base_url: format!("http://{addr}/v1"),
            script,
            _served: served,
        }
    }

    /// Requests that asked for text (the generator), in order.
    pub fn generation_requests(&self) -> Vec<Value> {
        self.requests(false)
    }

    /// Requests that asked for a JSON object (the judge), in order.
    pub fn judge_requests(&self) -> Vec<Value> {
        self.requests(true)
    }

    fn requests(&self, judge: bool) -> Vec<Value> {
        let s = self.script.lock().expect("lock");
        s.requests
            .iter()
            .filter(|r| is_judge(r) == judge)
            .cloned()
            .collect()
    }
}

fn is_judge(req: &Value) -> bool {
    req.pointer("/response_format/type") == Some(&json!("json_object"))
}

async fn complete(State(script): State<Arc<Mutex<Script>>>, Json(req): Json<Value>) -> Json<Value> {
    let mut s = script.lock().expect("lock");
    s.requests.push(req.clone());
    let content = if is_judge(&req) {
        let i = s.judged.min(s.judge.len().saturating_sub(1));
        s.judged += 1;
        let cats: Vec<Value> = s.judge[i]
            .iter()
            .map(|(c, score)| json!({"category": c, "score": score, "feedback": format!("{c} 피드백 {}", s.judged)}))
            .collect();
        json!({"categories": cats}).to_string()
    } else {
        s.written += 1;
        format!("12화 원고 (버전 {})\n\n이야기가 계속된다.", s.written)
    };
    Json(json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": req["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
    }))
}
