//! Command-line interface (clap). Each subcommand is a function in `commands`.

use crate::commands;
use crate::retries::Creator;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "retake",
    version,
    about = "Durable, transparent, budget-bounded retries for generative pipelines"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Store URL (`sqlite://path` or a file path).
    #[arg(long, global = true, env = "RETAKE_DATABASE_URL", default_value = crate::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Task queue of the retry workflow.
    #[arg(long, global = true, env = "RETAKE_TASK_QUEUE", default_value = retake_domain::DEFAULT_TASK_QUEUE)]
    pub task_queue: String,
    /// Temporal frontend address (host:port); default from TEMPORAL_ADDRESS / the client config,
    /// else localhost:7233.
    #[arg(long, global = true)]
    pub temporal_address: Option<String>,
    /// Compression of the gRPC messages to and from Temporal.
    #[arg(long, global = true, env = "RETAKE_GRPC_COMPRESSION", value_enum,
          default_value_t = crate::connect::Compression::default())]
    pub grpc_compression: crate::connect::Compression,
    /// A folder whose files retake may read (text outputs, drafts to revise); repeat it, or give
    /// a comma-separated list in the variable. No other local file is ever opened, and the API
    /// refuses a `file://` `params.output_uri` outside them. Default: `.retake/artifacts`; a
    /// worker always adds its backends' `artifacts_dir`.
    #[arg(
        long = "file-root",
        global = true,
        env = "RETAKE_FILE_ROOTS",
        value_delimiter = ','
    )]
    pub file_roots: Vec<PathBuf>,
    /// A URL prefix (`http(s)://host[:port][/path]`) under which retake may GET a draft to
    /// revise or a chapter to judge; repeat it, or give a comma-separated list in the variable.
    /// Scheme, host and port must match exactly and the path by whole segments. No other
    /// `http(s)` URL is requested for a text, and the API refuses an `http(s)`
    /// `params.output_uri` outside them. Default: none; a worker always adds its backends'
    /// `base_url`s.
    #[arg(
        long = "url-root",
        global = true,
        env = "RETAKE_URL_ROOTS",
        value_delimiter = ','
    )]
    pub url_roots: Vec<retake_activities::urls::UrlRoot>,
}

impl Global {
    /// The folders this process may read files from ([`Global::file_roots`], or the default).
    pub fn files(&self) -> retake_activities::files::FileRoots {
        if self.file_roots.is_empty() {
            retake_activities::files::FileRoots::default()
        } else {
            retake_activities::files::FileRoots::new(self.file_roots.iter().cloned())
        }
    }

