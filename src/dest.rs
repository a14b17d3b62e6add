//! Destination paths: the name derived from a URL, resolution against
//! `--dir`, and the rule that nothing is written outside `--dir` unless
//! `--absolute-paths` allows it.
//!
//! Resolution is lexical (no filesystem access) so that manifest lines can be
//! judged as they stream in. Symlinks are the one escape lexical checks
//! cannot see, so a destination's directory is never reached by its path:
//! [`Rules::prepare_parent`] opens it from a handle on `--dir` held for the
//! whole run, with `openat2(RESOLVE_BENEATH)` (or, before Linux 5.6, one
//! component at a time without following symlinks), creating what is
//! missing with `mkdirat` on the handle of the directory above. The kernel
//! refuses any step that would leave `--dir`, at the moment it is taken,
//! and every file of the entry is then created, renamed and removed
//! through that handle ([`crate::fsx`]): a component swapped for a
//! symlink later cannot redirect a write. Another process can only move a
//! directory we hold to a place it may write to itself, and our file goes
//! with it. With `-P` the user's paths are followed as given.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::fsx::Dir;

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

/// Where destinations go and what they may be.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `--dir` as the user wrote it, used to build the paths that are shown.
    dir: PathBuf,
    /// `--dir` with symlinks resolved, for the escape check.
    canonical_dir: PathBuf,
    allow_escape: bool,
    /// Parent directories already checked and created in this run, so that
    /// the thousands of files of one folder cost one check, not thousands;
    /// with whether this run created them and has found nothing of another
    /// process's there ([`Rules::distrust_parent`]).
    prepared: Arc<Mutex<HashMap<PathBuf, bool>>>,
    /// Destinations this run placed, made when it prepares its first
    /// directory: until then [`Rules::may_exist`] is true without taking a
    /// lock, and a cron rerun skips every entry at full speed.
    placed: Arc<OnceLock<Placed>>,
    /// Directories this run made, until their entries are durable.
    made: Arc<MadeDirs>,
    /// `--dir`, opened when the run starts; `None` for a dry run, which
    /// opens nothing.
    root: Option<Dir>,
    /// Handles on the directories that entries in flight hold, shared by
    /// the entries of one directory and closed with the last of them.
    handles: Arc<Mutex<HashMap<PathBuf, Weak<OwnedFd>>>>,
    /// Files no destination may be: the report and the manifests.
    protected: Arc<[Protected]>,
    /// Directories this run made for entries, for [`Rules::remove_empty`].
    cleanup: Arc<Mutex<Vec<PathBuf>>>,
}

/// A file of the run's own that a destination must not be: the name, and
/// the directory it is in (`st_dev`, `st_ino`).
#[derive(Debug, Clone)]
struct Protected {
    name: OsString,
    dir: (u64, u64),
    what: &'static str,
}

/// Handles remembered at most before the closed ones are forgotten.
const HANDLES_MAX: usize = 1024;
/// Made directories remembered for removal if they end up empty; past
/// this many the rest are left, so that memory stays flat.
const CLEANUP_MAX: usize = 10_000;

/// A destination's parent directory, ready for files.
#[derive(Debug, Clone)]
pub struct Parent<'a> {
    pub dir: &'a Path,
    /// The directory, open: every file of the entry is reached through it.
    pub handle: Dir,
    /// The first time this run prepared it.
    pub first: bool,
    /// Created by this run, so it holds no partial file of an earlier run
    /// to resume.
    pub fresh: bool,
}

/// Directories remembered as prepared; the set starts over when full.
const PREPARED_MAX: usize = 4096;

impl Rules {
    /// `dir` must exist; [`crate::config`] creates it first, and `made`
    /// are the directories it made for that ([`create_dirs`]).
    pub fn new(dir: PathBuf, allow_escape: bool, made: Vec<PathBuf>) -> io::Result<Self> {
        let canonical_dir = dir.canonicalize()?;
        let mut rules = Rules::resolved(dir, canonical_dir, allow_escape);
        rules.root = Some(Arc::new(open_dir(&rules.dir)?));
        rules.made.record(made);
        Ok(rules)
    }

