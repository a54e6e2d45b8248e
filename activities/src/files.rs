//! Which local files retake may open: only those under the folders an operator configures (the
//! artifacts folder by default).
//!
//! Why this exists: a `file://` URI reaches retake from outside — a creator's `params.output_uri`
//! (the draft to revise), a backend's `output_uri` — and both the API (the console shows text
//! outputs and diffs drafts) and the worker (the OpenAI-compatible generator sends the draft to
//! the LLM, the judge reads the chapter) used to read whatever it named. `file:///proc/self/environ`
//! showed every API token to any viewer. So every read of a local file goes through
//! [`FileRoots::open_text`], which resolves the path (symlinks, `..`) with the file system and
//! refuses anything that does not land inside a root. URIs outside are still shown as text, never
//! read.
//!
//! What is not covered: someone who can already write inside a root can swap a checked file for a
//! symlink between the check and the open; the open refuses a symlink in the last component
//! (`O_NOFOLLOW`), not in a folder above it. Roots are folders the operator gives retake to
//! write and read, so that is no one outside.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

/// The default root: the folder text outputs are written to (see `backends::artifacts`).
pub const DEFAULT_ROOT: &str = ".retake/artifacts";

/// Why a file was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Not a `file://` URI naming an absolute local path.
    #[error("{uri:?} is not a local file URI")]
    NotAFileUri { uri: String },
    /// The path is outside every configured root (after resolving symlinks and `..`), or names
    /// something that is not a regular file.
    #[error("{uri} is outside the folders retake may read ({roots})")]
    OutsideRoots { uri: String, roots: String },
    /// Nothing at that path.
    #[error("{uri}: no such file")]
    NotFound { uri: String },
    /// Reading failed (permissions, I/O).
    #[error("reading {uri}: {message}")]
    Io { uri: String, message: String },
}

/// The folders whose files retake may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

impl Default for FileRoots {
    /// Only [`DEFAULT_ROOT`], relative to the working directory.
    fn default() -> Self {
        Self::new([PathBuf::from(DEFAULT_ROOT)])
    }
}

