//! Serving the router over TCP with limits no client can outwait.
//!
//! `axum::serve` waits for headers and bodies as long as a client likes and accepts every
//! connection, so a few hundred clients each sending half a request held every file descriptor
//! the process had. Here: headers must arrive within [`ServeOptions::header_timeout`] (hyper
//! closes the connection otherwise, kept-alive idle ones included), bodies within
//! [`ServeOptions::body_timeout`] (408, see [`crate::extract::read_body`]), and at most
//! [`ServeOptions::max_connections`] are served at once: the next one is accepted only when one
//! closes, waiting meanwhile in the kernel's listen backlog, so the process never runs out of
//! descriptors for its database and Temporal.

use crate::extract::BodyDeadline;
use axum::Router;
use axum::extract::{Request, State};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How [`crate::serve_with`] treats clients. The defaults suit a service on a private network
/// behind no proxy; a proxy in front usually has limits of its own.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Longest a client may take to send a request's headers, from when the server is ready to
    /// read them (the connection opening, or the previous response on a kept-alive one); the
    /// connection is closed then, so this is also how long an idle kept-alive connection stays.
    /// Default: 10 s.
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body once its headers arrived: after it,
    /// 408 and the connection closes. Default: 30 s (a 64 KiB body at about 2 KiB/s).
    pub body_timeout: Duration,
    /// Connections served at once; a further one waits, unaccepted, until one closes. At least
    /// 1 (0 is taken as 1). Default: [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
}

/// Connections served at once by default: half the usual 1,024 open files a process may have,
/// leaving the rest for the database pool, Temporal and the files the console reads.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serve `router` on `listener` until `shutdown` resolves; then accept nothing more, let the
/// requests in flight finish and return once every connection has closed.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::map_request_with_state(
        options.body_timeout,
        stamp_body_deadline,
    ));
    let service = TowerToHyperService::new(router);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Answers are small and written whole: Nagle's delay would only add latency.
        let _ = stream.set_nodelay(true);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Give the request's body its deadline, counted from now: its headers have just arrived.
async fn stamp_body_deadline(State(timeout): State<Duration>, mut req: Request) -> Request {
    req.extensions_mut()
        .insert(BodyDeadline(tokio::time::Instant::now() + timeout));
    req
}

/// A failed `accept`: a connection reset before it was accepted costs nothing; anything else
/// (out of file descriptors) is logged and retried after a second, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests;
