//! Test harness: one Temporal dev server per test binary (random free ports, in memory), and per
//! test a fresh SQLite database, a fresh task queue, a worker on its own thread and a client.
//! The dev server and worker processes themselves are `retake-testkit`'s, shared with the bench.

mod app;
mod crash;
mod fake_comfyui;
mod fake_http;
mod fake_jobs;
mod fake_llm;
mod postgres;
mod proxy;
mod server;
mod sim;

pub use app::{StoreLock, TestApp, spawn_app};
pub use crash::{pending_activities, wait_for_activity};
pub use fake_comfyui::{FakeComfyUi, OOM_MS, RENDER_MS};
pub use fake_jobs::{CANCELLED_GPU_MS, FAILED_GPU_MS, Failure, FakeJobs};
pub use fake_llm::FakeLlm;
pub use postgres::fresh_postgres;
pub use proxy::TcpProxy;
pub use server::{dev_server, own_dev_server};
pub use sim::{comparable, find_segment, predict, predict_retry_with, request};
