//! `retake worker` child processes: what a deployment runs, so that tests and benchmarks can kill
//! it with SIGKILL and measure it from `/proc`, which an in-process worker would not allow.

use crate::Error;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// A running `retake worker`, killed (SIGKILL) when dropped, so a failing test or benchmark
/// leaves no worker polling behind it.
#[derive(Debug)]
pub struct WorkerProcess {
    child: Child,
}

/// How to start a [`WorkerProcess`]; see [`WorkerProcess::builder`] for what is fixed.
#[derive(Debug)]
#[must_use]
pub struct WorkerProcessBuilder {
    command: Command,
}

impl WorkerProcess {
    /// `<bin> worker` on `address` and `task_queue`, storing in `database_url`
    /// (`RETAKE_DATABASE_URL`). `bin` is the `retake` binary (`env!("CARGO_BIN_EXE_retake")` in
    /// the integration tests, the bench's `--retake`).
    ///
    /// Fixed: stdout discarded, and `TEMPORAL_ADDRESS` removed from its environment so the
    /// caller's shell cannot point it at another server. Defaults: `RUST_LOG=error` (the
    /// worker's info lines would bury the caller's output), stderr inherited.
    pub fn builder(
        bin: impl AsRef<Path>,
        address: &str,
        task_queue: &str,
        database_url: &str,
    ) -> WorkerProcessBuilder {
        let mut command = Command::new(bin.as_ref());
        command
            .args(["worker", "--temporal-address", address])
            .args(["--task-queue", task_queue])
            .env("RETAKE_DATABASE_URL", database_url)
            .env("RUST_LOG", "error")
            .env_remove("TEMPORAL_ADDRESS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        WorkerProcessBuilder { command }
    }

    /// Its pid (the worker's identity starts with `<pid>@`); `None` once it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its exit status once it has exited (reaping it), `None` while it runs: a worker must
    /// not exit on its own.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>, Error> {
        self.child
            .try_wait()
            .map_err(Error::io("asking whether a retake worker process exited"))
    }

    /// SIGKILL, as a crashed machine would stop it, and reap it.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }
}

impl WorkerProcessBuilder {
    /// Simulated GPU time per attempt (`RETAKE_SIM_GPU_MS`). Default: not set (the worker's own
    /// default, 300 ms, unless the caller's environment sets it).
    pub fn sim_gpu_ms(mut self, ms: u64) -> Self {
        self.command.env("RETAKE_SIM_GPU_MS", ms.to_string());
        self
    }

    /// Simulated QA scoring time (`RETAKE_SIM_QA_MS`), e.g. to kill a worker mid-QA. Default:
    /// not set (the worker's own default, 0, unless the caller's environment sets it).
    pub fn sim_qa_ms(mut self, ms: u64) -> Self {
        self.command.env("RETAKE_SIM_QA_MS", ms.to_string());
        self
    }

    /// Generations it runs at once (`RETAKE_MAX_CONCURRENT_GENERATIONS`): 1 acts as one GPU.
    /// Default: not set (no limit beyond the SDK's 100 task slots).
    pub fn max_concurrent_generations(mut self, n: u32) -> Self {
        self.command
            .env("RETAKE_MAX_CONCURRENT_GENERATIONS", n.to_string());
        self
    }

    /// Its worker id (`RETAKE_WORKER_ID`). Default: not set (`<pid>@<host>`).
    pub fn worker_id(mut self, id: &str) -> Self {
        self.command.env("RETAKE_WORKER_ID", id);
        self
    }

    /// A broken simulated GPU: every generation fails with this infrastructure error
    /// (`RETAKE_SIM_INFRASTRUCTURE_FAILURE`). Default: not set (healthy).
    pub fn sim_infrastructure_failure(mut self, message: &str) -> Self {
        self.command
            .env("RETAKE_SIM_INFRASTRUCTURE_FAILURE", message);
        self
    }

    /// Set an environment variable of the worker (e.g. `RETAKE_LOG_FORMAT`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.command.env(key, value);
        self
    }

    /// Remove an environment variable, e.g. `RUST_LOG` for the worker's default log filter.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.command.env_remove(key);
        self
    }

    /// Where its log (stderr) goes, e.g. a file to read back. Default: inherited.
    pub fn stderr(mut self, to: impl Into<Stdio>) -> Self {
        self.command.stderr(to);
        self
    }

    /// Start it. It connects and polls on its own; nothing waits for it to be ready. Needs a
    /// tokio runtime (tokio reaps the child).
    pub fn spawn(mut self) -> Result<WorkerProcess, Error> {
        let child = self
            .command
            .spawn()
            .map_err(Error::io("starting a retake worker process"))?;
        Ok(WorkerProcess { child })
    }
}
