//! The dev server shared by every test of this binary.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running `temporal server start-dev`.
pub struct DevServer {
    /// `127.0.0.1:<port>` of the frontend.
    pub address: String,
    /// `http://127.0.0.1:<port>` of the web UI.
    pub ui_url: String,
    /// The installed temporal CLI.
    pub temporal: PathBuf,
    // Holding the wrapper's stdin open keeps the server alive; when this process exits, however it
    // exits, the pipe closes and the wrapper kills the server. No orphan servers.
    wrapper: Child,
}

static SERVER: OnceLock<DevServer> = OnceLock::new();

/// The temporal CLI installed by `scripts/test` (or `RETAKE_TEMPORAL_BIN`).
pub fn temporal_bin() -> PathBuf {
    let path = std::env::var_os("RETAKE_TEMPORAL_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/temporal/bin/temporal"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the temporal CLI is not at {}: run the tests with scripts/test, which installs it",
        path.display()
    );
    path
}

/// `N` distinct free local ports (all held until every one is picked, so none repeats).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free local port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound address").port())
}

/// Start the shared dev server (in memory) on first use.
pub fn dev_server() -> &'static DevServer {
    SERVER.get_or_init(|| DevServer::launch(free_ports::<4>(), None))
}

/// A dev server of one test's own that keeps its data in `db`, so it can be stopped and started
/// again on the same ports.
pub struct OwnedServer {
    pub server: DevServer,
    ports: [u16; 4],
    db: PathBuf,
}

impl OwnedServer {
    pub fn start(db: &std::path::Path) -> Self {
        let ports = free_ports::<4>();
        Self {
            server: DevServer::launch(ports, Some(db)),
            ports,
            db: db.to_owned(),
        }
    }

    /// Stop the server (SIGTERM, waiting for it to exit) and start it again on the same ports
    /// with the same database file.
    pub fn restart(&mut self) {
        self.server.stop();
        self.server = DevServer::launch(self.ports, Some(&self.db));
    }
}

impl DevServer {
    fn launch([port, http, metrics, ui]: [u16; 4], db: Option<&std::path::Path>) -> Self {
        let temporal = temporal_bin();
        let mut args: Vec<String> = [
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--ui-ip",
            "127.0.0.1",
            "--ui-disable-news-fetch",
            "--log-level",
            "error",
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--port".into(),
            port.to_string(),
            "--http-port".into(),
            http.to_string(),
            "--metrics-port".into(),
            metrics.to_string(),
            "--ui-port".into(),
            ui.to_string(),
        ]);
        if let Some(db) = db {
            args.extend(["--db-filename".into(), db.display().to_string()]);
        }
        for sa in retake::SEARCH_ATTRIBUTES {
            args.extend(["--search-attribute".into(), format!("{sa}=Keyword")]);
        }
        // The server's own log goes to a file: it reports every cancelled poll of a stopping
        // worker as an error, which would bury the test output.
        let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
        let _ = std::fs::create_dir_all(&log_dir);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.join("temporal-dev-server.log"))
            .expect("dev server log file");
        let wrapper = Command::new("sh")
            .arg("-c")
            .arg(r#""$@" & pid=$!; read _ignored; kill $pid 2>/dev/null; wait $pid"#)
            .arg("sh")
            .arg(&temporal)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the temporal dev server");
        let address = format!("127.0.0.1:{port}");
        wait_healthy(&temporal, &address);
        DevServer {
            address,
            ui_url: format!("http://127.0.0.1:{ui}"),
            temporal,
            wrapper,
        }
    }

    /// Close the wrapper's stdin: it stops the server and waits for it.
    fn stop(&mut self) {
        drop(self.wrapper.stdin.take());
        let _ = self.wrapper.wait();
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.server.stop();
    }
}

fn wait_healthy(temporal: &PathBuf, address: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let listening = TcpStream::connect(address).is_ok();
        if listening
            && Command::new(temporal)
                .args(["operator", "cluster", "health", "--address", address])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the temporal dev server on {address} did not become healthy within 90 s");
}
