//! What the integration tests and `retake-bench` both start, written once: a Temporal dev server
//! on free local ports ([`DevServer`]), `retake worker` child processes ([`WorkerProcess`]), and what
//! a workflow history says the adaptive attempts chose from ([`load_evidence_answers`]).
//!
//! Dev-only (`publish = false`). It does not depend on the `retake` package, which has it as a
//! dev-dependency: callers pass the worker binary's path (`env!("CARGO_BIN_EXE_retake")` in the
//! tests, `--retake` in the bench). What only one side needs stays there: `TestApp` and the fake
//! backends in `tests/integration/harness/`, the Python peer and `/proc` measurements in
//! `bench/src/harness.rs`.

mod history;
mod ports;
mod server;
mod worker;

pub use history::load_evidence_answers;
pub use ports::free_ports;
pub use server::{DevServer, DevServerBuilder, temporal_bin};
pub use worker::{WorkerProcess, WorkerProcessBuilder};

use std::path::PathBuf;

/// Why a server or worker process could not be started or asked something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No temporal CLI where [`temporal_bin`] (or an explicit path) says it is.
    #[error(
        "the temporal CLI is not at {}: scripts/test installs it there (or set RETAKE_TEMPORAL_BIN; retake-bench also takes --temporal)",
        .0.display()
    )]
    TemporalMissing(PathBuf),
    /// Starting a process, or the I/O around it (a log file, a pipe, a port), failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The dev server did not pass `temporal operator cluster health` in time.
    #[error("the temporal dev server on {address} did not become healthy within 90 s")]
    Unhealthy {
        /// Its frontend address.
        address: String,
    },
    /// The dev server exited while starting, on every try (each on fresh ports): another
    /// process took one of its ports, or it could not start at all.
    #[error(
        "the temporal dev server on {address} exited while starting ({status}; {tries} tries); its stderr ended with:\n{stderr}"
    )]
    Exited {
        /// The frontend address of the last try.
        address: String,
        /// How it exited.
        status: String,
        /// Tries made.
        tries: u32,
        /// Its last stderr lines.
        stderr: String,
    },
    /// A temporal CLI command against the server exited with an error.
    #[error("temporal {args}: {stderr}")]
    Cli {
        /// The command's arguments, space-separated.
        args: String,
        /// What it said on stderr.
        stderr: String,
    },
    /// A temporal CLI command printed something other than the JSON expected.
    #[error("temporal {args} printed unexpected output")]
    Output {
        /// The command's arguments, space-separated.
        args: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

/// The repository root: tools (`.tools/`) and test artifacts (`target/`) are found from here,
/// whichever crate's test or binary runs.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
