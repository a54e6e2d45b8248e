//! Logging: `RUST_LOG` filters (default [`DEFAULT_FILTER`]), output on stderr, plain text
//! (colours only on a terminal) or one JSON object per line with `RETAKE_LOG_FORMAT=json`.
//!
//! Every attempt logs a line when its generation starts and one when it is recorded, and every
//! retry one when its outcome is recorded (targets `retake_activities::attempt` and
//! `retake_activities::retry`), so all retry activity is in the logs at the default level.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is not set: warnings, and retake's own info lines.
pub const DEFAULT_FILTER: &str =
    "warn,retake=info,retake_activities=info,retake_workflows=info,retake_api=info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line, fields included (for log pipelines).
    Json,
}

impl Format {
    /// `RETAKE_LOG_FORMAT`: `json`, or `text` (the default). Anything else is an error naming
    /// the value, so a typo does not silently give the wrong format.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("RETAKE_LOG_FORMAT").as_deref() {
            Err(_) | Ok("") | Ok("text") => Ok(Format::Text),
            Ok("json") => Ok(Format::Json),
            Ok(other) => Err(format!(
                "RETAKE_LOG_FORMAT must be `text` or `json`, got {other:?}"
            )),
        }
    }
}

/// Install the global subscriber once; later calls do nothing. `default_filter` applies when
/// `RUST_LOG` is not set. A bad `RETAKE_LOG_FORMAT` is reported on stderr and text is used.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = Format::from_env().unwrap_or_else(|e| {
        eprintln!("warning: {e}; logging as text");
        Format::Text
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        Format::Json => builder.json().flatten_event(true).try_init(),
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}
