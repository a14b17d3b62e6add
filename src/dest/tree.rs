//! [`DestTree`]: the run's view of the destination tree. It holds `--dir`
//! open for the whole run, opens (and makes) each destination's parent
//! directory beneath it, shares those handles between the entries in
//! flight, remembers which directories it prepared and made and which
//! destinations it placed (so that a fresh directory needs no look at the
//! disk), refuses the run's own files as destinations, and removes the
//! directories it made that stay empty.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::dirs::{MadeDirs, create_dirs, open_dir, open_dir_beneath};
use super::path::{DestError, Rules};
use super::placed::PlacedFilter;
use crate::fsx::Dir;

/// The run's view of the destination tree; clones share it.
#[derive(Debug, Clone)]
pub struct DestTree {
    /// `--dir` and `-P`: what destination paths may be.
    rules: Rules,
    /// `--dir` with symlinks resolved, for the escape check.
    canonical_dir: PathBuf,
    /// Parent directories already checked and created in this run, so that
    /// the thousands of files of one folder cost one check, not thousands;
    /// with whether this run created them and has found nothing of another
    /// process's there ([`DestTree::distrust_parent`]).
    prepared: Arc<Mutex<HashMap<PathBuf, bool>>>,
    /// Destinations this run placed, made when it prepares its first
    /// directory: until then [`DestTree::may_exist`] is true without taking a
    /// lock, and a cron rerun skips every entry at full speed.
    placed: Arc<OnceLock<PlacedFilter>>,
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
    /// Directories this run made for entries, for [`DestTree::remove_empty`].
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

impl DestTree {
    /// `dir` must exist; [`crate::config`] creates it first, and `made`
    /// are the directories it made for that ([`create_dirs`]).
    pub fn new(dir: PathBuf, allow_escape: bool, made: Vec<PathBuf>) -> io::Result<Self> {
        let canonical_dir = dir.canonicalize()?;
        let mut tree = DestTree::resolved(Rules::new(dir, allow_escape), canonical_dir);
        tree.root = Some(Arc::new(open_dir(tree.rules.dir())?));
        tree.made.record(made);
        Ok(tree)
    }

    /// No destination may be one of `files` (the report, the manifests),
    /// each given with what it is.
    pub fn protecting(mut self, files: &[(PathBuf, &'static str)]) -> Self {
        self.protected = files.iter().flat_map(|(path, what)| Protected::of(path, what)).collect();
        self
    }

    /// The tree under `rules`' `--dir`, whose symlink-free form is
    /// `canonical_dir`, with nothing prepared, placed or made yet.
    fn resolved(rules: Rules, canonical_dir: PathBuf) -> Self {
        DestTree {
            rules,
            canonical_dir,
            prepared: Arc::default(),
            placed: Arc::default(),
            made: Arc::default(),
            root: None,
            handles: Arc::default(),
            protected: Arc::new([]),
            cleanup: Arc::default(),
        }
    }

    /// The tree of a `--dir` that does not exist yet (a dry run creates nothing).
    pub fn planned(dir: PathBuf, allow_escape: bool) -> io::Result<Self> {
        let canonical_dir = std::path::absolute(&dir)?;
        Ok(DestTree::resolved(Rules::new(dir, allow_escape), canonical_dir))
    }

    /// What destination paths may be: for the manifest's parser.
    pub fn rules(&self) -> &Rules {
        &self.rules
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
            Err(_) => rustix::fs::access(
                self.rules.dir(),
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            )
            .map_err(denied),
        }
    }

    /// Open the destination's directory, creating what is missing of it,
    /// never leaving `--dir` on the way (see the module's comment).
    pub fn prepare_parent<'a>(&self, dest: &'a Path) -> Result<Parent<'a>, PrepareError> {
        let parent = dest.parent().unwrap_or(Path::new(""));
        let known = self.prepared.lock().expect("prepared set poisoned").get(parent).copied();
        // Made before any directory: another entry may place a file in
        // this one as soon as it exists, and must find a filter.
        let placed = self.placed.get_or_init(PlacedFilter::default);
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
        if self.rules.allow_escape() {
            return None;
        }
        if self.rules.dir() == Path::new(".") {
            Some(parent)
        } else {
            parent.strip_prefix(self.rules.dir()).ok()
        }
    }

    /// Open `rel` below `root`, making its missing directories one at a
    /// time, each from the handle of the one above; and those made.
    fn open_beneath(&self, root: &Dir, rel: &Path) -> Result<(Dir, Vec<PathBuf>), PrepareError> {
        if rel.as_os_str().is_empty() {
            return Ok((root.clone(), Vec::new()));
        }
        let escapes = |at: &Path, e: Errno| match e {
            Errno::XDEV | Errno::LOOP => PrepareError::Symlink(self.rules.shown(at.to_owned())),
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
                        Ok(()) => made.push(self.rules.shown(at.clone())),
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

    /// `parent`, opened as [`DestTree::prepare_parent`] would, if it exists;
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
        let mut made = std::mem::take(&mut *self.cleanup.lock().expect("cleanup list poisoned"));
        // Deepest first by depth, not by the order they were made: two
        // entries racing to make `a/b/c` and `a/b` may each make part of
        // the chain, and list `a` after `a/b/c`.
        made.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for dir in &made {
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
    /// `dest`'s directory counts as not fresh, so [`DestTree::may_exist`] says
    /// yes for it and its entries look for part files, and a process racing
    /// this one there costs one round of downloads, not one per file.
    pub fn distrust_parent(&self, dest: &Path) {
        if let Some(parent) = dest.parent()
            && let Some(fresh) = self.prepared.lock().expect("prepared set poisoned").get_mut(parent)
        {
            *fresh = false;
        }
    }

    /// Whether this run may have placed `dest`: [`DestTree::may_exist`]'s
    /// answer again for a destination it said no to, without its lock.
    pub fn may_have_placed(&self, dest: &Path) -> bool {
        self.placed.get().is_some_and(|placed| placed.may_contain(dest))
    }

    /// Remember that this run placed `dest`, for [`DestTree::may_exist`]:
    /// call before the entries waiting for this destination's turn
    /// ([`crate::pool::Keyed`]) are let go.
    pub fn note_placed(&self, dest: &Path) {
        // Without a directory prepared there is no filter, and no use for one.
        if let Some(placed) = self.placed.get() {
            placed.insert(dest);
        }
    }

    /// The escape check of [`DestTree::prepare_parent`], creating nothing;
    /// returns the parent directory, if the destination has one.
    pub fn check_parent<'a>(&self, dest: &'a Path) -> Result<Option<&'a Path>, PrepareError> {
        let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(None);
        };
        if !self.rules.allow_escape() {
            // The deepest ancestor that exists decides where new directories land.
            let mut existing = parent;
            while !existing.exists() {
                if existing == self.rules.dir() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_placed_destinations_may_exist_in_a_directory_this_run_created() {
        let tmp = tempfile::tempdir().unwrap();
        let r = DestTree::new(tmp.path().to_owned(), false, Vec::new()).unwrap();
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
    fn empty_directories_go_deepest_first_whatever_order_they_were_made_in() {
        let tmp = tempfile::tempdir().unwrap();
        let r = DestTree::new(tmp.path().to_owned(), false, Vec::new()).unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(tmp.path().join("keep")).unwrap();
        std::fs::write(tmp.path().join("keep/f"), "x").unwrap();
        // Two entries racing down one chain: each made part of it.
        let made = ["a/b", "a/b/c", "a", "keep"].map(|d| tmp.path().join(d));
        r.cleanup.lock().unwrap().extend(made);
        r.remove_empty();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["keep"]);
    }
}
