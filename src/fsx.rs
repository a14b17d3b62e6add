//! Partial files and the atomic commit.
//!
//! A download is written to `DEST.fetch-part` beside its destination, with
//! `DEST.fetch-part.meta` holding what resuming needs: the URL and the
//! server's validator and length from the response that started the bytes.
//! The part file is held under an exclusive lock (`flock` via
//! `File::try_lock`) for as long as a process works on it, so two runs on
//! the same manifest never write one file together.
//!
//! Invariants:
//! - the meta is written just before the first bytes of a fresh start reach
//!   the file (bytes without a meta are never trusted), so the bytes in a
//!   part file always belong to the validator in its meta. A small file is
//!   one buffer, written only at its commit: it never gets a meta, which
//!   saves creating and deleting an inode per file;
//! - the destination only ever appears by a rename or link of a complete,
//!   `fsync`ed file, followed by an `fsync` of its directory;
//! - without `--overwrite` an existing destination is never replaced, even
//!   one that appeared while we downloaded (link, not rename).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const PART_SUFFIX: &str = ".fetch-part";
const META_SUFFIX: &str = ".fetch-part.meta";
/// A new meta is written here and renamed over the old one.
const META_TMP_SUFFIX: &str = ".fetch-part.meta.tmp";
/// Longest file name most filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;
/// Big enough that a 16 KiB file is one write and a large one few syscalls.
const WRITE_BUFFER: usize = 256 * 1024;
/// Dirty bytes of one file after which their writeback is started, as
/// RocksDB's `bytes_per_sync` does: the disk works while the network does,
/// and the fsync before the rename finds little left to write.
pub const WRITEBACK_EVERY: u64 = 8 << 20;

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

/// The part and meta paths for a destination.
pub fn part_paths(dest: &Path) -> (PathBuf, PathBuf) {
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
    (dest.with_file_name(format!("{base}{PART_SUFFIX}")), dest.with_file_name(format!("{base}{META_SUFFIX}")))
}

/// A part file held under an exclusive lock.
#[derive(Debug)]
pub struct Partial {
    writer: BufWriter<File>,
    part: PathBuf,
    meta: PathBuf,
    /// Bytes in the file, including those still in the buffer.
    len: u64,
    /// Split into ranges: the meta is replaced by rename, and may have left
    /// its temporary file behind after a crash.
    split: bool,
    /// Bytes `0..synced` have been handed to writeback.
    synced: u64,
    /// The meta of a fresh start, written when its first bytes leave the buffer.
    pending_meta: Option<Vec<u8>>,
    /// Whether a meta file may exist beside the part.
    meta_on_disk: bool,
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
    /// Without --overwrite, the destination appeared while we downloaded;
    /// it was kept and our copy dropped.
    DestinationExists,
}