    /// No destination may be one of `files` (the report, the manifests),
    /// each given with what it is.
    pub fn protecting(mut self, files: &[(PathBuf, &'static str)]) -> Self {
        self.protected = files.iter().flat_map(|(path, what)| Protected::of(path, what)).collect();
        self
    }

    /// Rules for `dir`, whose symlink-free form is `canonical_dir`, with
    /// nothing prepared, placed or made yet.
    fn resolved(dir: PathBuf, canonical_dir: PathBuf, allow_escape: bool) -> Self {
        Rules {
            dir,
            canonical_dir,
            allow_escape,
            prepared: Arc::default(),
            placed: Arc::default(),
            made: Arc::default(),
            root: None,
            handles: Arc::default(),
            protected: Arc::new([]),
            cleanup: Arc::default(),
        }
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
        // Show `a/b` rather than `./a/b` for the default --dir.
        Ok(if self.dir == Path::new(".") { rel } else { self.dir.join(rel) })
    }

    /// Rules for a `--dir` that does not exist yet (a dry run creates nothing).
    pub fn planned(dir: PathBuf, allow_escape: bool) -> io::Result<Self> {
        let canonical_dir = std::path::absolute(&dir)?;
        Ok(Rules::resolved(dir, canonical_dir, allow_escape))
    }

    /// `--dir` as the user wrote it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directories this run made whose entries are not known to be
    /// durable yet: the committer's to make so.
    pub fn made_dirs(&self) -> Arc<MadeDirs> {
        self.made.clone()
    }

    /// `--dir`, open; `None` in a dry run.
    pub fn root(&self) -> Option<&Dir> {
        self.root.as_ref()
    }

    /// Whether files can be created in `--dir`: an unnamed file is made
    /// there and dropped, which leaves nothing behind.
    pub fn check_writable(&self) -> io::Result<()> {
        let Some(root) = &self.root else { return Ok(()) };
        let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
        let denied =
            |e: Errno| io::Error::new(io::Error::from(e).kind(), format!("cannot create files in it: {e}"));
        match rustix::fs::openat(&**root, ".", flags, Mode::from(0o600)) {
            Ok(_) => Ok(()),
            Err(e @ (Errno::ACCESS | Errno::PERM | Errno::ROFS)) => Err(denied(e)),
            // No unnamed files on this filesystem: ask for permission instead.
            Err(_) => {
                rustix::fs::access(&self.dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK)
                    .map_err(denied)
            }
        }
    }

    /// Open the destination's directory, creating what is missing of it,
    /// never leaving `--dir` on the way (see the module's comment).
    pub fn prepare_parent<'a>(&self, dest: &'a Path) -> Result<Parent<'a>, PrepareError> {
        let parent = dest.parent().unwrap_or(Path::new(""));
        let known = self.prepared.lock().expect("prepared set poisoned").get(parent).copied();
        // Made before any directory: another entry may place a file in
        // this one as soon as it exists, and must find a filter.
        let placed = self.placed.get_or_init(Placed::default);
        let (handle, made) = self.open_parent(parent)?;
        let fresh = known.unwrap_or_else(|| made.last().is_some_and(|dir| dir == parent));
        if known.is_none() && fresh {
            // A later destination may name the directory itself.
            placed.insert(parent);
        }
        if !made.is_empty() {
            let mut cleanup = self.cleanup.lock().expect("cleanup list poisoned");
            let room = CLEANUP_MAX.saturating_sub(cleanup.len());
            cleanup.extend(made.iter().take(room).cloned());
        }
        // Recorded before another entry can find the directory prepared
        // and commit a file into it.
        self.made.record(made);
        if known.is_none() {
            let mut prepared = self.prepared.lock().expect("prepared set poisoned");
            if prepared.len() >= PREPARED_MAX {
                prepared.clear();
            }
            prepared.insert(parent.to_owned(), fresh);
        }
        Ok(Parent { dir: parent, handle, first: known.is_none(), fresh })
    }

