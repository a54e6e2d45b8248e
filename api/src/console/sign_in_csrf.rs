//! The sign-in form's CSRF token, kept by the browser alone (a signed double-submit cookie).
//!
//! The sign-in form needs a CSRF token (a forged sign-in would put a victim in the attacker's
//! session), but anyone may load it, so nothing it costs may live on the server: server-side
//! anonymous sessions had to be capped, and a flood of `GET /ui/sign-in` evicted real users'
//! forms, refusing their sign-in with 403. Instead the page sets a cookie holding when it was
//! issued and a random nonce, and the form carries HMAC-SHA256(key, cookie). Only this process
//! knows the key, so a page elsewhere can neither compute the token for the victim's cookie nor
//! read it; loading the form a million times costs the server nothing it keeps.
//!
//! The key is random per process, like the sessions in memory: a restart invalidates open
//! sign-in forms (reload and sign in), and replicas need the sticky sessions the console needs
//! anyway (docs/console.md).

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// The sign-in cookie's name.
pub(crate) const COOKIE: &str = "retake_sign_in";
/// How long a sign-in form stays usable, from the first load that set its cookie.
const VALID_FOR: Duration = Duration::from_secs(3600);

/// Issues and checks sign-in tokens with this process's key.
pub(crate) struct SignInCsrf {
    key: [u8; 32],
}

impl std::fmt::Debug for SignInCsrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignInCsrf(..)")
    }
}

impl Default for SignInCsrf {
    /// A fresh key from the thread's CSPRNG (ChaCha, seeded from the OS).
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }
}

/// Seconds since the Unix epoch (0 for a clock before it, which only makes cookies look old).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SignInCsrf {
    /// A new cookie value, `ISSUED.NONCE` (Unix seconds, 32 random bytes in hex).
    pub(crate) fn issue(&self) -> String {
        let mut nonce = [0u8; 32];
        rand::rng().fill_bytes(&mut nonce);
        format!("{}.{}", now_secs(), hex::encode(nonce))
    }

    /// The form token for `cookie`, or `None` when the cookie is malformed or expired (so the
    /// page issues a new one).
    pub(crate) fn token_for(&self, cookie: &str) -> Option<String> {
        let (issued, nonce) = cookie.split_once('.')?;
        let issued: u64 = issued.parse().ok()?;
        let age = now_secs().checked_sub(issued)?;
        if age >= VALID_FOR.as_secs() || nonce.len() != 64 {
            return None;
        }
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(cookie.as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `sent` (the form's `csrf` field) is the token of the request's live cookie,
    /// compared in constant time.
    pub(crate) fn check(&self, headers: &HeaderMap, sent: &str) -> bool {
        cookie_of(headers)
            .and_then(|c| self.token_for(c))
            .is_some_and(|t| !sent.is_empty() && bool::from(t.as_bytes().ct_eq(sent.as_bytes())))
    }
}

/// The request's sign-in cookie value, if it sent one.
pub(crate) fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    super::session::cookie_values(headers, COOKIE).next()
}

/// The `Set-Cookie` value giving the browser `value`: sent back only to the sign-in page, never
/// readable by scripts or sent by other sites' pages.
pub(crate) fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui/sign-in; Max-Age={}",
        VALID_FOR.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, header};

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {COOKIE}={value}")).unwrap(),
        );
        h
    }

    #[test]
    fn the_token_of_the_cookie_passes_and_any_other_is_refused() {
        let csrf = SignInCsrf::default();
        let cookie = csrf.issue();
        let token = csrf.token_for(&cookie).unwrap();
        assert!(csrf.check(&with_cookie(&cookie), &token));

        let other = csrf.issue();
        assert!(
            !csrf.check(&with_cookie(&other), &token),
            "another cookie's"
        );
        assert!(!csrf.check(&with_cookie(&cookie), ""), "none");
        assert!(!csrf.check(&with_cookie(&cookie), &token[1..]), "truncated");
        assert!(!csrf.check(&HeaderMap::new(), &token), "no cookie");
        let elsewhere = SignInCsrf::default();
        assert!(
            !elsewhere.check(&with_cookie(&cookie), &token),
            "another process's key"
        );
    }

    #[test]
    fn an_expired_or_malformed_cookie_has_no_token() {
        let csrf = SignInCsrf::default();
        let nonce = "0".repeat(64);
        let old = format!("{}.{nonce}", now_secs() - VALID_FOR.as_secs());
        assert_eq!(csrf.token_for(&old), None);
        let future = format!("{}.{nonce}", now_secs() + 60);
        assert_eq!(csrf.token_for(&future), None);
        for bad in ["", "x", "12", "abc.def", &format!("{}.short", now_secs())] {
            assert_eq!(csrf.token_for(bad), None, "{bad}");
        }
        assert!(csrf.token_for(&format!("{}.{nonce}", now_secs())).is_some());
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_only_for_the_sign_in_page() {
        let c = set_cookie("1.ab");
        assert!(c.starts_with(&format!("{COOKIE}=1.ab;")), "{c}");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui/sign-in"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }
}
