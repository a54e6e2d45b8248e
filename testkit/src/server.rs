//! `temporal server start-dev` on free local ports, with retake's search attributes registered.

use crate::{Error, free_ports, repo_root};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a starting server may take to pass its health check: a cold start on a loaded
/// 2-core machine takes tens of seconds.
const HEALTHY_WITHIN: Duration = Duration::from_secs(90);

/// How often [`DevServerBuilder::start`] starts a server on fresh ports when the one it started
/// exited (another process took one of its ports between picking and binding).
const START_TRIES: u32 = 3;

/// How many of the server's last stderr lines an error quotes.
const STDERR_TAIL: usize = 20;

/// Runs the server in the background and prints its pid (the server's own, which is what
/// `/proc` measurements need, not this wrapper's), then waits for it. A reader in the
/// background holds the wrapper's stdin: when the process that started it exits, however it
/// exits (a panic, SIGKILL, a `static` that is never dropped), the pipe closes, `read` returns
/// and the reader stops the server: no orphan servers. When the server exits on its own (it
/// lost a port), the wrapper stops the reader and exits with the server's status, so the
/// starter sees the exit (`try_wait`). The server's stdout goes nowhere; its stderr is the
/// wrapper's (the log). (A background list's stdin is /dev/null in a non-interactive shell,
/// hence stdin kept as fd 3.)
const WRAPPER: &str = r#"exec 3<&0; "$@" >/dev/null </dev/null & pid=$!; echo $pid; { read _ignored <&3; kill $pid 2>/dev/null; } & reader=$!; wait $pid; status=$?; kill $reader 2>/dev/null; exit $status"#;

/// The temporal CLI: `$RETAKE_TEMPORAL_BIN`, else `<repo>/.tools/temporal/bin/temporal`, where
/// `scripts/test` (and `scripts/dev-server`) install the pinned version.
pub fn temporal_bin() -> Result<PathBuf, Error> {
    let path = std::env::var_os("RETAKE_TEMPORAL_BIN").map_or_else(
        || repo_root().join(".tools/temporal/bin/temporal"),
        PathBuf::from,
    );
    installed(path)
}

fn installed(path: PathBuf) -> Result<PathBuf, Error> {
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::TemporalMissing(path))
    }
}

/// How to start a [`DevServer`]; `DevServer::builder().start()` is an in-memory server with its
/// web UI and its log discarded.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct DevServerBuilder {
    temporal: Option<PathBuf>,
    db_file: Option<PathBuf>,
    headless: bool,
    log: Option<PathBuf>,
}

impl DevServerBuilder {
    /// The temporal CLI to run. Default: [`temporal_bin`].
    pub fn temporal(mut self, path: impl Into<PathBuf>) -> Self {
        self.temporal = Some(path.into());
        self
    }

