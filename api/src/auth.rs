//! Bearer tokens from configuration, with roles. Tokens are compared in constant time and never
//! logged or echoed.

use crate::AppState;
use crate::error::AppError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::marker::PhantomData;
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

/// Who a token speaks for: its role, and the person it was given to when the operator named
/// one (`creator:mina=<token>`). Every decision, signal and policy change records it (see
/// [`Who::recorded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub role: Role,
    /// Letters, digits and `._@-`, at most 64 characters.
    pub name: Option<String>,
}

impl Who {
    /// What is recorded as `by`: `api:<role>`, then the token's name (`api:creator mina`). A
    /// caller's own `by` may add a name to an unnamed token (`api:creator mina`, as before named
    /// tokens), never a role; with a named token it may only repeat that name: a creator cannot
    /// write another person into the record.
    pub(crate) fn recorded(&self, said: Option<&str>) -> Result<String, AppError> {
        let role = format!("api:{}", self.role.as_str());
        let said = said.map(str::trim).filter(|s| !s.is_empty() && *s != role);
        match (&self.name, said) {
            (Some(name), None) => Ok(format!("{role} {name}")),
            (Some(name), Some(said)) if said == name || said == format!("{role} {name}") => {
                Ok(format!("{role} {name}"))
            }
            (Some(name), Some(_)) => Err(retake_domain::ValidationError::single(
                "by",
                format!("this token speaks for {name}: leave `by` out, or give {name}"),
            )
            .into()),
            (None, None) => Ok(role),
            (None, Some(said)) => Ok(format!("{role} {said}")),
        }
    }

    /// How pages name the signed-in person: `mina (creator)`, or the role alone.
    pub(crate) fn shown(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} ({})", self.role.as_str()),
            None => self.role.as_str().to_owned(),
        }
    }
}

/// Why a token configuration is invalid (the token itself is never part of the message).
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("RETAKE_API_TOKENS entry {0} is not ROLE=TOKEN or ROLE:NAME=TOKEN")]
    Malformed(usize),
    #[error("RETAKE_API_TOKENS entry {0}: a name is 1 to 64 letters, digits or ._@- (got {1:?})")]
    BadName(usize, String),
    #[error("RETAKE_API_TOKENS entry {0}: unknown role {1:?} (use admin, creator or viewer)")]
    UnknownRole(usize, String),
    #[error("RETAKE_API_TOKENS entry {0}: tokens must be at least 16 characters")]
    TooShort(usize),
    #[error("RETAKE_API_TOKENS names no token")]
    Empty,
    #[error("--user-header {0:?} is not an HTTP header name")]
    BadHeader(String),
    /// One token under two entries: with different roles the caller's role would depend on the
    /// order of the list, so the configuration is refused rather than guessed at.
    #[error(
        "RETAKE_API_TOKENS entries {0} and {1} give the same token; every token must appear once, under one role"
    )]
    Duplicate(usize, usize),
}

