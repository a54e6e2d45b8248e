//! The dev server shared by every test of this binary, and servers of a test's own.

use retake_testkit::{DevServer, repo_root};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static SERVER: OnceLock<DevServer> = OnceLock::new();

/// Start the shared dev server (in memory, with its web UI) on first use. It is never dropped;
/// it stops when the test process exits, however it exits (see `retake_testkit::DevServer`).
pub fn dev_server() -> &'static DevServer {
    SERVER.get_or_init(|| {
        DevServer::builder()
            .log_to(server_log())
            .start()
            .expect("start the shared temporal dev server")
    })
}

/// A dev server of one test's own that keeps its data in `db`, so it can be stopped and started
/// again on the same ports (`restart`), or stopped for good (`drop`).
pub fn own_dev_server(db: &Path) -> DevServer {
    DevServer::builder()
        .db_file(db)
        .log_to(server_log())
        .start()
        .expect("start a temporal dev server")
}

/// The servers' own log: it reports every cancelled poll of a stopping worker as an error, which
/// would bury the test output.
fn server_log() -> PathBuf {
    repo_root().join("target/test-artifacts/temporal-dev-server.log")
}
