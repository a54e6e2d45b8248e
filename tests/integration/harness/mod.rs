//! Test harness: one Temporal dev server per test binary (random free ports, in memory), and per
//! test a fresh SQLite database, a fresh task queue, a worker on its own thread and a client.

mod app;
mod crash;
mod fake_http;
mod fake_jobs;
mod fake_llm;
mod postgres;
mod server;
mod sim;

pub use app::{
    TestApp, spawn_app, spawn_app_with, spawn_app_with_backends, spawn_app_with_store,
    spawn_bare_app, spawn_bare_app_on, spawn_bare_app_with_store,
};
pub use crash::{WorkerProcess, pending_activities, wait_for_activity};
pub use fake_jobs::{CANCELLED_GPU_MS, FAILED_GPU_MS, Failure, FakeJobs};
pub use fake_llm::FakeLlm;
pub use postgres::fresh_postgres;
pub use server::{OwnedServer, dev_server};
pub use sim::{comparable, find_segment, predict, predict_retry_with, request};
