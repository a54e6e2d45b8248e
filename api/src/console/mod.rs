//! The review console: HTML pages under `/ui` for creators, served by `retake api` itself (same
//! process, same tokens and roles, no front-end build). Sign in with a token, see the segments
//! awaiting review, compare a segment's attempts side by side, decide, and view or (admin) edit a
//! scene type's policy and a project's budget.
//!
//! Every action calls the function the JSON endpoint calls (`routes::segments::decide_as`,
//! `signal`, `routes::policies::store_policy`, `routes::budgets::store_limit`), so validation,
//! the recorded `by` and the answers to a finished retry are the API's own. Pages are compiled
//! askama templates (`api/templates/`), which escape every value.

mod page;
mod pages;
mod policy_form;
mod session;
mod sign_in_csrf;
mod time;
mod views;

use crate::AppState;
use axum::Router;
use axum::routing::{get, post};
use session::Sessions;
use sign_in_csrf::SignInCsrf;
use std::sync::Arc;

/// Where the Temporal web UI is by default (the dev server's).
pub const DEFAULT_TEMPORAL_UI: &str = "http://localhost:8233";

/// The console's configuration and sessions (part of [`AppState`]).
#[derive(Debug, Clone)]
pub struct Console {
    /// Base URL of the Temporal web UI the segment page links a workflow to.
    pub temporal_ui: String,
    sessions: Arc<Sessions>,
    /// This process's key for the sign-in form's CSRF token.
    sign_in: Arc<SignInCsrf>,
}

impl Console {
    /// A console linking to the Temporal web UI at `temporal_ui` (trailing `/` ignored), with no
    /// sessions yet and a fresh sign-in key.
    pub fn new(temporal_ui: impl Into<String>) -> Self {
        Self {
            temporal_ui: temporal_ui.into().trim_end_matches('/').to_owned(),
            sessions: Arc::default(),
            sign_in: Arc::default(),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new(DEFAULT_TEMPORAL_UI)
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(pages::home))
        .route("/ui/", get(pages::home))
        .route("/ui/sign-in", get(pages::sign_in_form).post(pages::sign_in))
        .route("/ui/sign-out", post(pages::sign_out))
        .route("/ui/review", get(pages::queue))
        .route("/ui/review/next", get(pages::next_in_queue))
        .route("/ui/static/console.js", get(pages::script))
        .route("/ui/segments", get(pages::segments_list))
        .route("/ui/segments/{id}", get(pages::segment))
        .route("/ui/segments/{id}/live", get(pages::segment_live))
        .route("/ui/segments/{id}/decision", post(pages::decide))
        .route("/ui/segments/{id}/abort", post(pages::abort))
        .route("/ui/segments/{id}/escalate", post(pages::escalate))
        .route("/ui/settings", get(pages::settings))
        .route("/ui/scene-types/{id}", get(pages::scene_type))
        .route("/ui/scene-types/{id}/policy", post(pages::set_policy))
        .route(
            "/ui/scene-types/{id}/policy-fields",
            post(pages::set_policy_fields),
        )
        .route("/ui/projects/{id}", get(pages::project))
        .route("/ui/projects/{id}/budget", post(pages::set_budget))
        .route("/ui/{*rest}", get(pages::not_found).post(pages::not_found))
}
