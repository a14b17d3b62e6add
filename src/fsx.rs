//! Partial files and the atomic commit.
//!
//! A download is written to `DEST.fetch-part` beside its destination, with
//! `DEST.fetch-part.meta` holding what resuming needs: the URL and the
//! server's validator and length from the response that started the bytes.
//! The part file is held under an exclusive lock (`flock` via
//! `File::try_lock`) for as long as a process works on it, so two runs on
//! the same manifest never write one file together.
//!
//! A fresh download stays in memory while it fits in one buffer (256 KiB):
//! the part file is made only when the bytes outgrow it, or must be kept
//! for a later run (Ctrl-C, retries used up). A small file is written at its
//! commit, into a file with no name (`O_TMPFILE`) that is linked into place,
//! so it costs one inode and no lock, meta or rename.
//!
//! Invariants:
//! - the meta is written just before the first bytes of a fresh start reach
//!   the file (bytes without a meta are never trusted), so the bytes in a
//!   part file always belong to the validator in its meta;
//! - a meta never outlives its part file (it is removed first), so a part
//!   file this process creates has none to look for;
//! - the destination only ever appears by a rename of a complete file
//!   whose bytes are on disk ([`Staged::sync`], or a barrier of
//!   [`crate::commit`]), and the rename is made durable before the entry
//!   counts as downloaded;
//! - without `--overwrite` an existing destination is never replaced, even
//!   one that appeared while we downloaded or that was not looked for
//!   ([`crate::dest::Rules::may_exist`]) (`RENAME_NOREPLACE`).
//!
//! Every file is reached through a handle on its directory ([`Dir`], from
//! [`crate::dest`]) by its bare name, with the `*at` system calls: nothing
//! here follows a path, so a directory swapped for a symlink, or renamed,
//! while the run works cannot redirect a write. Part and meta files are
//! never opened through a symlink, and a part file is used only when it is
//! a regular file with one link: anything else found under its name (a
//! symlink, a hard link to another file, a FIFO) is not ours, and is
//! unlinked rather than written through.

use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use serde::{Deserialize, Serialize};

/// An open directory that files are created in, renamed in and removed
/// from by name.
pub type Dir = Arc<OwnedFd>;

const PART_SUFFIX: &str = ".fetch-part";
const META_SUFFIX: &str = ".fetch-part.meta";
/// A new meta is written here and renamed over the old one.
const META_TMP_SUFFIX: &str = ".fetch-part.meta.tmp";
/// Longest file name most filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;
/// Big enough that a 16 KiB file is one write and a large one few syscalls.
const WRITE_BUFFER: usize = 256 * 1024;
/// A chunk at least this large is written as it is, not copied into the
/// buffer first: on a fast link hyper hands over chunks of hundreds of KiB.
pub const DIRECT_WRITE: usize = 64 * 1024;
/// Dirty bytes of one file after which their writeback is started, as
/// RocksDB's `bytes_per_sync` does: the disk works while the network does,
/// and the fsync before the rename finds little left to write.
pub const WRITEBACK_EVERY: u64 = 2 << 20;
/// A meta larger than this is not ours: it is ignored, never read whole.
const META_MAX: u64 = 1 << 20;
/// Tries at taking a part file whose name keeps changing under us (another
/// process replacing it) before the entry fails.
const LOCK_TRIES: usize = 16;

/// What a partial file's bytes are a prefix of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The manifest URL, password redacted: a changed URL means other bytes.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total: Option<u64>,
    /// Present for a split download: the file has its full length and
    /// only these `[start, end)` ranges hold downloaded bytes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub done: Option<Vec<[u64; 2]>>,
}

/// The part and meta paths for a destination, for messages; the files
/// themselves are reached by the names in [`Names::of`].
pub fn part_paths(dest: &Path) -> (PathBuf, PathBuf) {
    let names = Names::of(dest);
    (dest.with_file_name(&names.part), dest.with_file_name(&names.meta))
}

/// A destination's file name in its directory, and its part and meta
/// files' names beside it.
#[derive(Debug, Clone)]
pub struct Names {
    dest: OsString,
    part: OsString,
    meta: OsString,
    meta_tmp: OsString,
}

