//! The accept loop over real TCP on port 0, spoken to in raw bytes: what a hostile or broken
//! client can make the server wait for, and what it cannot.

use super::*;
use crate::extract::JsonBody;
use axum::routing::{get, post};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Longer than any wait below needs: a test that waits this long has failed.
const PATIENCE: Duration = Duration::from_secs(5);

/// A server started for one test.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: JoinHandle<std::io::Result<()>>,
}

/// `POST /echo` (a [`JsonBody`], echoed), `GET /ok`, and `GET /held`, which tells `started` it
/// runs and then answers once `release` fires.
fn router(started: mpsc::Sender<()>, release: oneshot::Receiver<()>) -> Router {
    let release = Arc::new(Mutex::new(Some(release)));
    Router::new()
        .route(
            "/echo",
            post(|JsonBody(v): JsonBody| async move { axum::Json(v) }),
        )
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/held",
            get(move || async move {
                let _ = started.send(()).await;
                if let Some(rx) = release.lock().await.take() {
                    let _ = rx.await;
                }
                "released"
            }),
        )
}

async fn start(options: ServeOptions) -> Running {
    let (started, _) = mpsc::channel(1);
    let (_, release) = oneshot::channel();
    start_router(router(started, release), options).await
}

async fn start_router(router: Router, options: ServeOptions) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(run(
        listener,
        router,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    Running {
        addr,
        stop: Some(stop),
        done,
    }
}

/// A connection that has sent `bytes`.
async fn send(addr: SocketAddr, bytes: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes.as_bytes()).await.unwrap();
    s
}

/// Everything the server sends until it closes the connection; panics if that takes `PATIENCE`.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    match tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(_) => panic!(
            "still open after {PATIENCE:?}, having sent {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

/// The response's status line, read within `PATIENCE`.
async fn status_line(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("no answer in time");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn slow_clients(timeout: Duration) -> ServeOptions {
    ServeOptions {
        header_timeout: timeout,
        body_timeout: timeout,
        ..ServeOptions::default()
    }
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_at_once_without_being_read() {
    // Timeouts far longer than the test's patience: only reading no body answers in time.
    let server = start(slow_clients(Duration::from_secs(600))).await;
    let mut s = send(
        server.addr,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000000000\r\n\r\n{}",
    )
    .await;
    assert_eq!(status_line(&mut s).await, "HTTP/1.1 413 Payload Too Large");
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_a_body_gets_408_within_the_body_timeout() {
    let server = start(slow_clients(Duration::from_millis(300))).await;
    let mut s = send(
        server.addr,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: 10\r\n\r\n{}",
    )
    .await;
    let answer = read_until_closed(&mut s).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout"),
        "{answer}"
    );
    assert!(answer.contains("did not arrive in time"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_halfway_through_the_headers_or_sends_nothing_is_disconnected() {
    let server = start(slow_clients(Duration::from_millis(300))).await;
    let mut half = send(server.addr, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Le").await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut half).await, "");
    assert_eq!(read_until_closed(&mut silent).await, "");

    let mut kept = send(server.addr, "GET /ok HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let answer = read_until_closed(&mut kept).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "a kept-alive connection is answered, then closed once idle: {answer}"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes_and_are_then_served() {
    let server = start(ServeOptions {
        max_connections: 2,
        header_timeout: Duration::from_secs(600),
        ..ServeOptions::default()
    })
    .await;
    let held_a = send(server.addr, "GET /ok HTTP/1.1\r\n").await;
    let mut held_b = send(server.addr, "GET /ok HTTP/1.1\r\n").await;
    let get = "GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let mut third = send(server.addr, get).await;

    // Nothing may come while both slots are held; waiting a moment is the only way to see that.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served over the cap"
    );

    drop(held_a);
    let answer = read_until_closed(&mut third).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok"),
        "{answer}"
    );
    let mut fourth = send(server.addr, get).await;
    assert_eq!(status_line(&mut fourth).await, "HTTP/1.1 200 OK");

    held_b.write_all(b"Host: t\r\n\r\n").await.unwrap();
    assert_eq!(
        status_line(&mut held_b).await,
        "HTTP/1.1 200 OK",
        "a held connection that completes its request is served"
    );
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_then_returns() {
    let (started, mut running) = mpsc::channel(1);
    let (release, released) = oneshot::channel();
    let mut server = start_router(router(started, released), ServeOptions::default()).await;
    let mut s = send(server.addr, "GET /held HTTP/1.1\r\nHost: t\r\n\r\n").await;
    running.recv().await.expect("the handler runs");

    server.stop.take().unwrap().send(()).unwrap();
    assert!(!server.done.is_finished());
    release.send(()).unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("released"),
        "{answer}"
    );
    tokio::time::timeout(PATIENCE, server.done)
        .await
        .expect("serve returns once the last connection closed")
        .unwrap()
        .unwrap();
}
