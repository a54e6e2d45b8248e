//! A generation service speaking retake's HTTP JSON contract on a free port: every `POST
//! /generate` starts a job (the same job for a repeated idempotency key) that finishes after
//! `polls_to_finish` polls, or never when `None`; `POST /score` passes everything. It records the
//! calls it got. As a render farm ([`FakeJobs::render_farm`]) its outputs are SVG images it
//! serves itself, and every one of them fails QA (a melted face), as the console needs to show.

use super::fake_http::Served;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// How the fake misbehaves, to test what retake records when a backend fails.
#[derive(Debug, Clone, Default)]
pub enum Failure {
    #[default]
    None,
    /// Every job fails for good with this error, reporting [`FAILED_GPU_MS`] of GPU time.
    Generation(String),
    /// The scorer answers a face score of 1.7 (out of range).
    ScoreOutOfRange,
    /// A `DELETE` answers only after this long, as a backend finishing the step in progress
    /// before it stops (longer than the 3 s heartbeat timeout).
    SlowCancel(std::time::Duration),
}

#[derive(Default)]
struct Jobs {
    polls_to_finish: Option<u32>,
    failure: Failure,
    /// Outputs are images served at `{farm}/renders/<job>.svg`, scored as failing.
    farm: Option<String>,
    by_key: BTreeMap<String, String>,
    polls: BTreeMap<String, u32>,
    calls: Vec<String>,
}

/// The service; stops when dropped.
pub struct FakeJobs {
    pub base_url: String,
    jobs: Arc<Mutex<Jobs>>,
    _served: Served,
}

impl FakeJobs {
    pub async fn start(polls_to_finish: Option<u32>) -> Self {
        Self::failing(polls_to_finish, Failure::None).await
    }

    /// A service that fails as `failure` says.
    pub async fn failing(polls_to_finish: Option<u32>, failure: Failure) -> Self {
        let jobs = Arc::new(Mutex::new(Jobs {
            polls_to_finish,
            failure,
            ..Jobs::default()
        }));
        let app = Router::new()
            .route("/generate", post(generate))
            .route("/jobs/{id}", get(poll).delete(cancel))
            .route("/score", post(score))
            .route("/renders/{file}", get(render))
            .with_state(jobs.clone());
        let served = Served::start(app).await;
        let addr = served.addr;
        Self {
            base_url: format!("http://{addr}"),
            jobs,
            _served: served,
        }
    }

    /// A farm whose jobs finish after `polls_to_finish` polls with an SVG image it serves, and
    /// whose scorer fails every one (face 0.31, "the face melts").
    pub async fn render_farm(polls_to_finish: u32) -> Self {
        let fake = Self::start(Some(polls_to_finish)).await;
        fake.jobs.lock().expect("lock").farm = Some(fake.base_url.clone());
        fake
    }

    /// Calls so far, as `POST /generate <key>`, `GET /jobs/<id>`, `DELETE /jobs/<id>`, `POST /score`.
    pub fn calls(&self) -> Vec<String> {
        self.jobs.lock().expect("lock").calls.clone()
    }
}

async fn generate(State(jobs): State<Arc<Mutex<Jobs>>>, Json(req): Json<Value>) -> Json<Value> {
    let mut j = jobs.lock().expect("lock");
    let key = req["idempotency_key"].as_str().unwrap_or("").to_owned();
    j.calls.push(format!("POST /generate {key}"));
    let n = j.by_key.len();
    let id = j
        .by_key
        .entry(key)
        .or_insert_with(|| format!("job-{n}"))
        .clone();
    Json(json!({"status": "pending", "job_id": id}))
}

async fn poll(State(jobs): State<Arc<Mutex<Jobs>>>, Path(id): Path<String>) -> Json<Value> {
    let mut j = jobs.lock().expect("lock");
    j.calls.push(format!("GET /jobs/{id}"));
    let polls = {
        let p = j.polls.entry(id.clone()).or_default();
        *p += 1;
        *p
    };
    if let Failure::Generation(error) = &j.failure {
        return Json(json!({"status": "failed", "error": error, "gpu_ms": FAILED_GPU_MS}));
    }
    let output_uri = match &j.farm {
        Some(base) => format!("{base}/renders/{id}.svg"),
        None => format!("s3://renders/{id}.mp4"),
    };
    match j.polls_to_finish {
        Some(n) if polls >= n => Json(json!({
            "status": "done", "output_uri": output_uri, "gpu_ms": 4321
        })),
        _ => Json(json!({"status": "running"})),
    }
}

async fn cancel(State(jobs): State<Arc<Mutex<Jobs>>>, Path(id): Path<String>) -> Json<Value> {
    let delay = {
        let mut j = jobs.lock().expect("lock");
        j.calls.push(format!("DELETE /jobs/{id}"));
        match j.failure {
            Failure::SlowCancel(d) => Some(d),
            _ => None,
        }
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    // What a conforming service reports: the GPU time the job used before it stopped.
    Json(json!({"status": "cancelled", "gpu_ms": CANCELLED_GPU_MS}))
}

/// GPU time the fake reports for a cancelled job.
pub const CANCELLED_GPU_MS: u64 = 1234;
/// GPU time the fake reports for a failed job.
pub const FAILED_GPU_MS: u64 = 777;

async fn score(State(jobs): State<Arc<Mutex<Jobs>>>, Json(_req): Json<Value>) -> Json<Value> {
    let mut j = jobs.lock().expect("lock");
    j.calls.push("POST /score".to_owned());
    if matches!(j.failure, Failure::ScoreOutOfRange) {
        return Json(json!({"scores": {"face": 1.7}}));
    }
    if j.farm.is_some() {
        return Json(json!({"scores": {"face": 31, "motion": 80}, "scale": 100,
            "breakdown": [{"category": "face", "score": 31, "feedback": "the face melts"}]}));
    }
    Json(json!({"scores": {"face": 92, "motion": 81}, "scale": 100,
                "breakdown": [{"category": "artifacting", "score": 88, "feedback": "clean"}]}))
}

/// A job's output image: a small SVG whose colour follows the job's number.
async fn render(Path(file): Path<String>) -> impl axum::response::IntoResponse {
    let n: u32 = file
        .trim_start_matches("job-")
        .trim_end_matches(".svg")
        .parse()
        .unwrap_or(0);
    let hue = (n * 67) % 360;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"320\" height=\"180\">\
         <rect width=\"320\" height=\"180\" fill=\"hsl({hue},60%,55%)\"/>\
         <text x=\"20\" y=\"100\" font-size=\"40\">{file}</text></svg>"
    );
    ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], svg)
}