impl Names {
    fn of(dest: &Path) -> Names {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let base = if name.len() + META_TMP_SUFFIX.len() > NAME_MAX {
            // Keep the name recognisable and unique within NAME_MAX.
            let mut cut = NAME_MAX - META_TMP_SUFFIX.len() - 17;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}-{:016x}", &name[..cut], crate::shard::stable_hash(name.as_bytes()))
        } else {
            name
        };
        Names {
            dest: dest.file_name().unwrap_or_default().to_owned(),
            part: format!("{base}{PART_SUFFIX}").into(),
            meta: format!("{base}{META_SUFFIX}").into(),
            meta_tmp: format!("{base}{META_TMP_SUFFIX}").into(),
        }
    }
}

/// A download's partial file: the part file held under an exclusive lock,
/// or, for a fresh download that still fits in one buffer, nothing on disk
/// yet.
#[derive(Debug)]
pub struct Partial {
    /// The locked part file; `None` until the bytes outgrow `buf` (or must
    /// be kept for a later run), so that a small file touches the disk only
    /// at its commit.
    file: Option<File>,
    /// Bytes not yet written to `file`: all of them while there is none.
    buf: Vec<u8>,
    dir: Dir,
    names: Names,
    /// Bytes in the file, including those still in the buffer.
    len: u64,
    /// Bytes `0..synced` have been handed to writeback.
    synced: u64,
    /// The meta of a fresh start, written when its first bytes leave the buffer.
    pending_meta: Option<Box<Meta>>,
    /// Whether a meta file (or its temporary file) may exist beside the part.
    meta_on_disk: bool,
    /// The filesystem the file is on (`st_dev`), once there is a file.
    dev: u64,
}

#[derive(Debug)]
pub enum Opened {
    Locked(Partial),
    /// Another process holds the lock.
    Busy,
}

/// How the commit went.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    Renamed,
    /// Without --overwrite, the destination exists (it appeared while we
    /// downloaded, or was not looked for); it was kept and our copy dropped.
    DestinationExists,
}

/// What [`lock_part`] found.
enum Lock {
    Held {
        file: File,
        created: bool,
        len: u64,
        dev: u64,
    },
    /// Another process holds the lock.
    Busy,
    /// No part file (only without `create`).
    Absent,
}

/// Open `name` in `dir` for reading and writing, never through a symlink:
/// created new, or an existing regular file with one link. Anything else
/// under the name is unlinked and reported as `NotFound`.
fn open_part(dir: &OwnedFd, name: &OsStr, create: bool) -> io::Result<File> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if create {
        // O_EXCL never follows a symlink, dangling or not: EEXIST.
        let fd = rustix::fs::openat(dir, name, flags | OFlags::CREATE | OFlags::EXCL, Mode::from(0o666))?;
        return Ok(File::from(fd));
    }
    // O_NONBLOCK: a FIFO planted here must not hang the open.
    match rustix::fs::openat(dir, name, flags | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => {
            let file = File::from(fd);
            let stat = rustix::fs::fstat(&file)?;
            if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile && stat.st_nlink == 1 {
                return Ok(file);
            }
            // A hard link to another file, or not a file at all.
            unlink_foreign(dir, name)
        }
        Err(rustix::io::Errno::LOOP) => unlink_foreign(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// Remove what stands under one of our names but is not ours to write
/// through (the entry, not what it points to), then report it as absent.
fn unlink_foreign(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Err(io::ErrorKind::NotFound.into()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("{} is not a regular file and cannot be removed: {e}", name.to_string_lossy()),
        )),
    }
}

/// Open and lock the part file `name` in `dir`, creating it if `create`.
fn lock_part(dir: &OwnedFd, name: &OsStr, create: bool) -> io::Result<Lock> {
    for _ in 0..LOCK_TRIES {
        let (file, created) = match create.then(|| open_part(dir, name, true)) {
            Some(Ok(file)) => (file, true),
            Some(Err(e)) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => match open_part(dir, name, false) {
                Ok(file) => (file, false),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lock::Absent),
                Err(e) => return Err(e),
            },
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Lock::Busy),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        // The holder before us may have renamed this inode into place
        // before we locked it: only the file still at `name` is ours.
        let ours = file.metadata()?;
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(now) if now.st_ino == ours.ino() && now.st_dev == ours.dev() => {
                return Ok(Lock::Held { file, created, len: ours.len(), dev: ours.dev() });
            }
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("{} keeps being replaced by another process", name.to_string_lossy())))
}

