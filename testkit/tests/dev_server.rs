//! The dev server against a real temporal CLI (`scripts/test` installs it): the pid is the
//! server's own, a restart keeps ports and data, and dropping it stops the server.

use retake_testkit::DevServer;

/// The command name of a live process (the kernel's `comm`), `None` once it is gone.
fn process_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie (`Z` after the parenthesised name) has exited already.
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    (!zombie).then(|| comm.trim().to_owned())
}

#[tokio::test]
async fn a_restarted_server_keeps_its_address_and_workflows_and_dropping_it_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = DevServer::builder()
        .db_file(dir.path().join("temporal.db"))
        .headless()
        .log_to(dir.path().join("server.log"))
        .start()
        .unwrap();
    let first = server.pid();
    assert_eq!(process_name(first).as_deref(), Some("temporal"));
    assert_eq!(server.ui_url(), None, "headless");
    let listed = server
        .cli(&["operator", "search-attribute", "list"])
        .await
        .unwrap();
    for sa in retake_workflows::SEARCH_ATTRIBUTES {
        assert!(listed.contains(sa), "{sa} is not registered: {listed}");
    }
    // A workflow without a worker stays open: it must be found again after the restart.
    server
        .cli(&[
            "workflow",
            "start",
            "--type",
            "Nothing",
            "--task-queue",
            "nobody",
            "--workflow-id",
            "kept",
        ])
        .await
        .unwrap();
    let address = server.address().to_owned();

    server.restart().unwrap();

    assert_eq!(server.address(), address);
    assert_ne!(server.pid(), first);
    assert_eq!(process_name(first), None, "the old server is gone");
    let described = server
        .cli(&[
            "workflow",
            "describe",
            "--workflow-id",
            "kept",
            "-o",
            "json",
        ])
        .await
        .unwrap();
    assert!(
        described.contains("WORKFLOW_EXECUTION_STATUS_RUNNING"),
        "{described}"
    );

    let second = server.pid();
    drop(server);
    assert_eq!(process_name(second), None, "dropping the server stops it");
    assert!(dir.path().join("server.log").exists());
}