    /// A handle on `parent`, shared with the entries in flight there, and
    /// the directories made to have it.
    fn open_parent(&self, parent: &Path) -> Result<(Dir, Vec<PathBuf>), PrepareError> {
        let mut handles = self.handles.lock().expect("handles poisoned");
        if let Some(handle) = handles.get(parent).and_then(Weak::upgrade) {
            return Ok((handle, Vec::new()));
        }
        let (handle, made) = match (&self.root, self.beneath(parent)) {
            (Some(root), Some(rel)) => self.open_beneath(root, rel)?,
            _ => {
                // -P: the user's path, followed as given.
                let made = if parent.as_os_str().is_empty() { Vec::new() } else { create_dirs(parent)? };
                (Arc::new(open_dir(parent)?), made)
            }
        };
        if handles.len() >= HANDLES_MAX {
            handles.retain(|_, handle| handle.strong_count() > 0);
        }
        handles.insert(parent.to_owned(), Arc::downgrade(&handle));
        Ok((handle, made))
    }

    /// Open `dest`'s directory anew for the next entry that needs it: the
    /// one held was removed.
    pub fn forget_parent(&self, dest: &Path) {
        let parent = dest.parent().unwrap_or(Path::new(""));
        self.handles.lock().expect("handles poisoned").remove(parent);
    }