    /// Keep the server's data in this SQLite file (`--db-filename`), so that
    /// [`DevServer::restart`] finds its workflows again. Default: in memory.
    pub fn db_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.db_file = Some(path.into());
        self
    }

    /// No web UI (`--headless`), e.g. when measuring the server's CPU time. Default: the UI on
    /// 127.0.0.1 at a free port ([`DevServer::ui_url`]).
    pub fn headless(mut self) -> Self {
        self.headless = true;
        self
    }

    /// Append the server's log to this file (its directory is created). Default: discarded.
    /// The server reports every cancelled poll of a stopping worker as an error, which would bury
    /// a test's output if it went to the terminal.
    pub fn log_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Start the server and wait until it is healthy (at most 90 s). Blocks the calling thread.
    /// A server that exits while starting (another process took one of its ports between
    /// picking and binding them) is started again on fresh ports, up to 3 times in all; then
    /// the error quotes the end of its stderr.
    pub fn start(self) -> Result<DevServer, Error> {
        self.start_picking(|| {
            let [frontend, http, metrics, ui] =
                free_ports::<4>().map_err(Error::io("picking free ports for the dev server"))?;
            Ok(Ports {
                frontend,
                http,
                metrics,
                ui,
            })
        })
    }

    /// [`start`](Self::start), with the ports of each try from `pick`.
    fn start_picking(
        self,
        mut pick: impl FnMut() -> Result<Ports, Error>,
    ) -> Result<DevServer, Error> {
        let temporal = match &self.temporal {
            Some(path) => installed(path.clone())?,
            None => temporal_bin()?,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let ports = pick()?;
            let (wrapper, pid, stderr) = launch(&temporal, &ports, &self)?;
            let mut server = DevServer {
                address: format!("127.0.0.1:{}", ports.frontend),
                temporal: temporal.clone(),
                ports,
                options: self.clone(),
                pid,
                wrapper,
                stderr,
            };
            match server.wait_healthy(tries) {
                Ok(()) => return Ok(server),
                Err(Error::Exited { .. }) if tries < START_TRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A running `temporal server start-dev`, stopped when dropped (and when this process exits,
/// however it exits: a `sh` wrapper holding it stops it when its stdin closes).
#[derive(Debug)]
pub struct DevServer {
    address: String,
    temporal: PathBuf,
    ports: Ports,
    options: DevServerBuilder,
    pid: u32,
    wrapper: Child,
    /// The last lines the server wrote to stderr.
    stderr: Tail,
}

/// The last [`STDERR_TAIL`] lines of a stream, kept by a thread that reads it to its end.
type Tail = Arc<Mutex<VecDeque<String>>>;

#[derive(Debug, Clone, Copy)]
struct Ports {
    frontend: u16,
    http: u16,
    metrics: u16,
    ui: u16,
}

impl DevServer {
    /// How to start one; every option has a default.
    pub fn builder() -> DevServerBuilder {
        DevServerBuilder::default()
    }

    /// `127.0.0.1:<port>` of the frontend, for clients, workers and the CLI.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `http://127.0.0.1:<port>` of the web UI; `None` when headless.
    pub fn ui_url(&self) -> Option<String> {
        (!self.options.headless).then(|| format!("http://127.0.0.1:{}", self.ports.ui))
    }

    /// The temporal CLI this server runs, to run other CLI commands with.
    pub fn temporal(&self) -> &Path {
        &self.temporal
    }

    /// The pid of the temporal server process itself (not of the `sh` wrapper holding it), e.g.
    /// to read its CPU time from `/proc`. A restart changes it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stop the server (SIGTERM, and wait for it to exit) and start it again on the same ports
    /// with the same options: with [`DevServerBuilder::db_file`] its workflows are still there.
    /// Blocks the calling thread until the new server is healthy.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        let (wrapper, pid, stderr) = launch(&self.temporal, &self.ports, &self.options)?;
        self.wrapper = wrapper;
        self.pid = pid;
        self.stderr = stderr;
        self.wait_healthy(1)
    }

    /// Run the temporal CLI against this server (`--address` is added); its stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<String, Error> {
        let out = tokio::process::Command::new(&self.temporal)
            .args(args)
            .args(["--address", &self.address])
            .output()
            .await
            .map_err(Error::io("running the temporal CLI"))?;
        if !out.status.success() {
            return Err(Error::Cli {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many workflows match a visibility query (eventually consistent, as visibility is).
    pub async fn count(&self, query: &str) -> Result<u64, Error> {
        let args = ["workflow", "count", "--query", query, "-o", "json"];
        let out = self.cli(&args).await?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|source| Error::Output {
            args: args.join(" "),
            source,
        })?;
        // The CLI prints the count as a JSON string (an int64 in protobuf JSON); accept a number
        // too.
        Ok(v["count"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or(v["count"].as_u64())
            .unwrap_or(0))
    }

    /// Wait until the server passes its health check; [`Error::Exited`] as soon as it exits
    /// (this was start-up try `tries`).
    fn wait_healthy(&mut self, tries: u32) -> Result<(), Error> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        while Instant::now() < deadline {
            if let Some(status) = self
                .wrapper
                .try_wait()
                .map_err(Error::io("asking whether the dev server exited"))?
            {
                return Err(Error::Exited {
                    address: self.address.clone(),
                    status: status.to_string(),
                    tries,
                    stderr: self.stderr_tail(),
                });
            }
            // The cheap check first: the CLI takes a while to fail against a closed port.
            let listening = TcpStream::connect(&self.address).is_ok();
            if listening
                && Command::new(&self.temporal)
                    .args(["operator", "cluster", "health", "--address", &self.address])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(Error::Unhealthy {
            address: self.address.clone(),
        })
    }

    /// The server's last stderr lines. It has exited, but the thread copying them may still be
    /// reading what it wrote last: wait a little for the stream's end.
    fn stderr_tail(&self) -> String {
        let until = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.stderr) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let lines = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
        Vec::from(lines).join("\n")
    }

    /// Close the wrapper's stdin: it stops the server and waits for it.
    fn stop(&mut self) {
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start the wrapped server; the wrapper, the server's pid and the tail of its stderr (which a
/// thread copies to the log file, if any).
fn launch(
    temporal: &Path,
    ports: &Ports,
    options: &DevServerBuilder,
) -> Result<(Child, u32, Tail), Error> {
    let mut args: Vec<String> = ["server", "start-dev", "--ip", "127.0.0.1"]
        .map(String::from)
        .to_vec();
    if options.headless {
        args.push("--headless".into());
    } else {
        args.extend(["--ui-ip", "127.0.0.1", "--ui-disable-news-fetch"].map(String::from));
    }
    args.extend(["--log-level".into(), "error".into()]);
    for (flag, port) in [
        ("--port", ports.frontend),
        ("--http-port", ports.http),
        ("--metrics-port", ports.metrics),
        ("--ui-port", ports.ui),
    ] {
        args.extend([flag.into(), port.to_string()]);
    }
    if let Some(db) = &options.db_file {
        args.extend(["--db-filename".into(), db.display().to_string()]);
    }
    for sa in retake_workflows::SEARCH_ATTRIBUTES {
        args.extend(["--search-attribute".into(), format!("{sa}=Keyword")]);
    }
    let log = match &options.log {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(Error::io("creating the dev server's log directory"))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(Error::io("opening the dev server's log file"))?;
            Some(file)
        }
        None => None,
    };
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(WRAPPER)
        .arg("sh")
        .arg(temporal)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::io("starting the temporal dev server"))?;
    let tail = Tail::default();
    if let Some(stderr) = wrapper.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || copy_stderr(stderr, log, &tail));
    }
    // Dropping `wrapper` on an error closes its stdin, which stops the server too.
    let stdout = wrapper.stdout.take().ok_or(Error::Io {
        what: "reading the dev server's pid",
        source: std::io::ErrorKind::BrokenPipe.into(),
    })?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(Error::io("reading the dev server's pid"))?;
    let pid = line.trim().parse().map_err(|_| Error::Io {
        what: "reading the dev server's pid",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the wrapper printed {line:?}"),
        ),
    })?;
    Ok((wrapper, pid, tail))
}

/// Copy the server's stderr to `log` (if any) line by line, keeping the last lines in `tail`,
/// until the stream ends.
fn copy_stderr(stderr: impl std::io::Read, mut log: Option<std::fs::File>, tail: &Tail) {
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if let Some(file) = &mut log {
            let _ = writeln!(file, "{line}");
        }
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DevServer, Ports, installed};
    use crate::{Error, free_ports};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// Free ports, except the frontend: `taken`.
    fn ports_with_frontend(taken: u16) -> Result<Ports, Error> {
        let [http, metrics, ui] = free_ports::<3>().unwrap();
        Ok(Ports {
            frontend: taken,
            http,
            metrics,
            ui,
        })
    }

    fn free() -> Result<Ports, Error> {
        let [frontend, http, metrics, ui] = free_ports::<4>().unwrap();
        Ok(Ports {
            frontend,
            http,
            metrics,
            ui,
        })
    }

    #[test]
    fn a_server_that_lost_its_port_is_started_again_on_fresh_ports_at_once() {
        // Another process took the frontend port between picking and binding it.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut tries = 0;
        let started = Instant::now();

        let server = DevServer::builder()
            .headless()
            .start_picking(|| {
                tries += 1;
                if tries == 1 {
                    ports_with_frontend(port)
                } else {
                    free()
                }
            })
            .unwrap();

        assert_eq!(tries, 2, "one more try");
        assert_ne!(server.address(), format!("127.0.0.1:{port}"));
        // Not the 90 s health-check timeout on a dead server: the exit is noticed.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_server_that_keeps_exiting_is_given_up_after_three_tries_quoting_its_stderr() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut tries = 0;

        let err = DevServer::builder()
            .headless()
            .start_picking(|| {
                tries += 1;
                ports_with_frontend(port)
            })
            .unwrap_err();

        assert_eq!(tries, 3);
        assert!(matches!(err, Error::Exited { tries: 3, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&port.to_string()), "{message}");
        assert!(message.contains("address already in use"), "{message}");
    }

    #[test]
    fn a_missing_temporal_cli_is_an_error_that_says_how_to_install_it() {
        let err = installed("/nonexistent/temporal".into()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/temporal"), "{message}");
        assert!(message.contains("scripts/test"), "{message}");
        assert!(message.contains("--temporal"), "{message}");
    }
}
