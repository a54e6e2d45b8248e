//! Where text outputs live: files under a directory, referenced by `file://` URIs, so Temporal
//! payloads carry a reference and never the text.

use crate::files::{FileError, FileRoots};
use crate::io::AttemptKey;
use crate::ports::BackendError;
use crate::urls::UrlRoots;
use std::path::{Path, PathBuf};

/// The largest text read back (a draft to revise, a chapter to judge): far beyond a chapter,
/// small enough that a wrong file cannot fill the worker's memory or an LLM request.
pub const TEXT_LIMIT: u64 = 4 * 1024 * 1024;

/// How many redirects a GET of a text follows, each checked against the URL roots.
const MAX_REDIRECTS: usize = 5;

/// A directory of outputs, one file per attempt, and the folders and URL prefixes text may be
/// read from.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    roots: FileRoots,
    urls: UrlRoots,
}

impl Artifacts {
    /// Outputs written to `dir`, and read back only from `dir`; no `http(s)` URL is read.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            roots: FileRoots::new([dir.clone()]),
            dir,
            urls: UrlRoots::default(),
        }
    }

    /// Outputs written to `dir`, read back from `dir` and `roots` (drafts a pipeline keeps
    /// elsewhere, in folders the operator named).
    pub fn with_roots(dir: impl Into<PathBuf>, roots: FileRoots) -> Self {
        let dir = dir.into();
        Self {
            roots: roots.with(dir.clone()),
            dir,
            urls: UrlRoots::default(),
        }
    }

    /// These artifacts, reading `http(s)` texts only under `urls` (and nowhere else).
    #[must_use]
    pub fn with_urls(mut self, urls: UrlRoots) -> Self {
        self.urls = urls;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &AttemptKey, ext: &str) -> PathBuf {
        self.dir.join(format!(
            "{}/{}/attempt-{}.{ext}",
            sanitize(&key.workflow_id),
            sanitize(&key.run_id),
            key.attempt
        ))
    }

    /// The attempt's output and the GPU milliseconds recorded with it, if a previous run of the
    /// same attempt finished writing it (a worker killed after generating but before reporting):
    /// the re-run reuses it instead of generating, and paying, again.
    pub async fn existing(&self, key: &AttemptKey, ext: &str) -> Option<(String, u64)> {
        let path = self.path(key, ext);
        let meta = tokio::fs::read_to_string(path.with_extension(format!("{ext}.gpu_ms")))
            .await
            .ok()?;
        let gpu_ms = meta.trim().parse().ok()?;
        let abs = std::path::absolute(&path).ok()?;
        let uri = url::Url::from_file_path(&abs).ok()?;
        tokio::fs::metadata(&path).await.ok()?;
        Some((uri.into(), gpu_ms))
    }

    /// [`Artifacts::put`], then record the GPU time it took, which marks the output complete for
    /// [`Artifacts::existing`].
    pub async fn put_complete(
        &self,
        key: &AttemptKey,
        ext: &str,
        data: &[u8],
        gpu_ms: u64,
    ) -> Result<String, BackendError> {
        let uri = self.put(key, ext, data).await?;
        let meta = self.path(key, ext).with_extension(format!("{ext}.gpu_ms"));
        tokio::fs::write(&meta, gpu_ms.to_string())
            .await
            .map_err(|e| BackendError::Transient(format!("writing {}: {e}", meta.display())))?;
        Ok(uri)
    }

    /// Write the attempt's output (atomically: a re-run attempt replaces it whole) and return its
    /// `file://` URI.
    pub async fn put(
        &self,
        key: &AttemptKey,
        ext: &str,
        data: &[u8],
    ) -> Result<String, BackendError> {
        let path = self.path(key, ext);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        let io =
            |e: std::io::Error| BackendError::Transient(format!("writing {}: {e}", path.display()));
        tokio::fs::create_dir_all(&parent).await.map_err(io)?;
        let tmp = path.with_extension(format!("{ext}.tmp"));
        tokio::fs::write(&tmp, data).await.map_err(io)?;
        tokio::fs::rename(&tmp, &path).await.map_err(io)?;
        let abs = std::path::absolute(&path).map_err(io)?;
        url::Url::from_file_path(&abs)
            .map(String::from)
            .map_err(|()| {
                BackendError::Rejected(format!("{} is not a valid file path", abs.display()))
            })
    }

    /// Read a text output by URI: `file://` from disk under the file roots, `http(s)://` with a
    /// GET under the URL roots (a redirect is followed only to a URL inside them too). Anything
    /// outside is refused before a byte is read or a request sent.
    pub async fn get_text(&self, uri: &str) -> Result<String, BackendError> {
        let url = url::Url::parse(uri)
            .map_err(|e| BackendError::Rejected(format!("{uri:?} is not a URI: {e}")))?;
        match url.scheme() {
            "file" => match self.roots.open_text(uri, TEXT_LIMIT).await {
                Ok((_, true)) => Err(BackendError::Rejected(format!(
                    "{uri} is larger than {TEXT_LIMIT} bytes"
                ))),
                Ok((text, false)) => Ok(text),
                Err(e @ FileError::Io { .. }) => Err(BackendError::Transient(e.to_string())),
                Err(e) => Err(BackendError::Rejected(e.to_string())),
            },
            "http" | "https" => {
                self.urls
                    .check(&url)
                    .map_err(|e| BackendError::Rejected(e.to_string()))?;
                let client = self.http_client()?;
                let body = match client.get(url).send().await {
                    Err(e) if e.is_redirect() => {
                        return Err(BackendError::Rejected(format!(
                            "{uri}: {}",
                            crate::backends::wire::describe(&e)
                        )));
                    }
                    sent => crate::backends::wire::bytes_of(uri, sent).await?,
                };
                String::from_utf8(body)
                    .map_err(|_| BackendError::Rejected(format!("{uri} is not UTF-8 text")))
            }
            other => Err(BackendError::Rejected(format!(
                "{uri}: unsupported scheme {other:?} (file, http, https)"
            ))),
        }
    }
}