/// The part file was locked by another process after this one looked for
/// it: that process has the entry. Carried inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("another fetch process is writing {}", .0.to_string_lossy())]
pub struct LockedElsewhere(OsString);

impl LockedElsewhere {
    /// Whether `error` is one.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|inner| inner.is::<LockedElsewhere>())
    }
}

/// Create and lock the part file, empty and without a meta, for a fresh
/// download; and its filesystem (`st_dev`).
fn create_part(dir: &OwnedFd, names: &Names) -> io::Result<(File, u64)> {
    let Lock::Held { file, created, len, dev } = lock_part(dir, &names.part, true)? else {
        return Err(busy(&names.part));
    };
    if !created {
        // Left by a run that ended after we looked: not ours to trust.
        if len > 0 {
            file.set_len(0)?;
        }
        remove_meta(dir, names, true)?;
    }
    Ok((file, dev))
}

fn busy(part: &OsStr) -> io::Error {
    io::Error::new(io::ErrorKind::ResourceBusy, LockedElsewhere(part.to_owned()))
}

impl Partial {
    /// Lock the part file for `dest` in `dir` (its parent), if an earlier
    /// run left one: its bytes are kept, and [`Partial::meta`] says whether
    /// to trust them. Without one, nothing is created until the bytes
    /// outgrow the buffer. With `look` false (a directory this run
    /// created) there is none to find.
    pub fn open(dir: Dir, dest: &Path, look: bool) -> io::Result<Opened> {
        let mut partial = Partial {
            file: None,
            buf: Vec::new(),
            dir,
            names: Names::of(dest),
            len: 0,
            synced: 0,
            pending_meta: None,
            meta_on_disk: false,
            dev: 0,
        };
        if !look {
            return Ok(Opened::Locked(partial));
        }
        match lock_part(&partial.dir, &partial.names.part, false)? {
            Lock::Busy => return Ok(Opened::Busy),
            Lock::Absent => {}
            Lock::Held { mut file, len, dev, .. } => {
                if len > 0 {
                    file.seek(SeekFrom::End(0))?;
                }
                partial.file = Some(file);
                (partial.len, partial.synced, partial.dev) = (len, len, dev);
                partial.meta_on_disk = true;
            }
        }
        Ok(Opened::Locked(partial))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stored meta, if there is one that parses: a regular file,
    /// reached without a symlink, of at most [`META_MAX`] bytes.
    pub fn meta(&self) -> Option<Meta> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&self.dir, &self.names.meta, flags, Mode::empty()).ok()?);
        let stat = rustix::fs::fstat(&file).ok()?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return None;
        }
        let mut text = Vec::new();
        file.take(META_MAX + 1).read_to_end(&mut text).ok()?;
        if text.len() as u64 > META_MAX {
            return None;
        }
        serde_json::from_slice(&text).ok()
    }

    /// Empty the file and record what its next bytes will be (on disk
    /// once they are).
    pub fn restart(&mut self, meta: Meta) -> io::Result<()> {
        self.truncate()?;
        self.pending_meta = Some(Box::new(meta));
        Ok(())
    }

    /// Empty the file, forgetting its meta.
    pub fn truncate(&mut self) -> io::Result<()> {
        self.pending_meta = None;
        let on_disk = self.len - self.buf.len() as u64;
        self.buf.clear();
        if let Some(file) = &mut self.file
            && on_disk > 0
        {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
        }
        self.len = 0;
        self.synced = 0;
        let on_disk = std::mem::take(&mut self.meta_on_disk);
        remove_meta(&self.dir, &self.names, on_disk)
    }

    /// The part file, created and locked now if there is none yet.
    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let (file, dev) = create_part(&self.dir, &self.names)?;
            self.dev = dev;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Write buffered bytes to the file, after the meta they need.
    fn flush(&mut self) -> io::Result<()> {
        self.file()?;
        if let Some(meta) = self.pending_meta.take() {
            self.save_meta(&meta)?;
        }
        if !self.buf.is_empty() {
            let file = self.file.as_mut().expect("created above");
            file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Prepare for a split download: record `meta` (whose `done` names the
    /// ranges already present), give the file its full length, and return
    /// a handle for positional writes. The meta is written first, so a
    /// crash never leaves a full-length file that looks like a prefix.
    pub fn split(&mut self, meta: &Meta, total: u64) -> io::Result<File> {
        debug_assert!(meta.done.is_some());
        self.pending_meta = None;
        self.flush()?;
        self.save_meta(meta)?;
        let len = self.len;
        let file = self.file()?;
        if len != total {
            file.set_len(total)?;
        }
        let handle = file.try_clone();
        self.len = total;
        handle
    }

    /// Replace the meta atomically (write a new file, rename it over the
    /// old), so that a crash leaves the old record or the new one, never a
    /// torn one, and whatever stood under the meta's name is replaced,
    /// never written through.
    pub fn save_meta(&mut self, meta: &Meta) -> io::Result<()> {
        let (dir, names) = (&self.dir, &self.names);
        remove_if_exists(dir, &names.meta_tmp)?;
        self.meta_on_disk = true;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut tmp = File::from(rustix::fs::openat(dir, &names.meta_tmp, flags, Mode::from(0o666))?);
        tmp.write_all(&meta_text(meta)?)?;
        Ok(rustix::fs::renameat(dir, &names.meta_tmp, dir, &names.meta)?)
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let direct = self.file.is_some() && bytes.len() >= DIRECT_WRITE;
        if direct || self.buf.len() + bytes.len() > WRITE_BUFFER {
            // The meta and the buffered bytes go first.
            self.flush()?;
        }
        match &mut self.file {
            Some(file) if bytes.len() >= DIRECT_WRITE => file.write_all(bytes)?,
            _ => self.buf.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        if self.len - self.synced >= WRITEBACK_EVERY {
            self.flush()?;
            let (from, len) = (self.synced, self.len - self.synced);
            start_writeback(self.file()?, from, len);
            self.synced = self.len;
        }
        Ok(())
    }

    /// Feed the bytes already in the file to `sink`, for a digest that must
    /// cover a partial file left by an earlier run.
    pub fn read_existing(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<()> {
        if self.file.is_none() {
            sink(&self.buf);
            return Ok(());
        }
        self.flush()?;
        let len = self.len;
        let file = self.file()?;
        file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; WRITE_BUFFER];
        let mut left = len;
        while left > 0 {
            let n = file.read(&mut buf[..WRITE_BUFFER.min(left as usize)])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            sink(&buf[..n]);
            left -= n as u64;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(())
    }

    /// Write out the bytes so a later run can resume them; the lock goes
    /// with the file handle.
    pub fn keep(mut self) -> io::Result<()> {
        if self.file.is_none() && self.buf.is_empty() {
            return Ok(());
        }
        self.flush()
    }

    /// Remove the part file and its meta.
    pub fn discard(self) -> io::Result<()> {
        // Removed while still locked, so no other process starts on them.
        let Partial { file, dir, names, meta_on_disk, .. } = self;
        if file.is_none() {
            return Ok(());
        }
        remove_meta(&dir, &names, meta_on_disk)?;
        remove_if_exists(&dir, &names.part)?;
        drop(file);
        Ok(())
    }

    /// End the download: the bytes still buffered go to the part file, or,
    /// when there is none, stay in memory for [`Complete::stage`]. On
    /// failure the part file and its meta are removed: a file that could
    /// not be written (ENOSPC, EIO) cannot be trusted for resume.
    pub fn finish(mut self) -> io::Result<Complete> {
        let Some(mut file) = self.file.take() else {
            let Partial { buf, dir, names, .. } = self;
            return Ok(Complete::Buffered { bytes: buf, dir, names });
        };
        let written = file.write_all(&self.buf);
        let Partial { dir, names, meta_on_disk, dev, .. } = self;
        let staged = Staged { file, dev, dir, names, part: Some(PartFile { meta_on_disk }) };
        match written {
            Ok(()) => Ok(Complete::Staged(staged)),
            Err(e) => {
                staged.discard();
                Err(e)
            }
        }
    }

    /// Flush to disk and move into place, one file on its own (blocking:
    /// call off the runtime). [`crate::commit`] does the same for many
    /// files with one barrier.
    pub fn commit(self, overwrite: bool) -> io::Result<Committed> {
        self.finish()?.stage(overwrite)?.sync()?.place_durably(overwrite)
    }
}

/// A finished download.
#[derive(Debug)]
pub enum Complete {
    /// In its part file.
    Staged(Staged),
    /// Never left the buffer: no file yet.
    Buffered { bytes: Vec<u8>, dir: Dir, names: Names },
}

impl Complete {
    /// Have the bytes in a file, ready to be placed: an unnamed file
    /// (`O_TMPFILE`) where the filesystem has them, which never needs a
    /// name of its own, a lock or cleaning up after a crash; else (and to
    /// replace a file, which a link cannot) a locked part file.
    pub fn stage(self, overwrite: bool) -> io::Result<Staged> {
        let (bytes, dir, names) = match self {
            Complete::Staged(staged) => return Ok(staged),
            Complete::Buffered { bytes, dir, names } => (bytes, dir, names),
        };
        if !overwrite {
            match unnamed(&dir, &bytes) {
                Ok((file, dev)) => return Ok(Staged { file, dev, dir, names, part: None }),
                Err(e) if unnamed_unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let (file, dev) = create_part(&dir, &names)?;
        let staged = Staged { file, dev, dir, names, part: Some(PartFile { meta_on_disk: false }) };
        match staged.file.write_all_at(&bytes, 0) {
            Ok(()) => Ok(staged),
            Err(e) => {
                staged.discard();
                Err(e)
            }
        }
    }
}

/// A complete file waiting for its commit: its bytes are written, not yet
/// known to be on disk, and it is not at its destination.
#[derive(Debug)]
pub struct Staged {
    file: File,
    dev: u64,
    /// The destination's directory, and the names in it.
    dir: Dir,
    names: Names,
    /// The part file the bytes are in; `None` for an unnamed file.
    part: Option<PartFile>,
}

#[derive(Debug)]
struct PartFile {
    meta_on_disk: bool,
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
        let result = if overwrite {
            rustix::fs::renameat(&dir, &names.part, &dir, &names.dest)
                .map(|()| Committed::Renamed)
                .map_err(io::Error::from)
        } else {
            rename_no_replace(&dir, &names.part, &names.dest)
        };
        let cleanup = match &result {
            Ok(Committed::Renamed) => Ok(()),
            Ok(Committed::DestinationExists) | Err(_) => remove_if_exists(&dir, &names.part),
        };
        let outcome = result?;
        cleanup?;
        Ok((outcome, file))
    }

    /// Remove the part file and its meta, best effort: for a failure that
    /// is being reported already.
    fn discard(self) {
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

/// Make a rename in `dir` durable.
pub fn sync_dir(dir: &impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::fsync(dir)?)
}

/// Make a rename in `path`'s directory durable, for a directory known by
/// path only (the ones the run made, [`crate::dest::MadeDirs`]): opened to
/// be synced, never written.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(dir_of(path))?.sync_all()
}

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Ask the kernel to start writing `len` bytes at `offset` of `file` to
/// disk, without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Only a
/// hint: errors surface at the fsync that follows, which is what makes the
/// data durable.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: the call takes plain integers; the descriptor stays open for
    // the borrow of `file`, and the kernel checks the range itself.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
pub fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// A meta as its file holds it: one line of JSON.
fn meta_text(meta: &Meta) -> io::Result<Vec<u8>> {
    let mut text = serde_json::to_vec(meta).map_err(io::Error::other)?;
    text.push(b'\n');
    Ok(text)
}

/// Remove the meta and the temporary file a replacement may have left, if
/// either may be on disk. Both are tried; the first error is kept.
fn remove_meta(dir: &OwnedFd, names: &Names, on_disk: bool) -> io::Result<()> {
    if !on_disk {
        return Ok(());
    }
    let tmp = remove_if_exists(dir, &names.meta_tmp);
    let meta = remove_if_exists(dir, &names.meta);
    tmp.and(meta)
}

/// Unlink `name` in `dir` (the entry itself, never what a symlink names).
fn remove_if_exists(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn open(dest: &Path) -> io::Result<Opened> {
        let dir = File::open(dest.parent().unwrap()).unwrap();
        Partial::open(Arc::new(OwnedFd::from(dir)), dest, true)
    }

    #[test]
    fn part_names_fit_name_max() {
        let (part, meta) = part_paths(Path::new("d/a.bin"));
        assert_eq!(
            (part.to_str().unwrap(), meta.to_str().unwrap()),
            ("d/a.bin.fetch-part", "d/a.bin.fetch-part.meta")
        );
        let long = "é".repeat(127) + ".bin";
        let (part, meta) = part_paths(Path::new(&long));
        assert!(meta.file_name().unwrap().len() <= NAME_MAX);
        assert!(part.to_str().unwrap().ends_with(PART_SUFFIX));
        let other = "é".repeat(127) + ".bim";
        assert_ne!(part_paths(Path::new(&other)).0, part);
    }

    #[test]
    fn lock_excludes_a_second_writer_and_commit_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let (part, meta) = part_paths(&dest);
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!("not locked") };
        p.restart(Meta { url: "u".into(), etag: Some("\"e\"".into()), ..Meta::default() }).unwrap();
        p.write(b"hello").unwrap();
        assert!(!part.exists(), "bytes that fit the buffer stay in memory");
        assert_eq!(p.meta(), None, "no meta before bytes reach the file");
        let Opened::Locked(mut q) = open(&dest).unwrap() else { panic!("nothing to lock yet") };
        p.write(&[0; WRITE_BUFFER]).unwrap();
        assert_eq!(p.meta().unwrap().etag.as_deref(), Some("\"e\""));
        assert!(matches!(open(&dest).unwrap(), Opened::Busy));
        let err = q.write(&[1; WRITE_BUFFER + 1]).unwrap_err();
        assert!(LockedElsewhere::is(&err), "{err}");
        fs::write(&dest, b"old").unwrap();
        assert_eq!(p.commit(false).unwrap(), Committed::DestinationExists);
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert!(!part.exists() && !meta.exists());

        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!("not locked") };
        p.write(b"new").unwrap();
        assert_eq!(p.commit(true).unwrap(), Committed::Renamed);
        assert_eq!(fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn a_small_file_never_gets_a_meta_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let meta = Meta { url: "u".into(), etag: Some("\"e\"".into()), ..Meta::default() };
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.restart(meta.clone()).unwrap();
        p.write(b"small").unwrap();
        assert_eq!(p.commit(false).unwrap(), Committed::Renamed);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);
        assert_eq!(fs::read(&dest).unwrap(), b"small");
        // Committed from memory, it still never replaces a file.
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.write(b"other").unwrap();
        assert_eq!(p.commit(false).unwrap(), Committed::DestinationExists);
        assert_eq!(fs::read(&dest).unwrap(), b"small");
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.write(b"newer").unwrap();
        assert_eq!(p.commit(true).unwrap(), Committed::Renamed);
        assert_eq!(fs::read(&dest).unwrap(), b"newer");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);

        // Kept for the next run, even a few bytes need their meta.
        let dest = dir.path().join("g");
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.restart(meta.clone()).unwrap();
        p.write(b"few").unwrap();
        p.keep().unwrap();
        let Opened::Locked(p) = open(&dest).unwrap() else { panic!() };
        assert_eq!((p.len(), p.meta()), (3, Some(meta)));
    }

    #[test]
    fn kept_bytes_are_reopened_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.write(b"abc").unwrap();
        p.keep().unwrap();
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        assert_eq!(p.len(), 3);
        let mut seen = Vec::new();
        p.read_existing(|b| seen.extend_from_slice(b)).unwrap();
        p.write(b"de").unwrap();
        p.commit(false).unwrap();
        assert_eq!(seen, b"abc");
        assert_eq!(fs::read(&dest).unwrap(), b"abcde");
    }

    #[test]
    fn a_large_chunk_written_as_it_is_still_follows_its_meta() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        p.write(b"old").unwrap();
        p.keep().unwrap();
        let Opened::Locked(mut p) = open(&dest).unwrap() else { panic!() };
        let meta = Meta { url: "u".into(), etag: Some("\"e\"".into()), ..Meta::default() };
        p.restart(meta.clone()).unwrap();
        p.write(b"a").unwrap();
        p.write(&[7; DIRECT_WRITE]).unwrap();
        assert_eq!(p.meta(), Some(meta), "bytes on disk without their meta");
        assert_eq!(fs::metadata(part_paths(&dest).0).unwrap().len(), 1 + DIRECT_WRITE as u64);
        p.commit(false).unwrap();
        assert_eq!(fs::read(&dest).unwrap().len(), 1 + DIRECT_WRITE);
    }
}
