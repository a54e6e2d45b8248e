//! The retake command line and worker wiring. Binaries stay thin; everything here is callable
//! from tests.

pub mod cli;
pub mod commands;
pub mod connect;
/// Starting and steering retries (re-exported from `retake-client`).
pub use retake_client as retries;
pub mod sweep;
pub mod telemetry;
pub mod worker;

/// Default store: a SQLite file under `.retake/` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.retake/retake.db";
