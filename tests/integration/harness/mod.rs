//! Test harness: one Temporal dev server per test binary (random free ports, in memory), and per
//! test a fresh SQLite database, a fresh task queue, a worker on its own thread and a client.

mod app;
mod server;
mod sim;

pub use app::{TestApp, spawn_app, spawn_app_with};
pub use server::dev_server;
pub use sim::{find_segment, predict, request};
