//! Which `http(s)` URLs retake may GET: only those under the URL prefixes an operator configures
//! (and, in a worker, its backends' own base URLs, where their outputs live).
//!
//! Why this exists: a creator's `params.output_uri` (the draft to revise) reaches the worker,
//! and the OpenAI-compatible generator and the LLM judge read the text it names. With any
//! `http(s)` URL read, a creator could make the worker GET whatever it can reach (cloud metadata
//! at `169.254.169.254`, an admin port on localhost) and send the answer to the LLM: a
//! server-side request forgery. So every GET of a text goes through [`UrlRoots::check`], on the
//! parsed URL, and so does every redirect it meets (see `backends::artifacts`).
//!
//! A URL is inside a root when its scheme, host and port are the root's exactly (the port as
//! written or the scheme's default), its path starts with the root's path segment by segment
//! (`/drafts` admits `/drafts/ch12.md`, never `/drafts-old/…`), and it carries no user name or
//! password. The URL parser has already resolved `.`/`..` segments (also percent-encoded ones)
//! and spelled the host one way (lower case, IPv4 in dotted decimal); a path that still holds a
//! percent-encoded `/`, `\`, `.` or `%` is refused, as a server could decode it into a way out.
//!
//! What is not covered: the name a root's host resolves to is the operator's DNS; a root that
//! names a host is trusted for whatever that name points at.

use std::fmt;
use std::str::FromStr;

/// Why a URL may not be read, or a root not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not an `http` or `https` URL.
    #[error("{uri:?} is not an http or https URL")]
    NotHttp { uri: String },
    /// Outside every configured root (or carrying a user name, a password or an encoded path
    /// separator).
    #[error("{uri} is outside the URLs retake may read ({roots})")]
    OutsideRoots { uri: String, roots: String },
    /// A configured root that cannot be one.
    #[error("URL root {root:?}: {message}")]
    BadRoot { root: String, message: String },
}

/// One URL prefix whose URLs may be read: `http(s)://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlRoot {
    scheme: String,
    host: url::Host<String>,
    port: u16,
    /// The path's segments, percent-encoded as parsed, without a trailing empty one.
    segments: Vec<String>,
    shown: String,
}

impl fmt::Display for UrlRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl FromStr for UrlRoot {
    type Err = UrlError;

    /// An `http` or `https` URL with a host, no user name or password, no query or fragment.
    fn from_str(raw: &str) -> Result<Self, UrlError> {
        let bad = |message: &str| UrlError::BadRoot {
            root: raw.to_owned(),
            message: message.to_owned(),
        };
        let url = url::Url::parse(raw.trim()).map_err(|e| bad(&format!("not a URL: {e}")))?;
        let Some(parts) = Parts::of(&url) else {
            return Err(bad(
                "must be an http or https URL with a host, without a user name or password, and \
                 without encoded `/`, `\\`, `.` or `%` in its path",
            ));
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("must not have a query or a fragment"));
        }
        Ok(Self {
            scheme: parts.scheme,
            host: parts.host,
            port: parts.port,
            segments: parts.segments,
            shown: url.to_string(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for UrlRoot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl UrlRoot {
    fn admits(&self, parts: &Parts) -> bool {
        parts.scheme == self.scheme
            && parts.host == self.host
            && parts.port == self.port
            && parts.segments.starts_with(&self.segments)
    }
}

/// What of a parsed URL is compared; `None` for a URL no root can admit.
struct Parts {
    scheme: String,
    host: url::Host<String>,
    port: u16,
    segments: Vec<String>,
}

impl Parts {
    fn of(url: &url::Url) -> Option<Self> {
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return None;
        }
        let host = url.host()?.to_owned();
        let port = url.port_or_known_default()?;
        let path = url.path().to_ascii_lowercase();
        if ["%2f", "%5c", "%2e", "%25"]
            .iter()
            .any(|e| path.contains(e))
        {
            return None;
        }
        let mut segments: Vec<String> = url.path_segments()?.map(str::to_owned).collect();
        if segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        Some(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
            segments,
        })
    }
}

/// The URL prefixes under which retake may GET a text. None by default: no `http(s)` URL is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlRoots {
    roots: Vec<UrlRoot>,
}

impl UrlRoots {
    /// These roots (each once).
    pub fn new(roots: impl IntoIterator<Item = UrlRoot>) -> Self {
        roots.into_iter().fold(Self::default(), Self::with)
    }

    /// These roots and `root` too (a worker adds its backends' base URLs).
    #[must_use]
    pub fn with(mut self, root: UrlRoot) -> Self {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        self
    }

    /// The roots, as configured.
    pub fn roots(&self) -> &[UrlRoot] {
        &self.roots
    }

    fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "none configured".to_owned();
        }
        self.roots
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the parsed `url` lies inside a root (what a redirect is checked with, too).
    pub fn check(&self, url: &url::Url) -> Result<(), UrlError> {
        let inside = Parts::of(url).is_some_and(|p| self.roots.iter().any(|r| r.admits(&p)));
        if inside {
            Ok(())
        } else {
            Err(UrlError::OutsideRoots {
                uri: url.to_string(),
                roots: self.describe(),
            })
        }
    }

