//! The pure rules of destination paths: the name a URL gives, and a
//! manifest path resolved against `--dir`, lexically, refusing what would
//! leave it (unless `-P`), name a directory, or take a name fetch keeps for
//! its own files. No state and no filesystem access; table tests below.

use std::path::{Component, Path, PathBuf};

use percent_encoding::percent_decode_str;
use reqwest::Url;

/// Why a destination path is refused. Displayed after `MANIFEST:LINE: `.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestError {
    #[error("empty destination path")]
    Empty,
    #[error("destination path {0:?} names a directory, not a file")]
    NotAFile(String),
    #[error("absolute destination path {0:?} is not allowed (use -P/--absolute-paths)")]
    Absolute(String),
    #[error("destination path {0:?} leaves --dir (use -P/--absolute-paths)")]
    Escapes(String),
    #[error("destination path contains a NUL byte")]
    Nul,
    #[error("URL path has no file name to save as; give a destination path")]
    NoNameInUrl,
    #[error("file name taken from the URL, {0:?}, contains '/'; give a destination path")]
    SlashInUrlName(String),
    #[error(
        "destination path {0:?} is this run's {1}, or its partial file would be; refusing to write over it"
    )]
    Protected(String, &'static str),
    #[error("destination path {0:?} ends in {1:?}, which fetch keeps for its partial files")]
    Reserved(String, &'static str),
    #[error("destination path {0:?} has a name longer than 255 bytes")]
    NameTooLong(String),
}

/// Where destinations go and what they may be, as far as their paths tell.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `--dir` as the user wrote it, used to build the paths that are shown.
    dir: PathBuf,
    allow_escape: bool,
}

impl Rules {
    pub fn new(dir: PathBuf, allow_escape: bool) -> Self {
        Rules { dir, allow_escape }
    }

    /// `--dir` as the user wrote it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether destinations may leave `--dir` (`-P`).
    pub fn allow_escape(&self) -> bool {
        self.allow_escape
    }

    /// The path shown for `rel` below `--dir`: `a/b` rather than `./a/b`
    /// for the default `--dir`.
    pub fn shown(&self, rel: PathBuf) -> PathBuf {
        if self.dir == Path::new(".") { rel } else { self.dir.join(rel) }
    }

    /// Resolve a manifest path against `--dir`, lexically.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, DestError> {
        if path.is_empty() {
            return Err(DestError::Empty);
        }
        if path.contains('\0') {
            return Err(DestError::Nul);
        }
        if path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") || path == "." || path == ".."
        {
            return Err(DestError::NotAFile(path.to_owned()));
        }
        check_names(path)?;
        let given = Path::new(path);
        if given.is_absolute() {
            if !self.allow_escape {
                return Err(DestError::Absolute(path.to_owned()));
            }
            return Ok(normalize(given));
        }
        // Walk the components, counting depth below --dir; `..` above it escapes.
        let mut rel = PathBuf::new();
        let mut depth = 0usize;
        for component in given.components() {
            match component {
                Component::Normal(part) => {
                    rel.push(part);
                    depth += 1;
                }
                Component::CurDir => {}
                Component::ParentDir if depth > 0 => {
                    rel.pop();
                    depth -= 1;
                }
                Component::ParentDir => {
                    if !self.allow_escape {
                        return Err(DestError::Escapes(path.to_owned()));
                    }
                    return Ok(normalize(&self.dir.join(given)));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(DestError::Absolute(path.to_owned()));
                }
            }
        }
        if depth == 0 {
            return Err(DestError::NotAFile(path.to_owned()));
        }
        Ok(self.shown(rel))
    }
}

/// Longest file name Linux filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;

/// What no destination may be named, whatever the directory: a name
/// ending as a partial file's does (one entry would write another's part
/// file), or longer than any filesystem takes (the download would fail
/// only at its commit).
fn check_names(path: &str) -> Result<(), DestError> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if let Some(suffix) = crate::fsx::RESERVED_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
        return Err(DestError::Reserved(path.to_owned(), suffix));
    }
    if path.split('/').any(|part| part.len() > NAME_MAX) {
        return Err(DestError::NameTooLong(path.to_owned()));
    }
    Ok(())
}

/// The file name a URL names: its last path segment, percent-decoded.
pub fn name_from_url(url: &Url) -> Result<String, DestError> {
    let last = url.path().rsplit('/').next().unwrap_or("");
    let name = percent_decode_str(last).decode_utf8_lossy().into_owned();
    match name.as_str() {
        "" | "." | ".." => Err(DestError::NoNameInUrl),
        n if n.contains('/') || n.contains('\\') => Err(DestError::SlashInUrlName(name)),
        n if n.contains('\0') => Err(DestError::Nul),
        _ => Ok(name),
    }
}

/// Lexical normalization for paths the user explicitly allowed to go anywhere.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(dir: &str, allow: bool) -> Rules {
        Rules::new(dir.into(), allow)
    }

    #[test]
    fn resolve_table() {
        let r = rules(".", false);
        let ok = [
            ("a.bin", "a.bin"),
            ("sub/dir/a.bin", "sub/dir/a.bin"),
            ("./a.bin", "a.bin"),
            ("sub/../a.bin", "a.bin"),
            ("my file.txt", "my file.txt"),
            ("a//b", "a/b"),
        ];
        for (input, want) in ok {
            assert_eq!(r.resolve(input), Ok(PathBuf::from(want)), "{input}");
        }
        let bad = [
            ("", DestError::Empty),
            ("/etc/passwd", DestError::Absolute("/etc/passwd".into())),
            ("../x", DestError::Escapes("../x".into())),
            ("a/../../x", DestError::Escapes("a/../../x".into())),
            ("dir/", DestError::NotAFile("dir/".into())),
            ("a/..", DestError::NotAFile("a/..".into())),
            (".", DestError::NotAFile(".".into())),
            ("a\0b", DestError::Nul),
        ];
        for (input, want) in bad {
            assert_eq!(r.resolve(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn resolve_with_dir_and_escape_allowed() {
        assert_eq!(rules("/data", false).resolve("x/y"), Ok(PathBuf::from("/data/x/y")));
        let r = rules("/data", true);
        assert_eq!(r.resolve("/etc/x"), Ok(PathBuf::from("/etc/x")));
        assert_eq!(r.resolve("../x"), Ok(PathBuf::from("/x")));
    }

    #[test]
    fn names_from_urls() {
        let name = |u: &str| name_from_url(&Url::parse(u).unwrap());
        assert_eq!(name("http://h/a/b.tar.gz"), Ok("b.tar.gz".into()));
        assert_eq!(name("http://h/a/my%20file.txt?x=1"), Ok("my file.txt".into()));
        assert_eq!(name("http://h/"), Err(DestError::NoNameInUrl));
        assert_eq!(name("http://h"), Err(DestError::NoNameInUrl));
        assert_eq!(name("http://h/dir/"), Err(DestError::NoNameInUrl));
        assert_eq!(name("http://h/a/%2E%2E"), Err(DestError::NoNameInUrl));
        assert_eq!(name("http://h/a%2Fb"), Err(DestError::SlashInUrlName("a/b".into())));
    }
}
