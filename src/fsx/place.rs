//! A finished download on its way to its destination: written to a file
//! (an unnamed one where it never had a part file), synced, and moved into
//! place without replacing what is there unless asked to.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::partial::create_part;
use super::{Committed, Dir, DirectoryRemoved, Names, remove_if_exists, remove_meta, sync_dir};
use crate::validators::Validators;

/// A finished download.
#[derive(Debug)]
pub enum Complete {
    /// In its part file.
    Staged(Staged),
    /// Never left the buffer: no file yet; `modified` and `validators`
    /// are for the file.
    Buffered { bytes: Vec<u8>, dir: Dir, names: Names, modified: Option<SystemTime>, validators: Validators },
}

impl Complete {
    /// Have the bytes in a file, ready to be placed: an unnamed file
    /// (`O_TMPFILE`) where the filesystem has them, which never needs a
    /// name of its own, a lock or cleaning up after a crash; else (and to
    /// replace a file, which a link cannot) a locked part file.
    pub fn stage(self, overwrite: bool) -> io::Result<Staged> {
        let (bytes, dir, names, modified, validators) = match self {
            Complete::Staged(staged) => return Ok(staged),
            Complete::Buffered { bytes, dir, names, modified, validators } => {
                (bytes, dir, names, modified, validators)
            }
        };
        if !overwrite {
            match unnamed(&dir, &bytes)
                .and_then(|(file, dev)| stamp(&file, modified, &validators).map(|()| (file, dev)))
            {
                Ok((file, dev)) => return Ok(Staged { file, dev, dir, names, part: None }),
                Err(e) if unnamed_unsupported(&e) => {}
                Err(e) => return Err(DirectoryRemoved::check(&dir, e)),
            }
        }
        let (file, dev) = create_part(&dir, &names).map_err(|e| DirectoryRemoved::check(&dir, e))?;
        let staged = Staged { file, dev, dir, names, part: Some(PartFile { meta_on_disk: false }) };
        match staged.file.write_all_at(&bytes, 0).and_then(|()| stamp(&staged.file, modified, &validators)) {
            Ok(()) => Ok(staged),
            Err(e) => {
                staged.discard();
                Err(e)
            }
        }
    }
}

/// Give `file` its validators and modification time, after its last write
/// and before it is placed, so that they arrive with its bytes.
pub(super) fn stamp(file: &File, modified: Option<SystemTime>, validators: &Validators) -> io::Result<()> {
    crate::validators::store(file, validators);
    modified.map_or(Ok(()), |time| file.set_modified(time))
}

/// A complete file waiting for its commit: its bytes are written, not yet
/// known to be on disk, and it is not at its destination.
#[derive(Debug)]
pub struct Staged {
    pub(super) file: File,
    pub(super) dev: u64,
    /// The destination's directory, and the names in it.
    pub(super) dir: Dir,
    pub(super) names: Names,
    /// The part file the bytes are in; `None` for an unnamed file.
    pub(super) part: Option<PartFile>,
}

/// A part file's state when its download finished.
#[derive(Debug)]
pub(super) struct PartFile {
    pub(super) meta_on_disk: bool,
}

impl Staged {
    /// The filesystem the file is on (`st_dev`).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// The directory the file goes into.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// `fsync` the file; on failure it is removed.
    pub fn sync(self) -> io::Result<Staged> {
        match self.file.sync_all() {
            Ok(()) => Ok(self),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Move the file onto its destination, then let go of its lock. Its
    /// bytes must be on disk already ([`Staged::sync`] or a barrier);
    /// making the move itself durable is the caller's ([`sync_dir`] or a
    /// barrier). Without `overwrite` an existing destination is kept and
    /// our copy removed.
    pub fn place(self, overwrite: bool) -> io::Result<Committed> {
        self.place_keeping(overwrite).map(|(committed, _)| committed)
    }

    /// [`Staged::place`], then make the move durable by itself: an `fsync`
    /// of the directory and, for a file that had no name, of the file,
    /// whose link count the move changed (a filesystem without a journal
    /// writes that inode only then).
    pub fn place_durably(self, overwrite: bool) -> io::Result<Committed> {
        let unnamed = self.part.is_none();
        let dir = self.dir.clone();
        let (committed, file) = self.place_keeping(overwrite)?;
        if committed == Committed::Renamed {
            if unnamed {
                file.sync_all()?;
            }
            sync_dir(&dir)?;
        }
        Ok(committed)
    }

    fn place_keeping(self, overwrite: bool) -> io::Result<(Committed, File)> {
        let Staged { file, dir, names, part, .. } = self;
        let Some(PartFile { meta_on_disk }) = part else {
            debug_assert!(!overwrite, "a link cannot replace a file");
            return link_unnamed(&file, &dir, &names.dest).map(|committed| (committed, file));
        };
        // The meta goes first, so that it never outlives its part file.
        remove_meta(&dir, &names, meta_on_disk)?;
        // The file itself is linked into place, from its descriptor, so
        // that what another process put under the part's name meanwhile
        // cannot take its place; to replace a file, it is linked under a
        // fresh name that is then renamed over the destination. Then the
        // part's name goes. Without hard links, the part is moved by name.
        let no_links =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK));
        let result = match overwrite {
            false => match link_unnamed(&file, &dir, &names.dest) {
                Err(e) if no_links(&e) => rename_no_replace(&dir, &names.part, &names.dest),
                linked => linked,
            },
            true => (|| {
                let fresh = format!("{}.{}", names.part.to_string_lossy(), uuid::Uuid::now_v7().simple());
                let from = match link_unnamed(&file, &dir, fresh.as_ref()) {
                    Err(e) if no_links(&e) => names.part.clone(),
                    linked => linked.map(|_| OsString::from(fresh))?,
                };
                let renamed = rustix::fs::renameat(&dir, &from, &dir, &names.dest);
                if renamed.is_err() && from != names.part {
                    let _ = remove_if_exists(&dir, &from);
                }
                renamed.map(|()| Committed::Renamed).map_err(io::Error::from)
            })(),
        };
        // Whatever happened, nothing of ours is left under the part's name.
        let cleanup = remove_if_exists(&dir, &names.part);
        // A file whose last name is gone cannot be linked again (ENOENT).
        let outcome = result.map_err(|e| match file.metadata() {
            Ok(stat) if stat.nlink() == 0 => replaced(&names.dest),
            _ => DirectoryRemoved::check(&dir, e),
        })?;
        cleanup?;
        if outcome == Committed::Renamed {
            check_placed(&file, &dir, &names.dest)?;
        }
        Ok((outcome, file))
    }