impl FileRoots {
    /// These folders (made absolute against the working directory now; resolved again at every
    /// read, so a root created or moved later is honoured).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut all: Vec<PathBuf> = Vec::new();
        for root in roots {
            let root = std::path::absolute(&root).unwrap_or(root);
            if !all.contains(&root) {
                all.push(root);
            }
        }
        Self { roots: all }
    }

    /// These roots and `root` too (the worker always reads back its own artifacts folder).
    #[must_use]
    pub fn with(mut self, root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        self
    }

    /// The roots, as configured.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn describe(&self) -> String {
        if self.roots.is_empty() {
            return "none configured".to_owned();
        }
        self.roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn outside(&self, uri: &str) -> FileError {
        FileError::OutsideRoots {
            uri: uri.to_owned(),
            roots: self.describe(),
        }
    }

    /// Whether `uri` names a path inside a root as written, before touching the file system:
    /// what the API checks of a creator's `output_uri` (the file may not exist yet). `..`
    /// components are refused outright. [`FileRoots::open_text`] checks again, resolved.
    pub fn admits_uri(&self, uri: &str) -> Result<(), FileError> {
        let path = file_path(uri)?;
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(self.outside(uri));
        }
        // A root that exists is compared resolved (symlinks in the path and in the root itself,
        // such as /tmp on some systems); one not created yet, as written.
        let real = resolve(&path);
        let inside = self
            .roots
            .iter()
            .any(|root| match std::fs::canonicalize(root) {
                Ok(root) => real.as_ref().is_some_and(|p| p.starts_with(&root)),
                Err(_) => path.starts_with(root),
            });
        if inside {
            Ok(())
        } else {
            Err(self.outside(uri))
        }
    }

    fn resolved_roots(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter_map(|r| std::fs::canonicalize(r).ok())
            .collect()
    }

    /// The text of the regular file `uri` names, at most `limit` bytes of it (and whether it was
    /// cut), if it lies inside a root once symlinks and `..` are resolved. Invalid UTF-8 is
    /// replaced, not refused: a text output is shown as it is.
    pub fn read_text_blocking(&self, uri: &str, limit: u64) -> Result<(String, bool), FileError> {
        let path = file_path(uri)?;
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(self.outside(uri));
        }
        let real = match std::fs::canonicalize(&path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say "no such file" only for paths inside a root: outside, the answer must not
                // tell what exists.
                return Err(if self.admits_uri(uri).is_ok() {
                    FileError::NotFound {
                        uri: uri.to_owned(),
                    }
                } else {
                    self.outside(uri)
                });
            }
            Err(_) => return Err(self.outside(uri)),
        };
        if !self.resolved_roots().iter().any(|r| real.starts_with(r)) {
            return Err(self.outside(uri));
        }
        let io = |e: std::io::Error| FileError::Io {
            uri: uri.to_owned(),
            message: e.to_string(),
        };
        let file = open_no_follow(&real).map_err(|e| match e.raw_os_error() {
            Some(code) if code == libc_eloop() => self.outside(uri),
            _ => io(e),
        })?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(self.outside(uri));
        }
        let mut bytes = Vec::new();
        file.take(limit).read_to_end(&mut bytes).map_err(io)?;
        Ok((
            String::from_utf8_lossy(&bytes).into_owned(),
            meta.len() > limit,
        ))
    }

    /// [`FileRoots::read_text_blocking`] on a blocking thread.
    pub async fn open_text(&self, uri: &str, limit: u64) -> Result<(String, bool), FileError> {
        let roots = self.clone();
        let uri = uri.to_owned();
        tokio::task::spawn_blocking(move || roots.read_text_blocking(&uri, limit))
            .await
            .unwrap_or_else(|e| {
                Err(FileError::Io {
                    uri: String::new(),
                    message: e.to_string(),
                })
            })
    }
}

/// The absolute local path of a `file://` URI.
fn file_path(uri: &str) -> Result<PathBuf, FileError> {
    let not = || FileError::NotAFileUri {
        uri: uri.to_owned(),
    };
    let url = url::Url::parse(uri).map_err(|_| not())?;
    if url.scheme() != "file" {
        return Err(not());
    }
    let path = url.to_file_path().map_err(|()| not())?;
    if !path.is_absolute() {
        return Err(not());
    }
    Ok(path)
}

/// The resolved path of `path`, or of its nearest existing ancestor joined with the rest (for a
/// file not written yet).
fn resolve(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        rest.push(at.file_name()?.to_owned());
        at = at.parent()?;
        if let Ok(base) = std::fs::canonicalize(at) {
            return Some(rest.iter().rev().fold(base, |p, c| p.join(c)));
        }
    }
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

#[cfg(unix)]
fn libc_eloop() -> i32 {
    libc::ELOOP
}

