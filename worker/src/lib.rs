//! The retake command line and worker wiring. Binaries stay thin; everything here is callable
//! from tests.

pub mod cli;
pub mod commands;
pub mod connect;
pub mod retries;
pub mod sweep;
pub mod telemetry;
pub mod worker;

/// Default store: a SQLite file under `.retake/` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.retake/retake.db";
