//! Directories reached and made by handle: opened beneath a handle without
//! leaving it, created with a list of those this run made, and the made
//! directories whose own entries are not durable yet ([`MadeDirs`]).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Open the directory at `path`, following symlinks: `--dir` itself, and
/// the user's own paths under `-P`.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Open the directory `rel` below `dir` without leaving it: the kernel's
/// `RESOLVE_BENEATH`, or, where `openat2` is missing (before Linux 5.6),
/// one component at a time with `O_NOFOLLOW`. `EXDEV` or `ELOOP` means a
/// symlink or `..` would have left `dir`.
pub fn open_dir_beneath(dir: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
        // No openat2 (before Linux 5.6), or a seccomp filter that refuses it.
        Err(Errno::NOSYS | Errno::PERM) => {}
        other => return other,
    }
    let mut handle: Option<OwnedFd> = None;
    for part in rel.components() {
        let Component::Normal(name) = part else { return Err(Errno::XDEV) };
        let from = handle.as_ref().unwrap_or(dir);
        handle = Some(rustix::fs::openat(from, name, flags | OFlags::NOFOLLOW, Mode::empty())?);
    }
    handle.map_or_else(|| rustix::io::dup(dir), Ok)
}

/// Create `dir` and its missing ancestors, as `create_dir_all` does, and
/// return the ones made here, outermost first: one that a racing process
/// made is not listed, nor one that was there.
pub fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = dir;
    let mut made = Vec::new();
    loop {
        match std::fs::create_dir(at) {
            Ok(()) => {
                made.push(at.to_owned());
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => match at.parent() {
                Some(up) if !up.as_os_str().is_empty() => {
                    missing.push(at);
                    at = up;
                }
                _ => return Err(e),
            },
            Err(_) if at.is_dir() => break,
            Err(e) => return Err(e),
        }
    }
    for at in missing.into_iter().rev() {
        match std::fs::create_dir(at) {
            Ok(()) => made.push(at.to_owned()),
            Err(_) if at.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(made)
}

/// Directories this run made whose own entries, in their parents, are not
/// known to be durable yet. A file's `fsync` and its directory's make the
/// file and its name durable, but not the chain of new directories above
/// it; on a filesystem without a journal that takes an `fsync` of each new
/// directory's parent, or a barrier ([`crate::commit`]).
#[derive(Debug, Default)]
pub struct MadeDirs {
    dirs: Mutex<Vec<MadeDir>>,
}

/// A directory this run made, and its filesystem (`st_dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeDir {
    pub path: PathBuf,
    pub dev: u64,
}

impl MadeDirs {
    /// Note directories just made; one that is gone already (another
    /// process removed it) is left out, as no file of ours can be in it.
    pub fn record(&self, made: Vec<PathBuf>) {
        let Some(dev) = made.last().and_then(|dir| std::fs::metadata(dir).ok()).map(|m| m.dev()) else {
            return;
        };
        // New directories are on their existing parent's filesystem: a
        // mount point cannot be in a directory that did not exist.
        let made = made.into_iter().map(|path| MadeDir { path, dev });
        self.dirs.lock().expect("made dirs poisoned").extend(made);
    }

    /// Take every directory noted so far.
    pub fn take(&self) -> Vec<MadeDir> {
        std::mem::take(&mut *self.dirs.lock().expect("made dirs poisoned"))
    }

    /// Give back directories whose entries are still not durable.
    pub fn restore(&self, dirs: impl IntoIterator<Item = MadeDir>) {
        self.dirs.lock().expect("made dirs poisoned").extend(dirs);
    }
}
