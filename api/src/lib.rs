//! The retake HTTP service (axum): retry policies, project budgets, starting and steering
//! retries, their history, health, metrics and the OpenAPI document.
//!
//! [`app`] builds the router (testable in-process); [`serve`] runs it on a bound listener until
//! a shutdown future resolves, with time limits on slow clients and a cap on connections
//! ([`ServeOptions`]).

mod auth;
pub mod console;
mod error;
mod extract;
mod json;
mod openapi;
mod routes;
mod server;

pub use auth::{Role, Tokens, TokensError, Who};
pub use console::Console;
pub use error::{AppError, Dependency, ErrorBody, RETRY_AFTER_SECS};
pub use server::{DEFAULT_MAX_CONNECTIONS, ServeOptions};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use retake_activities::ports::Store;
use std::future::Future;
use std::sync::Arc;
use temporalio_client::Client;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = retake_domain::contract::MAX_REQUEST_BYTES;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub temporal: Client,
    pub task_queue: String,
    pub tokens: Arc<Tokens>,
    /// The review console's settings and sessions (`/ui`).
    pub console: Console,
    /// The only folders whose files the API opens (text outputs, drafts), and under which a
    /// creator's `file://` `params.output_uri` must lie.
    pub files: retake_activities::files::FileRoots,
    /// The URL prefixes under which a creator's `http(s)` `params.output_uri` must lie (the
    /// worker GETs it). The API itself never requests an `http(s)` URL.
    pub urls: retake_activities::urls::UrlRoots,
}

/// The router with every endpoint, the body limit and the state.
pub fn app(state: AppState) -> Router {
    routes::router()
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serve on `listener` with the default [`ServeOptions`] until `shutdown` resolves, then finish
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, ServeOptions::default()).await
}

/// Serve on `listener` with `options` until `shutdown` resolves, then finish in-flight requests.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    server::run(listener, app(state), shutdown, options).await
}