/// The configured tokens, and the header of a trusted auth proxy that names the person, if the
/// operator opted in to one.
pub struct Tokens(Vec<(Who, Vec<u8>)>, Option<axum::http::HeaderName>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Parse `admin=<token>,creator=<token>,viewer=<token>` (several per role allowed); a role
    /// may name the person the token is for: `creator:mina=<token>`.
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
            let (role, name) = match role.split_once(':') {
                Some((role, name)) => (role, Some(name.trim())),
                None => (role, None),
            };
            if let Some(name) = name
                && !valid_name(name)
            {
                return Err(TokensError::BadName(n, name.to_owned()));
            }
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
            if let Some(first) = tokens
                .iter()
                .position(|(_, t): &(Who, Vec<u8>)| t.as_slice() == token.as_bytes())
            {
                return Err(TokensError::Duplicate(first + 1, n));
            }
            let who = Who {
                role,
                name: name.map(str::to_owned),
            };
            tokens.push((who, token.as_bytes().to_vec()));
        }
        if tokens.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Self(tokens, None))
    }

    /// Take the person's name from `header` when a request carries it, as an authenticating
    /// proxy in front of the API sends it (oauth2-proxy: `X-Forwarded-User` or
    /// `X-Auth-Request-User`). The token still decides the role. Only for an API that nothing
    /// but that proxy can reach: anyone else could write any name into the header.
    pub fn trusting_user_header(mut self, header: &str) -> Result<Self, TokensError> {
        let name = axum::http::HeaderName::try_from(header.trim())
            .map_err(|_| TokensError::BadHeader(header.to_owned()))?;
        self.1 = Some(name);
        Ok(self)
    }

    /// Who `presented` speaks for, with the trusted proxy's name from `headers` when it is
    /// configured and present (it replaces the token's own name). A name that is not 1–64
    /// letters, digits or `._@-` is refused: the request is treated as unauthenticated.
    pub(crate) fn who_with(
        &self,
        presented: &[u8],
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Who>, AppError> {
        let Some(mut who) = self.who(presented) else {
            return Ok(None);
        };
        if let Some(header) = &self.1
            && let Some(value) = headers.get(header)
        {
            let name = value.to_str().unwrap_or("").trim();
            if !valid_name(name) {
                return Err(retake_domain::ValidationError::single(
                    header.as_str(),
                    "the proxy's user name must be 1 to 64 letters, digits or ._@-",
                )
                .into());
            }
            who.name = Some(name.to_owned());
        }
        Ok(Some(who))
    }

    /// Who `presented` speaks for, comparing against every token in constant time.
    pub(crate) fn who(&self, presented: &[u8]) -> Option<Who> {
        let mut found = None;
        for (who, token) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(who);
            }
        }
        found.cloned()
    }

    #[cfg(test)]
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        self.who(presented).map(|w| w.role)
    }
}

/// A person's name in a token entry: short, and plain enough to show and record as it is.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// The lowest role an endpoint needs, as a type, so the role is checked by the extractor: before
/// the path or the body is looked at (a viewer's malformed write is a 403, not a 422).
pub(crate) trait Need: Send + Sync {
    const ROLE: Role;
}

/// Markers for [`Caller`].
pub(crate) mod need {
    use super::{Need, Role};

    /// Reads.
    pub(crate) struct Viewer;
    /// Starting and steering retries.
    pub(crate) struct Creator;
    /// Policies and budgets.
    pub(crate) struct Admin;

    impl Need for Viewer {
        const ROLE: Role = Role::Viewer;
    }
    impl Need for Creator {
        const ROLE: Role = Role::Creator;
    }
    impl Need for Admin {
        const ROLE: Role = Role::Admin;
    }
}

/// An authenticated caller whose role is at least `N::ROLE` (401 without a known token, 403
/// with too low a role).
pub(crate) struct Caller<N> {
    /// The caller's own role (may be higher than needed) and name; names them in `by` fields.
    pub(crate) who: Who,
    need: PhantomData<N>,
}

impl<N: Need> FromRequestParts<AppState> for Caller<N> {
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
        let who = state
            .tokens
            .who_with(token.trim().as_bytes(), &parts.headers)?
            .ok_or(AppError::Unauthorized)?;
        if who.role < N::ROLE {
            return Err(AppError::Forbidden(N::ROLE));
        }
        Ok(Caller {
            who,
            need: PhantomData,
        })
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
    fn a_token_may_name_the_person_it_was_given_to() {
        let t = Tokens::parse("creator:mina=cccccccccccccccc, creator=dddddddddddddddd").unwrap();
        let mina = t.who(b"cccccccccccccccc").unwrap();
        assert_eq!(
            (mina.role, mina.name.as_deref()),
            (Role::Creator, Some("mina"))
        );
        assert_eq!(t.who(b"dddddddddddddddd").unwrap().name, None);
        for bad in [
            "creator:=cccccccccccccccc",
            "creator:mi na=cccccccccccccccc",
        ] {
            let err = Tokens::parse(bad).unwrap_err();
            assert!(matches!(err, TokensError::BadName(1, _)), "{bad}: {err}");
            assert!(!err.to_string().contains("cccc"), "{err}");
        }
    }

