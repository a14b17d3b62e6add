//! Manifest sources: opened before the run starts, so that a missing file
//! is a usage error, and for a regular file a second reader ([`Recount`])
//! that counts it ahead without moving the first one's offset.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// A manifest source, opened before the run starts so that a missing file
/// is a usage error (exit 2) rather than a surprise halfway through.
pub struct Source {
    pub name: Arc<str>,
    pub reader: Box<dyn Read + Send>,
    /// The same open file when it is a regular one, and where reading
    /// starts: what [`Source::recount`] reads. Never the path: opened again,
    /// a FIFO or `/dev/fd/N` would hand the second reader lines the first
    /// one then never sees.
    regular: Option<(Arc<File>, u64)>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("name", &self.name).finish()
    }
}

impl Source {
    pub fn stdin() -> Self {
        // A duplicate of the descriptor, only ever read with pread: it
        // shares the offset that `io::stdin()` reads at.
        let regular = io::stdin().as_fd().try_clone_to_owned().ok().map(File::from).and_then(regular_at);
        Source { name: "<stdin>".into(), reader: Box::new(io::stdin()), regular }
    }

    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
        }
        let file = Arc::new(file);
        let regular = file.metadata()?.is_file().then(|| (file.clone(), 0));
        Ok(Source { name: path.display().to_string().into(), reader: Box::new(file), regular })
    }

    /// A source that is only a stream: never counted ahead.
    pub fn stream(name: &str, reader: Box<dyn Read + Send>) -> Self {
        Source { name: name.into(), reader, regular: None }
    }

    /// A second reader of a regular file's bytes, from where the source
    /// starts, that does not move the source's offset; `None` for anything
    /// else (pipe, FIFO, socket, terminal, device), which cannot be read twice.
    pub fn recount(&self) -> Option<Recount> {
        let (file, start) = self.regular.as_ref()?;
        Some(Recount { name: self.name.clone(), file: file.clone(), offset: *start })
    }
}

/// `Some` when `file` is a regular file, with its current offset.
fn regular_at(file: File) -> Option<(Arc<File>, u64)> {
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let offset = (&file).stream_position().ok()?;
    Some((Arc::new(file), offset))
}

/// Reads a regular manifest file with positional reads (`pread`), so that
/// counting it never takes bytes from the reader that parses it.
#[derive(Debug)]
pub struct Recount {
    pub(super) name: Arc<str>,
    file: Arc<File>,
    offset: u64,
}

impl Read for Recount {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn only_regular_files_are_counted_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, "http://h/a\n").unwrap();
        assert!(Source::open(&path).unwrap().recount().is_some());
        assert!(Source::open(Path::new("/dev/null")).unwrap().recount().is_none());
        assert!(Source::stream("s", Box::new(io::empty())).recount().is_none());
        // A count reads at its own offset: the source still reads everything.
        let mut source = Source::open(&path).unwrap();
        let mut counted = String::new();
        source.recount().unwrap().read_to_string(&mut counted).unwrap();
        let mut read = String::new();
        source.reader.read_to_string(&mut read).unwrap();
        assert_eq!((counted.as_str(), read.as_str()), ("http://h/a\n", "http://h/a\n"));
    }
}