    /// [`UrlRoots::check`] of `uri`, which must be an `http` or `https` URL: what the API checks
    /// of a creator's `output_uri`.
    pub fn admits_uri(&self, uri: &str) -> Result<url::Url, UrlError> {
        let not = || UrlError::NotHttp {
            uri: uri.to_owned(),
        };
        let url = url::Url::parse(uri).map_err(|_| not())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(not());
        }
        self.check(&url)?;
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(list: &[&str]) -> UrlRoots {
        UrlRoots::new(list.iter().map(|r| r.parse::<UrlRoot>().unwrap()))
    }

    #[test]
    fn a_url_under_a_root_is_admitted() {
        let r = roots(&[
            "http://drafts.internal:8080/novel-7/",
            "https://cdn.example",
        ]);
        for ok in [
            "http://drafts.internal:8080/novel-7/ch12.md",
            "http://drafts.internal:8080/novel-7/a/b/ch12.md?v=2",
            "http://drafts.internal:8080/novel-7",
            "http://DRAFTS.internal:8080/novel-7/ch12.md",
            "https://cdn.example/anything.md",
            "https://cdn.example:443/anything.md",
            // `.` and `..` inside the root are resolved by the parser and stay inside.
            "http://drafts.internal:8080/novel-7/a/../ch12.md",
        ] {
            assert!(r.admits_uri(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn no_roots_means_no_url_is_read() {
        let r = UrlRoots::default();
        let err = r.admits_uri("http://127.0.0.1:9000/secret").unwrap_err();
        assert!(
            err.to_string()
                .contains("outside the URLs retake may read (none configured)"),
            "{err}"
        );
    }

    #[test]
    fn hostile_urls_are_refused() {
        let r = roots(&["http://drafts.internal:8080/novel-7"]);
        for bad in [
            // Another origin: host, port, scheme.
            "http://127.0.0.1:8080/novel-7/ch12.md",
            "http://169.254.169.254/latest/meta-data/",
            "http://drafts.internal:8081/novel-7/ch12.md",
            "http://drafts.internal/novel-7/ch12.md",
            "https://drafts.internal:8080/novel-7/ch12.md",
            "http://drafts.internal.evil.com:8080/novel-7/ch12.md",
            "http://drafts.internal.:8080/novel-7/ch12.md",
            // The allowed host as user info, the real host after `@`.
            "http://drafts.internal:8080@127.0.0.1:8080/novel-7/ch12.md",
            "http://drafts.internal:8080/novel-7@127.0.0.1/x",
            // User info on the right origin.
            "http://user:pw@drafts.internal:8080/novel-7/ch12.md",
            // A path that only shares a prefix of characters, not of segments.
            "http://drafts.internal:8080/novel-7-secrets/keys",
            "http://drafts.internal:8080/novel-",
            "http://drafts.internal:8080/",
            // Out of the root by `..`, written plainly, percent-encoded or with backslashes.
            "http://drafts.internal:8080/novel-7/../admin",
            "http://drafts.internal:8080/novel-7/%2e%2e/admin",
            "http://drafts.internal:8080/novel-7/.%2E/admin",
            "http://drafts.internal:8080/novel-7\\..\\admin",
            // Encoded separators and double encoding a server might decode into a way out.
            "http://drafts.internal:8080/novel-7/..%2fadmin",
            "http://drafts.internal:8080/novel-7/%2e%2e%5cadmin",
            "http://drafts.internal:8080/novel-7/%252e%252e/admin",
        ] {
            assert!(
                matches!(r.admits_uri(bad), Err(UrlError::OutsideRoots { .. })),
                "{bad} was admitted"
            );
        }
        for not_http in [
            "file:///etc/passwd",
            "ftp://drafts.internal:8080/novel-7/x",
            "nope",
        ] {
            assert!(
                matches!(r.admits_uri(not_http), Err(UrlError::NotHttp { .. })),
                "{not_http}"
            );
        }
    }

    #[test]
    fn an_ip_address_is_compared_as_parsed_not_as_written() {
        let r = roots(&["http://10.0.0.7:9000/drafts"]);
        // Hex, decimal and octal spellings of the same address are that address.
        assert!(r.admits_uri("http://0xa.0.0.7:9000/drafts/x.md").is_ok());
        assert!(r.admits_uri("http://167772167:9000/drafts/x.md").is_ok());
        // Loopback in any spelling is another host.
        for bad in [
            "http://0x7f000001:9000/drafts/x.md",
            "http://2130706433:9000/drafts/x.md",
            "http://127.1:9000/drafts/x.md",
            "http://[::1]:9000/drafts/x.md",
            "http://[::ffff:10.0.0.8]:9000/drafts/x.md",
        ] {
            assert!(r.admits_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_root_with_user_info_a_query_or_another_scheme_is_not_a_root() {
        for bad in [
            "http://u:p@drafts.internal/",
            "http://drafts.internal/?x=1",
            "http://drafts.internal/#frag",
            "file:///drafts",
            "ftp://drafts.internal/",
            "drafts.internal/novel-7",
            "http://drafts.internal/%2e%2e%2fetc",
        ] {
            assert!(
                matches!(bad.parse::<UrlRoot>(), Err(UrlError::BadRoot { .. })),
                "{bad}"
            );
        }
    }
}