    /// The URL prefixes this process may GET texts under ([`Global::url_roots`]; none by
    /// default).
    pub fn urls(&self) -> retake_activities::urls::UrlRoots {
        retake_activities::urls::UrlRoots::new(self.url_roots.iter().cloned())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker until Ctrl-C / SIGTERM: the simulator, or the backends of `--backends`.
    Worker(WorkerArgs),
    /// Start a retry for one failed segment, wait for it and print the report.
    Retry(commands::retry::RetryArgs),
    /// Every recorded attempt of a segment.
    History(commands::history::HistoryArgs),
    /// Which variations fixed which failures: a scene type's recorded attempts, counted.
    Insights(commands::insights::InsightsArgs),
    /// Retry policies per scene type.
    #[command(subcommand)]
    Policy(commands::policy::PolicyCommand),
    /// GPU budgets per project.
    #[command(subcommand)]
    Budget(commands::budget::BudgetCommand),
    /// Run a batch of failed segments through the simulator and print every report.
    Demo(commands::demo::DemoArgs),
    /// Abort a running retry: cancel the attempt in flight, keep the finished ones.
    Abort(commands::control::SignalArgs),
    /// Stop retrying and send the segment to human review.
    Escalate(commands::control::SignalArgs),
    /// Decide an escalated segment: --accept K, --reject, or --retry-with new params.
    Decide(commands::control::DecideArgs),
    /// Live status of a segment's retry: attempts so far, phase, report.
    Status(commands::control::StatusArgs),
    /// Open retries of the task queue, counted by behaviour version (`runs versions`).
    #[command(subcommand)]
    Runs(commands::runs::RunsCommand),
    /// Release GPU reservations of workflows that ended without settling them (terminated, timed
    /// out). `retake worker` does this every 5 minutes.
    Sweep(SweepArgs),
    /// Serve the HTTP API (bearer tokens from RETAKE_API_TOKENS) until Ctrl-C / SIGTERM.
    Api(ApiArgs),
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to listen on.
    #[arg(long, env = "RETAKE_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Take the person's name recorded with decisions, signals and policy changes from this
    /// request header, as an authenticating proxy sends it (oauth2-proxy: `X-Forwarded-User`);
    /// the token still decides the role. Only when nothing but the proxy reaches the API.
    #[arg(long, env = "RETAKE_API_USER_HEADER")]
    pub user_header: Option<String>,
    /// Base URL of the Temporal web UI, which the review console (`/ui`) links workflows to.
    #[arg(long, env = "RETAKE_TEMPORAL_UI_URL", default_value = retake_api::console::DEFAULT_TEMPORAL_UI)]
    pub temporal_ui: String,
    /// Seconds a client may take to send a request's headers; the connection is closed then, so
    /// this is also how long an idle kept-alive connection stays open.
    #[arg(long, env = "RETAKE_API_HEADER_TIMEOUT_SECS",
          default_value_t = retake_api::ServeOptions::default().header_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request's body after its headers; 408 then.
    #[arg(long, env = "RETAKE_API_BODY_TIMEOUT_SECS",
          default_value_t = retake_api::ServeOptions::default().body_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_secs: u64,
    /// Connections served at once; a further one waits, unanswered, until one closes. Keep it
    /// below the process's open-file limit (`ulimit -n`), which the database and Temporal share.
    #[arg(long, env = "RETAKE_API_MAX_CONNECTIONS",
          default_value_t = retake_api::DEFAULT_MAX_CONNECTIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl ApiArgs {
    /// How `retake api` treats clients, from the flags.
    pub fn serve_options(&self) -> retake_api::ServeOptions {
        retake_api::ServeOptions {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
            body_timeout: std::time::Duration::from_secs(self.body_timeout_secs),
            max_connections: self.max_connections as usize,
        }
    }
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Only reservations held at least this long (seconds).
    #[arg(long, default_value_t = crate::sweep::DEFAULT_MIN_AGE.as_secs())]
    pub older_than_secs: u64,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Simulated GPU time per attempt in milliseconds.
    #[arg(long, env = "RETAKE_SIM_GPU_MS", default_value_t = retake_activities::sim::DEFAULT_GPU_MS)]
    pub sim_gpu_ms: u64,
    /// Simulated QA scoring time per attempt in milliseconds.
    #[arg(long, env = "RETAKE_SIM_QA_MS", default_value_t = 0)]
    pub sim_qa_ms: u64,
    /// Backends configuration (JSON): the generator and scorer of each scene type (HTTP,
    /// OpenAI-compatible, ComfyUI, simulator). Without it every scene type uses the simulator.
    #[arg(long, env = "RETAKE_BACKENDS")]
    pub backends: Option<std::path::PathBuf>,
    /// Workflows kept in memory; beyond it the least recently used (e.g. retries parked in
    /// review) are evicted and replayed from their history when next needed.
    #[arg(long, env = "RETAKE_MAX_CACHED_WORKFLOWS", default_value_t = crate::worker::DEFAULT_MAX_CACHED_WORKFLOWS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_cached_workflows: u32,
    /// Generations this worker runs at once: the GPUs behind it (1 for one GPU), so that
    /// parallel attempts spread over the workers instead of queueing on one GPU. Default: no
    /// limit beyond the SDK's 100 task slots.
    #[arg(long, env = "RETAKE_MAX_CONCURRENT_GENERATIONS",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_generations: Option<u32>,
    /// This worker's name: recorded on every attempt it generates, and what placement routes
    /// re-runs by (1 to 200 characters, no whitespace or `/`). Default: `<pid>@<host>`, as the
    /// web UI shows workers.
    #[arg(long, env = "RETAKE_WORKER_ID", value_parser = parse_worker_id)]
    pub worker_id: Option<String>,
    /// Infrastructure failures in a row (CUDA out of memory, a lost device) after which the
    /// worker takes no generations from the shared queue for `--cool-down-secs`. 0: never.
    #[arg(long, env = "RETAKE_COOL_DOWN_AFTER", default_value_t = crate::worker::DEFAULT_COOL_DOWN_AFTER)]
    pub cool_down_after: u32,
    /// How long a cool-down lasts, in seconds.
    #[arg(long, env = "RETAKE_COOL_DOWN_SECS", default_value_t = crate::worker::DEFAULT_COOL_DOWN.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub cool_down_secs: u64,
    /// Seconds between giving memory the worker freed back to the system (glibc keeps freed
    /// pages resident otherwise; see `worker/src/memory.rs`). 0: never.
    #[arg(long, env = "RETAKE_RELEASE_MEMORY_EVERY_SECS", default_value_t = crate::memory::DEFAULT_RELEASE_EVERY.as_secs(),
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub release_memory_every_secs: u64,
    /// Simulator: every generation fails after its first step with this infrastructure error
    /// (e.g. "CUDA out of memory"), as a broken GPU would; for trying placement.
    #[arg(long, env = "RETAKE_SIM_INFRASTRUCTURE_FAILURE")]
    pub sim_infrastructure_failure: Option<String>,
}

/// A worker id: it names a task queue, so no whitespace, no `/`, at most 200 characters.
fn parse_worker_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().count() > 200 {
        return Err("must be 1 to 200 characters".to_owned());
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err("must not contain whitespace, control characters or '/'".to_owned());
    }
    Ok(s.to_owned())
}

/// Options of a JSON-capable read command.
#[derive(Debug, Clone, Copy, Args)]
pub struct Output {
    /// Print JSON for machines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Read a file argument, or `-` for standard input.
pub(crate) fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

impl Command {
    /// The log filter when `RUST_LOG` is not set: `retake demo` prints a report line per segment
    /// on stdout, and its in-process worker's line per attempt would bury them (the attempts are
    /// in `retake history`), so it logs warnings only; everything else logs retake's info lines.
    pub fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Demo(_) => "warn",
            _ => crate::telemetry::DEFAULT_FILTER,
        }
    }