impl Artifacts {
    /// A client that follows a redirect only to a URL inside the URL roots, at most
    /// [`MAX_REDIRECTS`] times.
    fn http_client(&self) -> Result<reqwest::Client, BackendError> {
        let urls = self.urls.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match urls.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(format!("redirected: {e}")),
            }
        });
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .redirect(policy)
            .build()
            .map_err(|e| BackendError::Transient(format!("cannot build an HTTP client: {e}")))
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_output_is_written_once_and_read_back_by_its_uri() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path());
        let key = AttemptKey {
            workflow_id: "segment-retry-ch/12".into(),
            run_id: "r1".into(),
            attempt: 2,
        };
        let uri = a.put(&key, "md", "12화 본문".as_bytes()).await.unwrap();
        assert!(
            uri.starts_with("file://") && uri.ends_with("segment-retry-ch_12/r1/attempt-2.md"),
            "{uri}"
        );
        assert_eq!(a.get_text(&uri).await.unwrap(), "12화 본문");
        let again = a.put(&key, "md", b"v2").await.unwrap();
        assert_eq!(again, uri);
        assert_eq!(a.get_text(&uri).await.unwrap(), "v2");
    }

    #[tokio::test]
    async fn a_completed_output_is_found_again_with_its_gpu_time_but_a_partial_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path());
        let key = AttemptKey {
            workflow_id: "w".into(),
            run_id: "r".into(),
            attempt: 1,
        };
        a.put(&key, "md", b"half").await.unwrap();
        assert_eq!(
            a.existing(&key, "md").await,
            None,
            "no GPU time recorded: not complete"
        );
        let uri = a.put_complete(&key, "md", b"whole", 1234).await.unwrap();
        assert_eq!(a.existing(&key, "md").await, Some((uri, 1234)));
    }

    #[tokio::test]
    async fn a_draft_outside_the_roots_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(dir.path().join("artifacts"));
        let err = a.get_text("file:///proc/self/environ").await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Rejected(m) if m.contains("outside the folders")),
            "{err}"
        );
        let drafts = dir.path().join("drafts");
        std::fs::create_dir_all(&drafts).unwrap();
        std::fs::write(drafts.join("ch12.md"), "draft").unwrap();
        let uri = String::from(url::Url::from_file_path(drafts.join("ch12.md")).unwrap());
        assert!(a.get_text(&uri).await.is_err());
        let a = Artifacts::with_roots(dir.path().join("artifacts"), FileRoots::new([drafts]));
        assert_eq!(a.get_text(&uri).await.unwrap(), "draft");
    }

    #[tokio::test]
    async fn a_missing_output_or_an_odd_scheme_is_rejected() {
        let a = Artifacts::new("/nonexistent");
        assert!(matches!(
            a.get_text("file:///nonexistent/x.md").await,
            Err(BackendError::Rejected(_))
        ));
        assert!(matches!(
            a.get_text("s3://b/k").await,
            Err(BackendError::Rejected(_))
        ));
    }

    /// A server with a draft under `/drafts`, a redirect out of it, and a secret; it counts
    /// every request it hears.
    async fn drafts_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let heard = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = heard.clone();
        let app = axum::Router::new()
            .route(
                "/drafts/ch12.md",
                axum::routing::get(|| async { "12화 초고" }),
            )
            .route(
                "/drafts/moved.md",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/drafts/ch12.md")],
                    )
                }),
            )
            .route(
                "/drafts/escape.md",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/secret")],
                    )
                }),
            )
            .route("/secret", axum::routing::get(|| async { "admin=hunter2" }))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let counted = counted.clone();
                    async move {
                        if req.uri().path() == "/secret" {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        next.run(req).await
                    }
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), heard)
    }

    fn under(base: &str, path: &str) -> Artifacts {
        let dir = std::env::temp_dir().join("retake-artifacts-unused");
        Artifacts::new(dir).with_urls(UrlRoots::new([format!("{base}{path}").parse().unwrap()]))
    }

    #[tokio::test]
    async fn an_http_draft_is_read_only_under_a_url_root_and_nothing_else_is_requested() {
        let (base, secret_hits) = drafts_server().await;
        let draft = format!("{base}/drafts/ch12.md");
        let secret = format!("{base}/secret");
        // No URL roots (the default): not even the draft is fetched.
        let none = Artifacts::new("/nonexistent");
        for uri in [&draft, &secret] {
            let err = none.get_text(uri).await.unwrap_err();
            assert!(
                matches!(&err, BackendError::Rejected(m) if m.contains("outside the URLs retake may read")),
                "{uri}: {err}"
            );
        }
        let a = under(&base, "/drafts/");
        assert_eq!(a.get_text(&draft).await.unwrap(), "12화 초고");
        for uri in [
            secret.clone(),
            format!("{base}/drafts/../secret"),
            format!("{base}/drafts/%2e%2e/secret"),
            format!("{base}/drafts/..%2fsecret"),
        ] {
            let err = a.get_text(&uri).await.unwrap_err();
            assert!(matches!(err, BackendError::Rejected(_)), "{uri}: {err}");
        }
        assert_eq!(
            secret_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the secret was requested"
        );
    }

    #[tokio::test]
    async fn a_redirect_is_followed_only_inside_the_url_roots() {
        let (base, secret_hits) = drafts_server().await;
        let a = under(&base, "/drafts");
        assert_eq!(
            a.get_text(&format!("{base}/drafts/moved.md"))
                .await
                .unwrap(),
            "12화 초고"
        );
        let err = a
            .get_text(&format!("{base}/drafts/escape.md"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Rejected(m) if m.contains("outside the URLs retake may read")),
            "{err}"
        );
        assert_eq!(
            secret_hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the redirect reached the secret"
        );
    }
}
