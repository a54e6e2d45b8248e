//! Rendering: templates become `text/html` responses, and every error becomes a readable page
//! with the status code the JSON API would have answered (or a redirect to sign in).

use crate::auth::Who;
use crate::error::AppError;
use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use retake_domain::FieldError;

/// What the layout shows around every page: who is signed in, and the token the sign-out form
/// (and every other form) echoes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nav {
    /// Who is signed in, as the header shows them (`mina (creator)`); `None` on the sign-in page.
    pub(crate) role: Option<String>,
    pub(crate) csrf: String,
}

impl Nav {
    pub(crate) fn new(who: &Who, csrf: &str) -> Self {
        Self {
            role: Some(who.shown()),
            csrf: csrf.to_owned(),
        }
    }
}

/// The pages' Content-Security-Policy.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' http: https: data:; media-src 'self' http: https: data:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The headers every console answer carries, error pages included: pages show reviews and
/// decisions that change under the user (never from a cache); scripts only from here
/// (console.js), no framing, forms only to here, images and video from wherever the backends
/// put their outputs; no content-type sniffing.
fn secured(mut r: Response) -> Response {
    let headers = r.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Render `page` with `status`; a template that fails to render (a bug) is a 500 page.
pub(crate) fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => secured((status, Html(body)).into_response()),
        Err(e) => PageError::App(AppError::Internal(format!("template: {e}"))).into_response(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    status: u16,
    title: String,
    message: String,
    fields: Vec<FieldError>,
}

/// Why a page could not be shown.
#[derive(Debug)]
pub(crate) enum PageError {
    /// No (live) session: go and sign in.
    SignIn,
    /// A POST form without its session's CSRF token: 403.
    Csrf,
    /// What the JSON API would have answered, shown as a page with the same status.
    App(AppError),
}

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        PageError::App(e)
    }
}

impl From<retake_activities::ports::StoreError> for PageError {
    fn from(e: retake_activities::ports::StoreError) -> Self {
        PageError::App(e.into())
    }
}

impl From<retake_domain::ValidationError> for PageError {
    fn from(e: retake_domain::ValidationError) -> Self {
        PageError::App(AppError::Invalid(e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message, fields) = match self {
            PageError::SignIn => return Redirect::to("/ui/sign-in").into_response(),
            PageError::Csrf => (
                StatusCode::FORBIDDEN,
                "The form was missing its security token (or it expired). Go back, reload the page and try again.".to_owned(),
                Vec::new(),
            ),
            PageError::App(e) => {
                let status = e.status();
                match e {
                    AppError::Invalid(v) => (status, "Invalid input.".to_owned(), v.errors),
                    AppError::Internal(detail) => {
                        tracing::error!(%detail, "internal error");
                        (status, "Internal error (details are in the server log).".to_owned(), Vec::new())
                    }
                    other => (status, capitalised(&other.to_string()), Vec::new()),
                }
            }
        };
        let page = ErrorPage {
            nav: Nav::default(),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message,
            fields,
        };
        secured(match page.render() {
            Ok(body) => (status, Html(body)).into_response(),
            Err(_) => (status, page.message).into_response(),
        })
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_carry_the_same_security_headers_as_pages() {
        for e in [
            PageError::Csrf,
            PageError::App(AppError::NotFound("segment x has no retry".into())),
            PageError::App(AppError::Invalid(retake_domain::ValidationError::single(
                "attempt", "bad",
            ))),
        ] {
            let r = e.into_response();
            let h = r.headers();
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        }
    }
}