impl Partial {
    /// Open (creating if needed) and lock the part file for `dest`. Its
    /// existing bytes are kept; [`Partial::meta`] says whether to trust them.
    pub fn open(dest: &Path) -> io::Result<Opened> {
        let (part, meta) = part_paths(dest);
        loop {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&part)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(Opened::Busy),
                Err(TryLockError::Error(e)) => return Err(e),
            }
            // The holder we waited out may have renamed this inode into place
            // before we locked it: only the file still at `part` is ours.
            let ours = file.metadata()?;
            match fs::metadata(&part) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    let len = ours.len();
                    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, file);
                    if len > 0 {
                        writer.seek(SeekFrom::End(0))?;
                    }
                    return Ok(Opened::Locked(Partial {
                        writer,
                        part,
                        meta,
                        synced: len,
                        len,
                        split: false,
                        pending_meta: None,
                        meta_on_disk: true,
                    }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stored meta, if there is one that parses.
    pub fn meta(&self) -> Option<Meta> {
        let text = fs::read(&self.meta).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Empty the file and record what its next bytes will be (on disk
    /// once they are).
    pub fn restart(&mut self, meta: &Meta) -> io::Result<()> {
        self.truncate()?;
        let mut text = serde_json::to_vec(meta).map_err(io::Error::other)?;
        text.push(b'\n');
        self.pending_meta = Some(text);
        Ok(())
    }

    /// Empty the file, forgetting its meta.
    pub fn truncate(&mut self) -> io::Result<()> {
        self.pending_meta = None;
        if self.len > 0 || !self.writer.buffer().is_empty() {
            self.writer.flush()?;
            let file = self.writer.get_mut();
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
        }
        self.len = 0;
        self.synced = 0;
        if std::mem::take(&mut self.split) {
            remove_if_exists(&meta_tmp(&self.meta))?;
        }
        if std::mem::take(&mut self.meta_on_disk) {
            remove_if_exists(&self.meta)?;
        }
        Ok(())
    }

    /// Write buffered bytes to the file, after the meta they need.
    fn flush(&mut self) -> io::Result<()> {
        self.write_pending_meta()?;
        self.writer.flush()
    }

    fn write_pending_meta(&mut self) -> io::Result<()> {
        if let Some(text) = self.pending_meta.take() {
            fs::write(&self.meta, text)?;
            self.meta_on_disk = true;
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
        self.writer.flush()?;
        self.split = true;
        self.save_meta(meta)?;
        let file = self.writer.get_mut();
        if self.len != total {
            file.set_len(total)?;
            self.len = total;
        }
        file.try_clone()
    }

    /// Replace the meta atomically (write a temporary file, rename it), so
    /// that a crash leaves the old record or the new one, never a torn one.
    pub fn save_meta(&mut self, meta: &Meta) -> io::Result<()> {
        let mut text = serde_json::to_vec(meta).map_err(io::Error::other)?;
        text.push(b'\n');
        let tmp = meta_tmp(&self.meta);
        fs::write(&tmp, text)?;
        self.meta_on_disk = true;
        fs::rename(&tmp, &self.meta)
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.writer.buffer().len() + bytes.len() > self.writer.capacity() {
            // These bytes make the buffer go to the file.
            self.write_pending_meta()?;
        }
        self.writer.write_all(bytes)?;
        self.len += bytes.len() as u64;
        if self.len - self.synced >= WRITEBACK_EVERY {
            self.flush()?;
            start_writeback(self.writer.get_ref(), self.synced, self.len - self.synced);
            self.synced = self.len;
        }
        Ok(())
    }

    /// Feed the bytes already in the file to `sink`, for a digest that must
    /// cover a partial file left by an earlier run.
    pub fn read_existing(&mut self, mut sink: impl FnMut(&[u8])) -> io::Result<()> {
        self.flush()?;
        let file = self.writer.get_mut();
        file.seek(SeekFrom::Start(0))?;
        let mut buf = vec![0u8; WRITE_BUFFER];
        let mut left = self.len;
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

    /// Flush buffered bytes so a later run can resume them; the lock goes
    /// with the file handle.
    pub fn keep(mut self) -> io::Result<()> {
        self.flush()
    }

    /// Remove the part file and its meta.
    pub fn discard(self) -> io::Result<()> {
        let Partial { writer, part, meta, split, .. } = self;
        drop(writer);
        if split {
            remove_if_exists(&meta_tmp(&meta))?;
        }
        remove_if_exists(&meta)?;
        remove_if_exists(&part)
    }

    /// Flush to disk and move into place (blocking: call off the runtime).
    /// On failure the part file and its meta are removed: a file that
    /// could not be flushed (ENOSPC, EIO) cannot be trusted for resume.
    pub fn commit(self, dest: &Path, overwrite: bool) -> io::Result<Committed> {
        let Partial { writer, part, meta, split, meta_on_disk, .. } = self;
        if split {
            remove_if_exists(&meta_tmp(&meta))?;
        }
        let result = flush_and_place(writer, &part, dest, overwrite);
        let remove_meta = || if meta_on_disk { remove_if_exists(&meta) } else { Ok(()) };
        let cleanup = match &result {
            Ok(Committed::Renamed) => remove_meta(),
            Ok(Committed::DestinationExists) | Err(_) => remove_meta().and(remove_if_exists(&part)),
        };
        let outcome = result?;
        cleanup?;
        sync_dir(dest)?;
        Ok(outcome)
    }
}

fn flush_and_place(
    writer: BufWriter<File>,
    part: &Path,
    dest: &Path,
    overwrite: bool,
) -> io::Result<Committed> {
    let file = writer.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    if overwrite {
        fs::rename(part, dest)?;
        Ok(Committed::Renamed)
    } else {
        rename_no_replace(part, dest)
    }
}

/// Move `part` to `dest` unless `dest` exists: `renameat2` with
/// `RENAME_NOREPLACE` where the kernel and filesystem have it (Linux 3.15+;
/// ext4, xfs, btrfs, tmpfs), else a hard link and an unlink.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn rename_no_replace(part: &Path, dest: &Path) -> io::Result<Committed> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(part)?, c(dest)?);
    // SAFETY: both strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if rc == 0 {
        return Ok(Committed::Renamed);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EEXIST) => Ok(Committed::DestinationExists),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => link_no_replace(part, dest),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_no_replace(part: &Path, dest: &Path) -> io::Result<Committed> {
    link_no_replace(part, dest)
}

/// Move `part` to `dest` unless `dest` exists. A hard link is the atomic
/// "create if absent" that `rename` is not; where the filesystem has no
/// hard links, check-then-rename is the best left.
fn link_no_replace(part: &Path, dest: &Path) -> io::Result<Committed> {
    match fs::hard_link(part, dest) {
        Ok(()) => {
            fs::remove_file(part)?;
            Ok(Committed::Renamed)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Committed::DestinationExists),
        Err(e) if matches!(e.raw_os_error(), Some(1 | 95)) => {
            // EPERM / EOPNOTSUPP: no hard links here (FAT, some FUSE mounts).
            if fs::symlink_metadata(dest).is_ok() {
                return Ok(Committed::DestinationExists);
            }
            fs::rename(part, dest)?;
            Ok(Committed::Renamed)
        }
        Err(e) => Err(e),
    }
}

/// Make a rename in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
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

fn meta_tmp(meta: &Path) -> PathBuf {
    let mut name = meta.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn lock_excludes_a_second_opener_and_commit_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!("not locked") };
        assert!(matches!(Partial::open(&dest).unwrap(), Opened::Busy));
        p.restart(&Meta { url: "u".into(), etag: Some("\"e\"".into()), ..Meta::default() }).unwrap();
        p.write(b"hello").unwrap();
        assert_eq!(p.meta(), None, "no meta before bytes reach the file");
        p.write(&[0; WRITE_BUFFER]).unwrap();
        assert_eq!(p.meta().unwrap().etag.as_deref(), Some("\"e\""));
        fs::write(&dest, b"old").unwrap();
        assert_eq!(p.commit(&dest, false).unwrap(), Committed::DestinationExists);
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        let (part, meta) = part_paths(&dest);
        assert!(!part.exists() && !meta.exists());

        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!("not locked") };
        p.write(b"new").unwrap();
        assert_eq!(p.commit(&dest, true).unwrap(), Committed::Renamed);
        assert_eq!(fs::read(&dest).unwrap(), b"new");
    }

    #[test]
    fn a_small_file_never_gets_a_meta_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let meta = Meta { url: "u".into(), etag: Some("\"e\"".into()), ..Meta::default() };
        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!() };
        p.restart(&meta).unwrap();
        p.write(b"small").unwrap();
        assert_eq!(p.commit(&dest, false).unwrap(), Committed::Renamed);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);

        // Kept for the next run, even a few bytes need their meta.
        let dest = dir.path().join("g");
        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!() };
        p.restart(&meta).unwrap();
        p.write(b"few").unwrap();
        p.keep().unwrap();
        let Opened::Locked(p) = Partial::open(&dest).unwrap() else { panic!() };
        assert_eq!((p.len(), p.meta()), (3, Some(meta)));
    }

    #[test]
    fn kept_bytes_are_reopened_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!() };
        p.write(b"abc").unwrap();
        p.keep().unwrap();
        let Opened::Locked(mut p) = Partial::open(&dest).unwrap() else { panic!() };
        assert_eq!(p.len(), 3);
        let mut seen = Vec::new();
        p.read_existing(|b| seen.extend_from_slice(b)).unwrap();
        p.write(b"de").unwrap();
        p.commit(&dest, false).unwrap();
        assert_eq!(seen, b"abc");
        assert_eq!(fs::read(&dest).unwrap(), b"abcde");
    }
}