#[cfg(not(unix))]
fn libc_eloop() -> i32 {
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(p: &Path) -> String {
        url::Url::from_file_path(p).unwrap().into()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        roots: FileRoots,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("artifacts");
        let outside = dir.path().join("secrets");
        std::fs::create_dir_all(root.join("segment-retry-5/r1")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("segment-retry-5/r1/attempt-1.md"), "draft").unwrap();
        std::fs::write(outside.join("tokens.txt"), "admin=hunter2").unwrap();
        let roots = FileRoots::new([root.clone()]);
        Fixture {
            _dir: dir,
            root,
            outside,
            roots,
        }
    }

    #[test]
    fn a_file_inside_a_root_is_read() {
        let f = fixture();
        let u = uri(&f.root.join("segment-retry-5/r1/attempt-1.md"));
        assert_eq!(
            f.roots.read_text_blocking(&u, 1024).unwrap(),
            ("draft".to_owned(), false)
        );
        assert_eq!(f.roots.admits_uri(&u), Ok(()));
    }

    #[test]
    fn the_process_environment_is_never_read() {
        let f = fixture();
        for u in ["file:///proc/self/environ", "file:///etc/passwd"] {
            assert!(
                matches!(
                    f.roots.read_text_blocking(u, 1024),
                    Err(FileError::OutsideRoots { .. })
                ),
                "{u}"
            );
            assert!(f.roots.admits_uri(u).is_err(), "{u}");
        }
    }

    #[test]
    fn dot_dot_out_of_a_root_is_refused_even_when_it_lands_on_a_real_file() {
        let f = fixture();
        let u = format!("{}/../secrets/tokens.txt", uri(&f.root));
        let err = f.roots.read_text_blocking(&u, 1024).unwrap_err();
        assert!(matches!(err, FileError::OutsideRoots { .. }), "{err}");
        // Percent-encoded dots are decoded by the URL parser before the check.
        let u = format!("{}/%2e%2e/secrets/tokens.txt", uri(&f.root));
        assert!(f.roots.read_text_blocking(&u, 1024).is_err());
        assert!(f.roots.admits_uri(&u).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_inside_a_root_pointing_out_of_it_is_refused() {
        let f = fixture();
        let link = f.root.join("segment-retry-5/r1/attempt-2.md");
        std::os::unix::fs::symlink(f.outside.join("tokens.txt"), &link).unwrap();
        let dir_link = f.root.join("escape");
        std::os::unix::fs::symlink(&f.outside, &dir_link).unwrap();
        for u in [uri(&link), uri(&dir_link.join("tokens.txt"))] {
            let err = f.roots.read_text_blocking(&u, 1024).unwrap_err();
            assert!(matches!(err, FileError::OutsideRoots { .. }), "{u}: {err}");
        }
        // admits_uri is lexical plus resolution of what exists: the folder symlink is caught.
        assert!(
            f.roots
                .admits_uri(&uri(&dir_link.join("tokens.txt")))
                .is_err()
        );
    }

    #[test]
    fn a_missing_file_says_so_only_inside_a_root() {
        let f = fixture();
        let inside = uri(&f.root.join("nope.md"));
        assert!(matches!(
            f.roots.read_text_blocking(&inside, 1024),
            Err(FileError::NotFound { .. })
        ));
        let outside = uri(&f.outside.join("nope.md"));
        assert!(matches!(
            f.roots.read_text_blocking(&outside, 1024),
            Err(FileError::OutsideRoots { .. })
        ));
    }

    #[test]
    fn a_folder_or_another_scheme_is_not_read() {
        let f = fixture();
        assert!(f.roots.read_text_blocking(&uri(&f.root), 1024).is_err());
        // `file:relative.md` is read by URL rules as `/relative.md`: outside, like any other.
        assert!(
            f.roots
                .read_text_blocking("file:relative.md", 1024)
                .is_err()
        );
        for u in ["https://example.com/a.md", "s3://b/k", "not a uri"] {
            assert!(
                matches!(
                    f.roots.read_text_blocking(u, 1024),
                    Err(FileError::NotAFileUri { .. })
                ),
                "{u}"
            );
        }
    }

    #[test]
    fn a_long_file_is_cut_at_the_limit() {
        let f = fixture();
        let p = f.root.join("long.txt");
        std::fs::write(&p, "x".repeat(100)).unwrap();
        assert_eq!(
            f.roots.read_text_blocking(&uri(&p), 10).unwrap(),
            ("x".repeat(10), true)
        );
    }

    #[test]
    fn no_roots_means_no_file_is_read() {
        let f = fixture();
        let none = FileRoots::new(Vec::<PathBuf>::new());
        let u = uri(&f.root.join("segment-retry-5/r1/attempt-1.md"));
        assert!(none.read_text_blocking(&u, 1024).is_err());
        assert!(none.admits_uri(&u).is_err());
    }
}