    /// `parent` relative to `--dir`, where it must stay there: every path
    /// without `-P`.
    fn beneath<'p>(&self, parent: &'p Path) -> Option<&'p Path> {
        if self.allow_escape {
            return None;
        }
        if self.dir == Path::new(".") { Some(parent) } else { parent.strip_prefix(&self.dir).ok() }
    }

    /// Open `rel` below `root`, making its missing directories one at a
    /// time, each from the handle of the one above; and those made.
    fn open_beneath(&self, root: &Dir, rel: &Path) -> Result<(Dir, Vec<PathBuf>), PrepareError> {
        if rel.as_os_str().is_empty() {
            return Ok((root.clone(), Vec::new()));
        }
        let shown = |rel: &Path| if self.dir == Path::new(".") { rel.to_owned() } else { self.dir.join(rel) };
        let escapes = |at: &Path, e: Errno| match e {
            Errno::XDEV | Errno::LOOP => PrepareError::Symlink(shown(at)),
            e => PrepareError::Io(e.into()),
        };
        match open_dir_beneath(root, rel) {
            Ok(fd) => return Ok((Arc::new(fd), Vec::new())),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(escapes(rel, e)),
        }
        let (mut at, mut made, mut handle) = (PathBuf::new(), Vec::new(), root.clone());
        for name in rel.components().map(Component::as_os_str) {
            at.push(name);
            let next = match open_dir_beneath(&handle, Path::new(name)) {
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&handle, name, Mode::from(0o777)) {
                        Ok(()) => made.push(shown(&at)),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(PrepareError::Io(e.into())),
                    }
                    open_dir_beneath(&handle, Path::new(name))
                }
                other => other,
            };
            handle = Arc::new(next.map_err(|e| escapes(&at, e))?);
        }
        Ok((handle, made))
    }

    /// Refuse a destination that is one of the run's own files, the
    /// report or a manifest, whatever spelling names it: same name, same
    /// directory. Costs nothing for a name none of them has.
    pub fn check_protected(&self, dest: &Path) -> Result<(), DestError> {
        if self.protected.is_empty() {
            return Ok(());
        }
        // The destination and the files beside it that fetch writes.
        let (part, meta) = crate::fsx::part_paths(dest);
        let mut tmp = meta.clone().into_os_string();
        tmp.push(".tmp");
        let names = [dest.file_name(), part.file_name(), meta.file_name(), Some(tmp.as_os_str())];
        let named = |p: &Protected| names.iter().flatten().any(|&name| p.name == name);
        if !self.protected.iter().any(named) {
            return Ok(());
        }
        // A directory that does not exist holds none of them.
        let Some(handle) = self.find_parent(dest.parent().unwrap_or(Path::new(""))) else { return Ok(()) };
        let Ok(dir) = rustix::fs::fstat(&handle) else { return Ok(()) };
        match self.protected.iter().find(|p| named(p) && p.dir == (dir.st_dev, dir.st_ino)) {
            Some(p) => Err(DestError::Protected(dest.display().to_string(), p.what)),
            None => Ok(()),
        }
    }

    /// `parent`, opened as [`Rules::prepare_parent`] would, if it exists;
    /// nothing is created.
    fn find_parent(&self, parent: &Path) -> Option<OwnedFd> {
        match (&self.root, self.beneath(parent)) {
            (Some(root), Some(rel)) if rel.as_os_str().is_empty() => rustix::io::dup(&**root).ok(),
            (Some(root), Some(rel)) => open_dir_beneath(root, rel).ok(),
            _ => open_dir(parent).ok(),
        }
    }

    /// Remove the directories this run made that are still empty, deepest
    /// first, once no entry is in flight: a run whose entries failed leaves
    /// no empty tree behind. `--dir` itself stays.
    pub fn remove_empty(&self) {
        let made = std::mem::take(&mut *self.cleanup.lock().expect("cleanup list poisoned"));
        for dir in made.iter().rev() {
            // Fails, as it should, on a directory holding anything.
            let _ = self.remove_dir(dir);
        }
    }

    /// Remove the empty directory `dir`, reached like a destination's:
    /// beneath `--dir` through handles, under `-P` by its path.
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let (Some(root), Some(rel)) = (&self.root, self.beneath(dir)) else {
            return std::fs::remove_dir(dir);
        };
        let (Some(up), Some(name)) = (rel.parent(), rel.file_name()) else { return Ok(()) };
        let parent =
            if up.as_os_str().is_empty() { rustix::io::dup(&**root)? } else { open_dir_beneath(root, up)? };
        Ok(rustix::fs::unlinkat(&parent, name, rustix::fs::AtFlags::REMOVEDIR)?)
    }

    /// Whether `dest` may exist, as far as this run knows without looking:
    /// false in a directory this run created (while it remembers that) for
    /// a name it has not placed there, file or directory. What it cannot
    /// know of (a racing process's file, the same file under another
    /// spelling on a case-insensitive filesystem) costs a download that the
    /// commit then declines: it never replaces a destination.
    pub fn may_exist(&self, dest: &Path) -> bool {
        let Some(placed) = self.placed.get() else { return true };
        let created = dest.parent().is_some_and(|parent| {
            self.prepared.lock().expect("prepared set poisoned").get(parent) == Some(&true)
        });
        !created || placed.may_contain(dest)
    }

    /// A file this run did not expect was there after all: from now on
    /// `dest`'s directory counts as not fresh, so [`Rules::may_exist`] says
    /// yes for it and its entries look for part files, and a process racing
    /// this one there costs one round of downloads, not one per file.
    pub fn distrust_parent(&self, dest: &Path) {
        if let Some(parent) = dest.parent()
            && let Some(fresh) = self.prepared.lock().expect("prepared set poisoned").get_mut(parent)
        {
            *fresh = false;
        }
    }

    /// Whether this run may have placed `dest`: [`Rules::may_exist`]'s
    /// answer again for a destination it said no to, without its lock.
    pub fn may_have_placed(&self, dest: &Path) -> bool {
        self.placed.get().is_some_and(|placed| placed.may_contain(dest))
    }

    /// Remember that this run placed `dest`, for [`Rules::may_exist`]:
    /// call before the entries waiting for this destination's turn
    /// ([`crate::pool::Keyed`]) are let go.
    pub fn note_placed(&self, dest: &Path) {
        // Without a directory prepared there is no filter, and no use for one.
        if let Some(placed) = self.placed.get() {
            placed.insert(dest);
        }
    }

    /// The escape check of [`Rules::prepare_parent`], creating nothing;
    /// returns the parent directory, if the destination has one.
    pub fn check_parent<'a>(&self, dest: &'a Path) -> Result<Option<&'a Path>, PrepareError> {
        let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        if !self.allow_escape {
            // The deepest ancestor that exists decides where new directories land.
            let mut existing = parent;
            while !existing.exists() {
                if existing == self.dir {
                    // --dir itself is still to be made (a dry run): all of
                    // it will be new directories inside it.
                    return Ok(Some(parent));
                }
                match existing.parent() {
                    Some(up) if !up.as_os_str().is_empty() => existing = up,
                    _ => break,
                }
            }
            let real = if existing.exists() { existing.canonicalize()? } else { self.canonical_dir.clone() };
            if !real.starts_with(&self.canonical_dir) {
                return Err(PrepareError::Escapes { dir: existing.to_owned(), target: real });
            }
            // The destination itself: renaming onto a symlink replaces the
            // link, never its target, so only its directory matters.
        }
        Ok(Some(parent))
    }
}

