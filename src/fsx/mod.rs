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
//! - a finished file gets its mtime and its validators (an extended
//!   attribute, [`crate::validators`]) before it is placed, so that they
//!   replace the old file's with its bytes, in the same move;
//! - unless asked to replace it (`--overwrite`, a file of the wrong size,
//!   a new version for `--refresh`) an existing destination is never
//!   replaced, even one that appeared while we downloaded or that was not
//!   looked for ([`crate::dest::DestTree::may_exist`]) (`RENAME_NOREPLACE`).
//!
//! `partial` owns a download's file while it is written, `place` the
//! finished file until it is at its destination.
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
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

mod partial;
mod place;

pub use partial::{Opened, Partial};
pub use place::{Complete, Staged};

/// An open directory that files are created in, renamed in and removed
/// from by name.
pub type Dir = Arc<OwnedFd>;

/// The endings of the files fetch keeps beside a destination; no
/// destination may end so ([`crate::dest`]).
pub const RESERVED_SUFFIXES: [&str; 3] = [PART_SUFFIX, META_SUFFIX, META_TMP_SUFFIX];
const PART_SUFFIX: &str = ".fetch-part";
const META_SUFFIX: &str = ".fetch-part.meta";
/// A new meta is written here and renamed over the old one.
const META_TMP_SUFFIX: &str = ".fetch-part.meta.tmp";
/// Longest file name most filesystems take (NAME_MAX).
const NAME_MAX: usize = 255;
/// Bytes gathered before one write (of a stream, or of a range of a split
/// download): a 16 KiB file is one write and a large one few syscalls.
pub const WRITE_BUFFER: usize = 256 * 1024;
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
/// themselves are reached by the names in `Names::of`.
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

/// How the commit went.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    Renamed,
    /// Without --overwrite, the destination exists (it appeared while we
    /// downloaded, or was not looked for); it was kept and our copy dropped.
    DestinationExists,
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

/// The destination's directory was removed (by another process) while
/// the file was on its way: nothing can be placed in it any more. Carried
/// inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("its directory was removed meanwhile ({0})")]
pub struct DirectoryRemoved(io::Error);

impl DirectoryRemoved {
    /// Whether `error` is one.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|inner| inner.is::<DirectoryRemoved>())
    }

    /// `error`, or a `DirectoryRemoved` carrying it if `dir` has no name
    /// left (`st_nlink` 0): whatever call failed, that is why.
    fn check(dir: &OwnedFd, error: io::Error) -> io::Error {
        match rustix::fs::fstat(dir) {
            Ok(stat) if stat.st_nlink == 0 => {
                io::Error::new(io::ErrorKind::NotFound, DirectoryRemoved(error))
            }
            _ => error,
        }
    }
}

/// Make a rename in `dir` durable.
pub fn sync_dir(dir: &impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::fsync(dir)?)
}

/// Make a rename in `path`'s directory durable, for a directory known by
/// path only (the ones the run made, [`crate::dest::MadeDirs`]): opened
/// read-only to be synced, never written, and only if it is a directory
/// (`O_DIRECTORY` refuses a FIFO or a device swapped in before it is
/// opened, so nothing can hang or wake a device here).
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    sync_dir(&rustix::fs::open(dir_of(path), flags, Mode::empty())?)
}

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

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
    use std::fs::{self, File};

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