    #[test]
    fn a_named_token_is_recorded_by_its_name_and_no_caller_can_write_another() {
        let mina = Who {
            role: Role::Creator,
            name: Some("mina".into()),
        };
        let anon = Who {
            role: Role::Creator,
            name: None,
        };
        assert_eq!(mina.recorded(None).unwrap(), "api:creator mina");
        assert_eq!(mina.recorded(Some("mina")).unwrap(), "api:creator mina");
        assert_eq!(
            mina.recorded(Some("api:creator mina")).unwrap(),
            "api:creator mina"
        );
        assert_eq!(mina.recorded(Some(" ")).unwrap(), "api:creator mina");
        let refused = mina.recorded(Some("jun")).unwrap_err().to_string();
        assert!(refused.contains("mina"), "{refused}");
        assert!(mina.recorded(Some("api:admin")).is_err());
        assert_eq!(anon.recorded(Some("jun")).unwrap(), "api:creator jun");
        assert_eq!(anon.recorded(None).unwrap(), "api:creator");
        assert_eq!(mina.shown(), "mina (creator)");
        assert_eq!(anon.shown(), "creator");
    }

    #[test]
    fn a_trusted_proxys_user_header_names_the_person_and_the_token_keeps_the_role() {
        let t = Tokens::parse("creator:mina=cccccccccccccccc")
            .unwrap()
            .trusting_user_header("X-Forwarded-User")
            .unwrap();
        let mut headers = axum::http::HeaderMap::new();
        let mina = t.who_with(b"cccccccccccccccc", &headers).unwrap().unwrap();
        assert_eq!(mina.name.as_deref(), Some("mina"));
        headers.insert("x-forwarded-user", "jun@studio".parse().unwrap());
        let jun = t.who_with(b"cccccccccccccccc", &headers).unwrap().unwrap();
        assert_eq!(
            (jun.role, jun.name.as_deref()),
            (Role::Creator, Some("jun@studio"))
        );
        assert!(
            t.who_with(b"wrong-token-000000", &headers)
                .unwrap()
                .is_none()
        );
        headers.insert("x-forwarded-user", "api:admin x".parse().unwrap());
        assert!(t.who_with(b"cccccccccccccccc", &headers).is_err());
        assert!(matches!(
            Tokens::parse("creator=cccccccccccccccc")
                .unwrap()
                .trusting_user_header("not a header"),
            Err(TokensError::BadHeader(_))
        ));
        // Without the opt-in the header is nobody's word.
        let plain = Tokens::parse("creator:mina=cccccccccccccccc").unwrap();
        let still = plain
            .who_with(b"cccccccccccccccc", &headers)
            .unwrap()
            .unwrap();
        assert_eq!(still.name.as_deref(), Some("mina"));
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin >= <need::Creator as Need>::ROLE);
        assert!(Role::Viewer < <need::Creator as Need>::ROLE);
    }

    #[test]
    fn one_token_for_two_roles_is_refused_naming_both_entries() {
        let err = Tokens::parse(
            "admin=aaaaaaaaaaaaaaaa,creator=cccccccccccccccc,viewer=aaaaaaaaaaaaaaaa",
        )
        .unwrap_err();
        assert!(matches!(err, TokensError::Duplicate(1, 3)), "{err}");
        assert!(!err.to_string().contains("aaaa"), "{err}");
        assert!(matches!(
            Tokens::parse("creator=cccccccccccccccc, creator=cccccccccccccccc"),
            Err(TokensError::Duplicate(1, 2))
        ));
    }
}
