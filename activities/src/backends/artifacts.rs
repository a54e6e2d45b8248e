//! Where text outputs live: files under a directory, referenced by `file://` URIs, so Temporal
//! payloads carry a reference and never the text.

use crate::files::{FileError, FileRoots};
use crate::io::AttemptKey;
use crate::ports::BackendError;
use std::path::{Path, PathBuf};

/// The largest text read back (a draft to revise, a chapter to judge): far beyond a chapter,
/// small enough that a wrong file cannot fill the worker's memory or an LLM request.
pub const TEXT_LIMIT: u64 = 4 * 1024 * 1024;

/// A directory of outputs, one file per attempt, and the folders text may be read from.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
    roots: FileRoots,
}

impl Artifacts {
    /// Outputs written to `dir`, and read back only from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            roots: FileRoots::new([dir.clone()]),
            dir,
        }
    }

    /// Outputs written to `dir`, read back from `dir` and `roots` (drafts a pipeline keeps
    /// elsewhere, in folders the operator named).
    pub fn with_roots(dir: impl Into<PathBuf>, roots: FileRoots) -> Self {
        let dir = dir.into();
        Self {
            roots: roots.with(dir.clone()),
            dir,
        }
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

    /// Read a text output by URI: `file://` from disk, `http(s)://` with a GET.
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
                let client = crate::backends::wire::client(std::time::Duration::from_secs(60))
                    .map_err(BackendError::Transient)?;
                let body = crate::backends::wire::bytes(uri, client.get(url)).await?;
                String::from_utf8(body)
                    .map_err(|_| BackendError::Rejected(format!("{uri} is not UTF-8 text")))
            }
            other => Err(BackendError::Rejected(format!(
                "{uri}: unsupported scheme {other:?} (file, http, https)"
            ))),
        }
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
}
