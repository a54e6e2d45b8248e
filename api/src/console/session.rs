//! Console sessions: an opaque random id in an `HttpOnly; SameSite=Strict` cookie, mapped in
//! memory to the role its bearer token had, and a per-session CSRF token every POST form carries
//! in a hidden field. The token itself is only ever read from a POST body, compared by
//! [`Tokens`](crate::Tokens) and forgotten: it never reaches a URL, a cookie or a log.
//!
//! Only signing in with a valid token creates a session: the sign-in form's CSRF token lives in
//! a signed cookie ([`super::sign_in_csrf`]), so anonymous visitors cost no server-side state and
//! cannot crowd anyone out.
//!
//! In memory, because one `retake api` process serves the console: a restart signs everyone out,
//! which costs a creator one paste of their token. Several replicas behind a load balancer would
//! need sticky sessions (docs/console.md).

use super::page::PageError;
use crate::AppState;
use crate::auth::{Need, Role, Who};
use crate::error::AppError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use rand::RngCore;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "retake_session";
/// How long a signed-in session lasts (a working day), from sign-in.
const SIGNED_IN_FOR: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept, so memory stays bounded even if a token holder signs in
/// in a loop; beyond it the session closest to expiry (the oldest) is ended. Only token holders
/// can create sessions, so no anonymous visitor can sign anyone out.
const MAX_SESSIONS: usize = 10_000;

/// One browser's session.
#[derive(Clone)]
pub(crate) struct Session {
    /// The opaque id in the cookie.
    pub(crate) id: String,
    /// The role of the token signed in with.
    pub(crate) role: Role,
    /// The person that token was given to, when the operator named one.
    pub(crate) name: Option<String>,
    /// The hidden `csrf` field every POST form of this session must echo.
    pub(crate) csrf: String,
    expires: Instant,
}

/// Every live session, by id.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Session>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

/// 32 bytes from the thread's CSPRNG (ChaCha, seeded from the OS), hex: not guessable.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves the map whole (every change is one insert or
        // remove), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new signed-in session of `who`, with fresh id and CSRF token.
    pub(crate) fn create(&self, who: Who) -> Session {
        let now = Instant::now();
        let session = Session {
            id: random_hex(),
            role: who.role,
            name: who.name,
            csrf: random_hex(),
            expires: now + SIGNED_IN_FOR,
        };
        let mut map = self.lock();
        map.retain(|_, s| s.expires > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.values().min_by_key(|s| s.expires).map(|s| s.id.clone());
            match oldest {
                Some(id) => map.remove(&id),
                None => break,
            };
        }
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session of `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let map = self.lock();
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// End a session (sign-out).
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The `Set-Cookie` value that gives the browser `session`.
pub(crate) fn set_cookie(session: &Session) -> String {
    format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        session.id,
        SIGNED_IN_FOR.as_secs()
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// The session the request's cookie names, if it is live.
pub(crate) fn from_headers(headers: &HeaderMap, state: &AppState) -> Option<Session> {
    cookie_values(headers, COOKIE).find_map(|id| state.console.sessions.get(id))
}

/// The values of every cookie called `name` the request sent, in order.
pub(crate) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// A signed-in browser whose role is at least `N::ROLE`: otherwise a redirect to the sign-in
/// page (no or an expired session) or a 403 page (too low a role). Checked before the body.
pub(crate) struct Signed<N> {
    pub(crate) session: Session,
    pub(crate) role: Role,
    need: PhantomData<N>,
}

impl<N> Signed<N> {
    /// Who signed in: recorded as `by` on what they decide.
    pub(crate) fn who(&self) -> Who {
        Who {
            role: self.role,
            name: self.session.name.clone(),
        }
    }
}

impl<N: Need> Signed<N> {
    fn check(session: Option<Session>) -> Result<Self, PageError> {
        let session = session.ok_or(PageError::SignIn)?;
        let role = session.role;
        if role < N::ROLE {
            return Err(PageError::App(AppError::Forbidden(N::ROLE)));
        }
        Ok(Self {
            session,
            role,
            need: PhantomData,
        })
    }
}

impl<N: Need> FromRequestParts<AppState> for Signed<N> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        Self::check(from_headers(&parts.headers, state))
    }
}

/// A submitted form's fields, in order, percent-decoded.
#[derive(Debug, Default)]
pub(crate) struct Fields(pub(crate) Vec<(String, String)>);

impl Fields {
    /// The last value of `name` (trimmed), or `""`.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }
}

/// A POST form from a signed-in browser of role `N::ROLE` or above, whose hidden `csrf` field
/// matches its session's token (compared in constant time): 403 otherwise. The role is checked
/// before the body is read, as the JSON API does.
pub(crate) struct Posted<N> {
    pub(crate) who: Signed<N>,
    pub(crate) fields: Fields,
}

/// The form body of `req`, read as the JSON API reads bodies (413 or 408 page when it is too large
/// or too slow); a body that cannot be read otherwise is refused as a form.
pub(crate) async fn read_fields(req: Request, state: &AppState) -> Result<Fields, PageError> {
    let bytes = crate::extract::read_body(req, state).await.map_err(|e| {
        PageError::App(match e {
            AppError::TooLarge | AppError::BodyTimeout => e,
            _ => AppError::Rejected("the form could not be read".to_owned()),
        })
    })?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(Fields(crate::extract::form_pairs(&text)))
}

/// Whether `fields` carry `session`'s CSRF token.
pub(crate) fn csrf_ok(session: &Session, fields: &Fields) -> bool {
    let sent = fields.get("csrf");
    !sent.is_empty() && bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes()))
}

impl<N: Need> FromRequest<AppState> for Posted<N> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, PageError> {
        let who = Signed::<N>::check(from_headers(req.headers(), state))?;
        let fields = read_fields(req, state).await?;
        if !csrf_ok(&who.session, &fields) {
            return Err(PageError::Csrf);
        }
        Ok(Self { who, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_have_distinct_unguessable_ids_and_can_be_ended() {
        let sessions = Sessions::default();
        let a = sessions.create(Who {
            role: Role::Creator,
            name: None,
        });
        let b = sessions.create(Who {
            role: Role::Creator,
            name: None,
        });
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        assert_eq!(sessions.get(&a.id).unwrap().role, Role::Creator);
        sessions.remove(&a.id);
        assert!(sessions.get(&a.id).is_none());
        assert!(sessions.get("not-a-session").is_none());
    }

    #[test]
    fn the_cookie_is_http_only_and_same_site_strict() {
        let sessions = Sessions::default();
        let s = sessions.create(Who {
            role: Role::Viewer,
            name: None,
        });
        let c = set_cookie(&s);
        assert!(c.starts_with(&format!("{COOKIE}={}", s.id)), "{c}");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }

    #[test]
    fn a_form_without_the_sessions_csrf_token_is_refused() {
        let sessions = Sessions::default();
        let s = sessions.create(Who {
            role: Role::Admin,
            name: None,
        });
        let with = |v: &str| Fields(vec![("csrf".into(), v.into())]);
        assert!(csrf_ok(&s, &with(&s.csrf)));
        assert!(!csrf_ok(&s, &with("")));
        assert!(!csrf_ok(&s, &with("0000")));
        assert!(!csrf_ok(&s, &Fields::default()));
    }
}
