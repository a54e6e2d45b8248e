//! Bearer tokens from configuration, with roles. Tokens are compared in constant time and never
//! logged or echoed.

use crate::AppState;
use crate::error::AppError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

/// What a caller may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: history, policies, budgets, status.
    Viewer,
    /// Viewer, plus starting, aborting, escalating and deciding retries.
    Creator,
    /// Creator, plus setting policies and budgets.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Creator => "creator",
            Role::Admin => "admin",
        }
    }
}

/// Why a token configuration is invalid (the token itself is never part of the message).
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("RETAKE_API_TOKENS entry {0} is not ROLE=TOKEN")]
    Malformed(usize),
    #[error("RETAKE_API_TOKENS entry {0}: unknown role {1:?} (use admin, creator or viewer)")]
    UnknownRole(usize, String),
    #[error("RETAKE_API_TOKENS entry {0}: tokens must be at least 16 characters")]
    TooShort(usize),
    #[error("RETAKE_API_TOKENS names no token")]
    Empty,
}

/// The configured tokens.
pub struct Tokens(Vec<(Role, Vec<u8>)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Parse `admin=<token>,creator=<token>,viewer=<token>` (several per role allowed).
    pub fn parse(spec: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        for (i, entry) in spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let n = i + 1;
            let (role, token) = entry.split_once('=').ok_or(TokensError::Malformed(n))?;
            let role = match role.trim() {
                "admin" => Role::Admin,
                "creator" => Role::Creator,
                "viewer" => Role::Viewer,
                other => return Err(TokensError::UnknownRole(n, other.to_owned())),
            };
            let token = token.trim();
            if token.len() < 16 {
                return Err(TokensError::TooShort(n));
            }
            tokens.push((role, token.as_bytes().to_vec()));
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self(tokens))
    }

    /// The role of `presented`, comparing against every token in constant time.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, token) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(*role);
            }
        }
        found
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller(pub(crate) Role);

impl Caller {
    /// `403` unless the caller has `role` (or a higher one).
    pub(crate) fn require(self, role: Role) -> Result<Self, AppError> {
        if self.0 >= role {
            Ok(self)
        } else {
            Err(AppError::Forbidden(role))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AppError::Unauthorized)?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or(AppError::Unauthorized)?;
        state
            .tokens
            .role_of(token.trim().as_bytes())
            .map(Caller)
            .ok_or(AppError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_tokens_per_role_are_accepted() {
        let t = Tokens::parse(
            "admin=aaaaaaaaaaaaaaaa, creator=cccccccccccccccc,creator=dddddddddddddddd",
        )
        .unwrap();
        assert_eq!(t.role_of(b"dddddddddddddddd"), Some(Role::Creator));
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaaa"), Some(Role::Admin));
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaab"), None);
    }

    #[test]
    fn a_bad_configuration_is_rejected_without_echoing_tokens() {
        let err = Tokens::parse("root=supersecrettoken123")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("root") && !err.contains("supersecret"),
            "{err}"
        );
        assert!(matches!(
            Tokens::parse("admin=short"),
            Err(TokensError::TooShort(1))
        ));
        assert!(matches!(Tokens::parse(""), Err(TokensError::Empty)));
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Caller(Role::Admin).require(Role::Creator).is_ok());
        assert!(Caller(Role::Viewer).require(Role::Creator).is_err());
    }
}
