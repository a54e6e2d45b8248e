//! A fake ComfyUI: `POST /prompt` queues, `GET /history[/{id}]` answers at once with the prompt
//! finished. As [`FakeComfyUi::start`]s it, the first prompt fails with CUDA out of memory after
//! [`OOM_MS`] of execution (the machine's failure, as a real ComfyUI reports a
//! `torch.OutOfMemoryError`); every later one (every one, [`FakeComfyUi::rendering`]) succeeds
//! after [`RENDER_MS`]. Execution times are ComfyUI's own message timestamps, which the adapter
//! bills. It keeps the graphs it was sent ([`FakeComfyUi::graphs`]).

use super::fake_http::Served;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// Execution time of the prompt that runs out of memory.
pub const OOM_MS: u64 = 4_232;
/// Execution time of a prompt that renders.
pub const RENDER_MS: u64 = 10_131;

#[derive(Default)]
struct Prompts {
    /// (prompt id, client id) in the order queued.
    queued: Vec<(String, String)>,
    /// The graph (`prompt`) of each prompt queued, in order.
    graphs: Vec<Value>,
    /// The first prompt runs out of memory.
    oom_first: bool,
}

pub struct FakeComfyUi {
    pub base_url: String,
    prompts: Arc<Mutex<Prompts>>,
    _served: Served,
}

impl FakeComfyUi {
    /// The first prompt runs out of memory, every later one renders.
    pub async fn start() -> Self {
        Self::serve(true).await
    }

    /// Every prompt renders.
    pub async fn rendering() -> Self {
        Self::serve(false).await
    }

    async fn serve(oom_first: bool) -> Self {
        let prompts = Arc::new(Mutex::new(Prompts {
            oom_first,
            ..Prompts::default()
        }));
        let app = Router::new()
            .route("/prompt", post(queue))
            .route("/queue", get(empty_queue).post(ok))
            .route("/interrupt", post(ok))
            .route("/history", get(all))
            .route("/history/{id}", get(one))
            .with_state(prompts.clone());
        let served = Served::start(app).await;
        Self {
            base_url: format!("http://{}", served.addr),
            prompts,
            _served: served,
        }
    }

    /// The client ids of the prompts queued, in order.
    pub fn client_ids(&self) -> Vec<String> {
        let p = self.prompts.lock().unwrap();
        p.queued.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The graphs it was sent, in the order queued: what it would have run with.
    pub fn graphs(&self) -> Vec<Value> {
        self.prompts.lock().unwrap().graphs.clone()
    }
}

type Shared = State<Arc<Mutex<Prompts>>>;

async fn queue(State(p): Shared, Json(body): Json<Value>) -> Json<Value> {
    let mut p = p.lock().unwrap();
    let id = format!("p-{}", p.queued.len() + 1);
    let client = body["client_id"].as_str().unwrap_or_default().to_owned();
    p.queued.push((id.clone(), client));
    p.graphs.push(body["prompt"].clone());
    Json(json!({"prompt_id": id, "number": p.queued.len(), "node_errors": {}}))
}

async fn empty_queue() -> Json<Value> {
    Json(json!({"queue_running": [], "queue_pending": []}))
}

async fn ok() -> Json<Value> {
    Json(json!({}))
}

async fn all(State(p): Shared) -> Json<Value> {
    let p = p.lock().unwrap();
    let entries: serde_json::Map<String, Value> = p
        .queued
        .iter()
        .enumerate()
        .map(|(i, (id, client))| (id.clone(), entry(i, id, client, p.oom_first)))
        .collect();
    Json(Value::Object(entries))
}

async fn one(State(p): Shared, Path(id): Path<String>) -> Json<Value> {
    let p = p.lock().unwrap();
    Json(match p.queued.iter().position(|(q, _)| *q == id) {
        Some(i) => json!({ id.clone(): entry(i, &id, &p.queued[i].1, p.oom_first) }),
        None => json!({}),
    })
}

/// The history entry of the `i`-th prompt queued.
fn entry(i: usize, id: &str, client: &str, oom_first: bool) -> Value {
    let start = 1_700_000_000_000_u64 + 100_000 * i as u64;
    let prompt = json!([i + 1, id, {}, {"client_id": client}, ["3"]]);
    if i == 0 && oom_first {
        json!({"prompt": prompt, "outputs": {}, "status": {
            "status_str": "error", "completed": false, "messages": [
                ["execution_start", {"prompt_id": id, "timestamp": start}],
                ["execution_error", {"prompt_id": id, "node_id": "2", "node_type": "ImageAddNoise",
                    "exception_type": "torch.OutOfMemoryError",
                    "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                    "traceback": [], "timestamp": start + OOM_MS}]]}})
    } else {
        json!({"prompt": prompt, "status": {
            "status_str": "success", "completed": true, "messages": [
                ["execution_start", {"prompt_id": id, "timestamp": start}],
                ["execution_success", {"prompt_id": id, "timestamp": start + RENDER_MS}]]},
            "outputs": {"3": {"images": [
                {"filename": format!("retake_{i:05}_.png"), "subfolder": "", "type": "output"}]}}})
    }
}