/// The files this run placed, as a Bloom filter of their paths. It has a
/// fixed size so that memory stays flat: it answers "maybe" for every path
/// inserted and, at 200,000 paths, for 0.2% of the others (15% at
/// 2,000,000), which then cost a look at the disk.
#[derive(Debug)]
struct Placed {
    bits: Box<[AtomicU64]>,
}

/// 2^23 bits: 1 MiB.
const PLACED_BITS: u32 = 23;

impl Default for Placed {
    fn default() -> Self {
        Placed { bits: (0..1 << (PLACED_BITS - 6)).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl Placed {
    /// Two bit positions from one 64-bit hash.
    fn bits(path: &Path) -> [u32; 2] {
        let mut hasher = DefaultHasher::new();
        hasher.write(path.as_os_str().as_encoded_bytes());
        let hash = hasher.finish();
        let mask = (1 << PLACED_BITS) - 1;
        [hash as u32 & mask, (hash >> 32) as u32 & mask]
    }

    fn insert(&self, path: &Path) {
        for bit in Self::bits(path) {
            self.bits[bit as usize / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
    }

    fn may_contain(&self, path: &Path) -> bool {
        Self::bits(path)
            .iter()
            .all(|&bit| self.bits[bit as usize / 64].load(Ordering::Relaxed) & 1 << (bit % 64) != 0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{} is a symlink to {}, outside --dir (use -P/--absolute-paths)", dir.display(), target.display())]
    Escapes { dir: PathBuf, target: PathBuf },
    #[error("{} leads outside --dir through a symlink (use -P/--absolute-paths)", .0.display())]
    Symlink(PathBuf),
    #[error("cannot create the destination's directory: {0}")]
    Io(#[from] io::Error),
}

impl Protected {
    /// `path` as given and, where it is a symlink, the file it leads to
    /// (which need not exist yet: the report is created later).
    fn of(path: &Path, what: &'static str) -> impl Iterator<Item = Protected> {
        let mut real = path.to_owned();
        for _ in 0..40 {
            let Ok(target) = std::fs::read_link(&real) else { break };
            real = real.parent().unwrap_or(Path::new("")).join(target);
        }
        let real = (real != path).then_some(real);
        [Some(path.to_owned()), real].into_iter().flatten().filter_map(move |path| {
            let name = path.file_name()?.to_owned();
            let dir = std::fs::metadata(match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            })
            .ok()?;
            Some(Protected { name, dir: (dir.dev(), dir.ino()), what })
        })
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
fn open_dir_beneath(dir: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
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
        Rules::resolved(dir.into(), "/canon".into(), allow)
    }

    #[test]
    fn only_placed_destinations_may_exist_in_a_directory_this_run_created() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Rules::new(tmp.path().to_owned(), false, Vec::new()).unwrap();
        std::fs::create_dir(tmp.path().join("old")).unwrap();
        let (old, new) = (tmp.path().join("old/a"), tmp.path().join("new/a"));
        assert!(r.may_exist(&new), "not yet known to be created here");
        assert!(r.prepare_parent(&old).unwrap().first && !r.prepare_parent(&old).unwrap().fresh);
        assert!(r.prepare_parent(&new).unwrap().fresh);
        // A destination naming a directory this run made is looked for.
        assert!(r.prepare_parent(&tmp.path().join("new/sub/x")).unwrap().fresh);
        assert!(r.may_exist(&tmp.path().join("new/sub")));
        assert!(r.may_exist(&old), "a directory that was there may hold anything");
        assert!(!r.may_exist(&new));
        assert!(!r.may_have_placed(&new));
        r.note_placed(&new);
        assert!(r.may_exist(&new) && r.may_have_placed(&new));
        // 0.2% of other names answer "maybe" at 200,000 placed; at 100
        // (a handful of the 2^23 bits set) none of these should.
        (0..100).for_each(|i| r.note_placed(&tmp.path().join(format!("new/p{i}"))));
        let maybe = (0..1000).filter(|i| r.may_exist(&tmp.path().join(format!("new/q{i}")))).count();
        assert_eq!(maybe, 0);
        // Another process placed a file here: everything is looked for now.
        r.distrust_parent(&tmp.path().join("new/q0"));
        assert!(r.may_exist(&tmp.path().join("new/q1")));
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
