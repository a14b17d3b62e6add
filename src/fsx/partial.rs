//! A download's partial file: the part file beside its destination, held
//! under an exclusive lock (`flock`) while this process writes it, and its
//! meta; or, while the bytes fit in one buffer, nothing on disk yet.

use std::ffi::OsStr;
use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::validators::Validators;

use super::place::{Complete, PartFile, Staged, stamp};
use super::{
    Committed, DIRECT_WRITE, Dir, LOCK_TRIES, LockedElsewhere, META_MAX, Meta, Names, WRITE_BUFFER,
    WRITEBACK_EVERY, meta_text, remove_if_exists, remove_meta,
};

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
    /// The modification time to give the finished file (the server's
    /// `Last-Modified`), set after its last write.
    modified: Option<SystemTime>,
    /// The server's validators, stored with the finished file.
    validators: Option<Box<Validators>>,
}

#[derive(Debug)]
pub enum Opened {
    Locked(Partial),
    /// Another process holds the lock.
    Busy,
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
/// created new, or an existing file of ours (`ours`). Anything else under
/// the name is unlinked and reported as `NotFound`.
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
            if ours(&file)? {
                return Ok(file);
            }
            unlink_foreign(dir, name)
        }
        // A symlink, a socket, a device without a driver.
        Err(Errno::LOOP | Errno::NXIO | Errno::NODEV | Errno::TXTBSY) => unlink_foreign(dir, name),
        Err(e) => Err(e.into()),
    }
}

/// Whether an open file under one of our names is ours to use: a regular
/// file with one link (no hard link to a file elsewhere) that belongs to
/// this process's user (not one another user planted to be written, or
/// to keep a handle on).
pub(super) fn ours(file: &File) -> io::Result<bool> {
    let stat = rustix::fs::fstat(file)?;
    Ok(FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && stat.st_nlink == 1
        && stat.st_uid == rustix::process::geteuid().as_raw())
}

/// Remove what stands under one of our names but is not ours to write
/// through (the entry, not what it points to), then report it as absent.
fn unlink_foreign(dir: &OwnedFd, name: &OsStr) -> io::Result<File> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Err(io::ErrorKind::NotFound.into()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "{} is in the way, not a file of ours, and cannot be removed: {e}",
                name.to_string_lossy()
            ),
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
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("{} keeps being replaced by another process", name.to_string_lossy())))
}

/// Create and lock the part file, empty and without a meta, for a fresh
/// download; and its filesystem (`st_dev`).
pub(super) fn create_part(dir: &OwnedFd, names: &Names) -> io::Result<(File, u64)> {
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
            modified: None,
            validators: None,
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

    /// The stored meta, if there is one that parses: a file of ours
    /// (`ours`), reached without a symlink, of at most `META_MAX` bytes.
    pub fn meta(&self) -> Option<Meta> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::openat(&self.dir, &self.names.meta, flags, Mode::empty()).ok()?);
        if !ours(&file).ok()? {
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
    pub fn segmented(&mut self, meta: &Meta, total: u64) -> io::Result<File> {
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
            crate::sys::start_writeback(self.file()?, from, len);
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
            let Partial { buf, dir, names, modified, validators, .. } = self;
            let validators = validators.map(|v| *v).unwrap_or_default();
            return Ok(Complete::Buffered { bytes: buf, dir, names, modified, validators });
        };
        let written = file.write_all(&self.buf).and_then(|()| {
            stamp(&file, self.modified, &self.validators.take().map(|v| *v).unwrap_or_default())
        });
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

    /// Give the finished file `time` as its modification time.
    pub fn set_modified(&mut self, time: SystemTime) {
        self.modified = Some(time);
    }

    /// Store `validators` with the finished file ([`crate::validators`]).
    pub fn set_validators(&mut self, validators: Validators) {
        self.validators = Some(Box::new(validators));
    }

    /// Flush to disk and move into place, one file on its own (blocking:
    /// call off the runtime). [`crate::commit`] does the same for many
    /// files with one barrier.
    pub fn commit(self, overwrite: bool) -> io::Result<Committed> {
        self.finish()?.stage(overwrite)?.sync()?.place_durably(overwrite)
    }
}