    /// The async runtime the command runs on. `retake worker` runs on one thread: everything it
    /// does between polls is short (its activities wait on backends over HTTP, on the store and
    /// on Temporal; the GPU work is elsewhere), and on one thread a task woken by a reply runs
    /// where the reply arrived instead of being handed to another thread. In `throughput` runs
    /// (30 s each, four pairs interleaved) it used about 17 % less CPU per retry than on
    /// Tokio's multi-threaded runtime (14.6 against 17.6 CPU s per 1,000 retries, medians) and
    /// finished more retries per second; with 20 attempts finishing at once, each waited about
    /// 18 ms longer for the one thread (`overhead`: 139 against 121 ms per attempt). Other
    /// commands (the API, the CLI) keep the multi-threaded runtime.
    /// Whether it runs as a service until stopped (`worker`, `api`), rather than printing an
    /// answer to a reader that may go away (`status … | head`).
    pub fn is_service(&self) -> bool {
        matches!(self, Command::Worker(_) | Command::Api(_))
    }

    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Command::Worker(_) => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Worker(args) => commands::worker(&g, args).await,
        Command::Retry(args) => commands::retry::run(&g, args).await,
        Command::History(args) => commands::history::run(&g, args).await,
        Command::Insights(args) => commands::insights::run(&g, args).await,
        Command::Policy(cmd) => commands::policy::run(&g, cmd).await,
        Command::Budget(cmd) => commands::budget::run(&g, cmd).await,
        Command::Demo(args) => commands::demo::run(&g, args).await,
        Command::Abort(args) => commands::control::signal(&g, Creator::Abort, args).await,
        Command::Escalate(args) => commands::control::signal(&g, Creator::Escalate, args).await,
        Command::Decide(args) => commands::control::decide(&g, args).await,
        Command::Status(args) => commands::control::status(&g, args).await,
        Command::Runs(cmd) => commands::runs::run(&g, cmd).await,
        Command::Sweep(args) => commands::sweep_reservations(&g, args).await,
        Command::Api(args) => commands::api(&g, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn api_args(args: &[&str]) -> Result<ApiArgs, clap::Error> {
        let cli = Cli::try_parse_from(["retake", "api"].iter().chain(args))?;
        match cli.command {
            Command::Api(a) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn retake_api_serves_with_the_librarys_limits_unless_told_otherwise() {
        let defaults = retake_api::ServeOptions::default();
        let got = api_args(&[]).unwrap().serve_options();
        assert_eq!(
            (got.header_timeout, got.body_timeout, got.max_connections),
            (
                defaults.header_timeout,
                defaults.body_timeout,
                defaults.max_connections
            )
        );
        let set = api_args(&[
            "--header-timeout-secs",
            "3",
            "--body-timeout-secs",
            "4",
            "--max-connections",
            "5",
        ])
        .unwrap()
        .serve_options();
        assert_eq!(
            (
                set.header_timeout.as_secs(),
                set.body_timeout.as_secs(),
                set.max_connections
            ),
            (3, 4, 5)
        );
        for zero in [
            "--header-timeout-secs",
            "--body-timeout-secs",
            "--max-connections",
        ] {
            assert!(api_args(&[zero, "0"]).is_err(), "{zero} 0 is refused");
        }
    }
}