    /// Remove the part file and its meta, best effort: for a failure that
    /// is being reported already.
    pub(super) fn discard(self) {
        let Staged { file, dir, names, part, .. } = self;
        if let Some(PartFile { meta_on_disk }) = part {
            let _ = remove_meta(&dir, &names, meta_on_disk);
            let _ = remove_if_exists(&dir, &names.part);
        }
        drop(file);
    }
}

/// A new file in `dir` with no name (`O_TMPFILE`, Linux 3.11+), holding
/// `bytes`, and its filesystem. A crash before it is linked leaves nothing
/// behind.
fn unnamed(dir: &OwnedFd, bytes: &[u8]) -> io::Result<(File, u64)> {
    let flags = OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC;
    let mut file = File::from(rustix::fs::openat(dir, ".", flags, Mode::from(0o666))?);
    file.write_all(bytes)?;
    let dev = file.metadata()?.dev();
    Ok((file, dev))
}

/// Errors that mean "no unnamed files here", not "cannot write".
fn unnamed_unsupported(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Unsupported
        || matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL))
}

/// Give an unnamed file the name `name` in `dir`, unless it exists.
fn link_unnamed(file: &File, dir: &OwnedFd, name: &OsStr) -> io::Result<Committed> {
    let linked = |result: rustix::io::Result<()>| match result {
        Ok(()) => Ok(Committed::Renamed),
        Err(rustix::io::Errno::EXIST) => Ok(Committed::DestinationExists),
        Err(e) => Err(io::Error::from(e)),
    };
    match linked(rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH)) {
        // Before Linux 6.10, AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH and
        // fails with ENOENT without it; /proc names the file for anyone.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            use std::os::fd::AsRawFd;
            let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
            linked(rustix::fs::linkat(rustix::fs::CWD, proc.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW))
        }
        other => other,
    }
}

/// After a move by name: the destination must be the file we wrote and
/// verified, or another process swapped the part file before the move.
fn check_placed(file: &File, dir: &OwnedFd, dest: &OsStr) -> io::Result<()> {
    let ours = file.metadata()?;
    match rustix::fs::statat(dir, dest, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(placed) if placed.st_ino == ours.ino() && placed.st_dev == ours.dev() => Ok(()),
        // Moved on again since: not ours to judge.
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Ok(_) => Err(replaced(dest)),
        Err(e) => Err(e.into()),
    }
}

fn replaced(dest: &OsStr) -> io::Error {
    io::Error::other(format!(
        "another process replaced the part file just before it was moved into place: {} is not this download",
        dest.to_string_lossy()
    ))
}

/// Move `part` to `dest` in `dir` unless `dest` exists: `renameat2` with
/// `RENAME_NOREPLACE` where the kernel and filesystem have it (Linux 3.15+;
/// ext4, xfs, btrfs, tmpfs), else a hard link and an unlink.
fn rename_no_replace(dir: &OwnedFd, part: &OsStr, dest: &OsStr) -> io::Result<Committed> {
    match rustix::fs::renameat_with(dir, part, dir, dest, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(Committed::Renamed),
        Err(rustix::io::Errno::EXIST) => Ok(Committed::DestinationExists),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP) => {
            link_no_replace(dir, part, dest)
        }
        Err(e) => Err(e.into()),
    }
}

/// Move `part` to `dest` unless `dest` exists. A hard link is the atomic
/// "create if absent" that `rename` is not; where the filesystem has no
/// hard links, check-then-rename is the best left.
fn link_no_replace(dir: &OwnedFd, part: &OsStr, dest: &OsStr) -> io::Result<Committed> {
    match rustix::fs::linkat(dir, part, dir, dest, AtFlags::empty()) {
        Ok(()) => {
            rustix::fs::unlinkat(dir, part, AtFlags::empty())?;
            Ok(Committed::Renamed)
        }
        Err(rustix::io::Errno::EXIST) => Ok(Committed::DestinationExists),
        Err(rustix::io::Errno::PERM | rustix::io::Errno::OPNOTSUPP) => {
            // No hard links here (FAT, some FUSE mounts).
            if rustix::fs::statat(dir, dest, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                return Ok(Committed::DestinationExists);
            }
            rustix::fs::renameat(dir, part, dir, dest)?;
            Ok(Committed::Renamed)
        }
        Err(e) => Err(e.into()),
    }
}
