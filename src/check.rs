//! `--check`: are the files on disk the ones the manifest describes? Each
//! entry's destination is compared with its `size` and checksums, with no
//! request made and nothing written: `ok`, `missing` or `mismatch` (and
//! `failed` for an invalid line or a file that cannot be read), on
//! standard error, in the `--report` and in the summary.
//!
//! - A destination is opened as the download would reach it: beneath
//!   `--dir` by the kernel (`openat2(RESOLVE_BENEATH)`, or one directory at
//!   a time without following symlinks), never through a symlink at the
//!   destination itself, and read only if it is a regular file. A FIFO, a
//!   device or a directory there is a mismatch, opened without blocking
//!   (`O_NONBLOCK`) and never read; an entry with no checksum opens its
//!   file with `O_PATH` only, which reads nothing.
//! - An entry that gives neither size nor checksum is `ok` when a regular
//!   file is there: existence is all its line promises. The line and the
//!   summary say that nothing was compared.
//! - Files are hashed on [`threads`] threads, each file streamed once with
//!   a 1 MiB buffer through every digest its entry names. Entries reach the
//!   threads through a bounded queue from the manifest reader, and
//!   verdicts leave through another to one writer: memory does not grow
//!   with the manifest.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::config::{Config, Verbosity};
use crate::dest::{Rules, open_dir_beneath};
use crate::digest::Digests;
use crate::fsx::Dir;
use crate::manifest::{Entry, Item, Reader};
use crate::progress::{escape, human_bytes, human_duration};
use crate::report::{Report, Summary};

/// Bytes read at a time from each file.
const BUFFER: usize = 1 << 20;

/// Threads that hash: one per CPU, at most `jobs` (`-j`).
pub fn threads(jobs: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.min(jobs).max(1)
}

/// What was found at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Missing,
    Mismatch(String),
    /// An invalid manifest line, or a file that cannot be read.
    Failed(String),
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Missing => "missing",
            Verdict::Mismatch(_) => "mismatch",
            Verdict::Failed(_) => "failed",
        }
    }
}

/// One entry's verdict, as the writer needs it.
#[derive(Debug)]
struct Checked {
    /// The entry, or for an invalid line its `MANIFEST:LINE`: names are
    /// made only for the lines and records written.
    subject: Subject,
    verdict: Verdict,
    /// Bytes of the file (its size, or what was read).
    bytes: u64,
    /// What was compared: `size` and digest names; empty for existence.
    verified: Vec<&'static str>,
    elapsed: Duration,
}

#[derive(Debug)]
enum Subject {
    Entry(Box<Entry>),
    Invalid(String),
}

impl Checked {
    /// The URL, password redacted; `None` for an invalid line.
    fn url(&self) -> Option<String> {
        match &self.subject {
            Subject::Entry(entry) => Some(crate::redact::url(&entry.url)),
            Subject::Invalid(_) => None,
        }
    }

    /// The destination; for an invalid line, `MANIFEST:LINE`.
    fn path(&self) -> String {
        match &self.subject {
            Subject::Entry(entry) => entry.dest.display().to_string(),
            Subject::Invalid(location) => location.clone(),
        }
    }
}

/// How destinations are reached: from `--dir`'s handle without leaving
/// it, or, with `-P`, by their paths.
#[derive(Debug)]
struct Tree {
    rules: Rules,
    /// `None` when `--dir` does not exist: nothing is in it.
    root: Option<Dir>,
}

/// Check every entry `config` describes; the summary counts `missing`,
/// `mismatch` and `failed` as failed, for the exit status.
pub fn run(config: Config, report: Option<Report>) -> Summary {
    let started = Instant::now();
    let mut reader = Reader::new(config.tree.rules().clone(), config.shard);
    reader.sums = config.sums.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let sources = config.sources;
    std::thread::spawn(move || reader.read_all(sources, &tx));
    let tree = Tree { rules: config.tree.rules().clone(), root: config.tree.root().cloned() };
    let threads = threads(config.jobs);
    let quiet = config.verbosity == Verbosity::Quiet || config.display == crate::config::Display::None;

    // Entries travel in chunks, each a share of one batch of the reader's:
    // a wakeup per chunk rather than per file (per entry, the handoffs
    // between five threads on two cores cost more than the checks).
    let (work_tx, work_rx) = sync_channel::<Chunk>(threads * 2);
    let (done_tx, done_rx) = sync_channel::<Vec<Checked>>(threads * 2);
    let work_rx = Mutex::new(work_rx);
    let mut manifest_error = false;
    let (tally, report_failed) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_all(&done_rx, quiet, report));
        for _ in 0..threads {
            let done_tx = done_tx.clone();
            let (work_rx, tree) = (&work_rx, &tree);
            scope.spawn(move || hash_all(tree, work_rx, &done_tx));
        }
        while let Some(batch) = rx.blocking_recv() {
            let mut entries = Vec::with_capacity(batch.len());
            let mut invalid = Vec::new();
            for item in batch {
                match item {
                    Item::Entry(entry) => entries.push(entry),
                    Item::Invalid { location, error } => invalid.push(Checked {
                        subject: Subject::Invalid(location.to_string()),
                        verdict: Verdict::Failed(format!("{location}: {error}")),
                        bytes: 0,
                        verified: Vec::new(),
                        elapsed: Duration::ZERO,
                    }),
                    Item::ReadFailed { source, error } => {
                        manifest_error = true;
                        eprintln!("fetch: cannot read manifest {source}: {error}");
                    }
                }
            }
            // A share for each thread, so that a batch of a few large
            // files is hashed on all of them.
            let share = entries.len().div_ceil(threads).max(1);
            let mut sent = invalid.is_empty() || done_tx.send(invalid).is_ok();
            while sent && !entries.is_empty() {
                let rest = entries.split_off(share.min(entries.len()));
                sent = work_tx.send(std::mem::replace(&mut entries, rest)).is_ok();
            }
            if !sent {
                break;
            }
        }
        drop((work_tx, done_tx));
        writer.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    tally.print(started.elapsed());
    Summary {
        failed: tally.missing + tally.mismatch + tally.failed,
        skipped: tally.ok,
        manifest_error,
        report_failed,
        ..Summary::default()
    }
}

/// Entries as the reader boxed them: moving a box is cheaper than the entry.
#[allow(clippy::vec_box)]
type Chunk = Vec<Box<Entry>>;

/// One hashing thread: entries from `work` until it closes.
fn hash_all(tree: &Tree, work: &Mutex<Receiver<Chunk>>, done: &SyncSender<Vec<Checked>>) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        // The lock is held only while waiting for the next chunk.
        let Ok(entries) = work.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv() else {
            return;
        };
        let checked = entries.into_iter().map(|entry| check(tree, entry, &mut buf)).collect();
        if done.send(checked).is_err() {
            return;
        }
    }
}

fn check(tree: &Tree, entry: Box<Entry>, buf: &mut [u8]) -> Checked {
    let started = Instant::now();
    let (verdict, bytes) = tree.inspect(&entry, buf);
    let mut verified = Vec::new();
    if entry.size.is_some() {
        verified.push("size");
    }
    verified.extend(entry.checksums.iter().map(|e| e.checksum.algorithm().name()));
    Checked { subject: Subject::Entry(entry), verdict, bytes, verified, elapsed: started.elapsed() }
}

impl Tree {
    /// The verdict on `entry`'s destination, and the bytes of its file.
    fn inspect(&self, entry: &Entry, buf: &mut [u8]) -> (Verdict, u64) {
        let read = !entry.checksums.is_empty();
        let fd = match self.open(&entry.dest, read) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return (Verdict::Missing, 0),
            // O_NOFOLLOW met a symlink at the destination.
            Err(Errno::LOOP) => return (mismatch("not a regular file: a symlink".into()), 0),
            Err(Errno::XDEV) => {
                return (mismatch("a symlink or .. on the way leads outside --dir".into()), 0);
            }
            Err(e) => return (Verdict::Failed(format!("cannot open: {}", io::Error::from(e))), 0),
        };
        let stat = match rustix::fs::fstat(&fd) {
            Ok(stat) => stat,
            Err(e) => return (Verdict::Failed(format!("cannot look at it: {}", io::Error::from(e))), 0),
        };
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return (mismatch(format!("not a regular file: {}", kind_name(kind))), 0);
        }
        let len = stat.st_size as u64;
        if let Some(size) = entry.size.filter(|&size| size != len) {
            return (
                mismatch(format!("size mismatch: the manifest says {size} bytes, the file has {len}")),
                len,
            );
        }
        if !read {
            return (Verdict::Ok, len);
        }
        match hash(File::from(fd), len, entry, buf) {
            Ok((verdict, read)) => (verdict, read),
            Err(e) => (Verdict::Failed(format!("cannot read: {e}")), len),
        }
    }

    /// Open `dest` without following a symlink there: to read it, or with
    /// `O_PATH` (which reads nothing and opens no device) to look at it.
    fn open(&self, dest: &Path, read: bool) -> Result<OwnedFd, Errno> {
        let flags = OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | if read { OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY } else { OFlags::PATH };
        if self.rules.allow_escape() {
            return rustix::fs::open(dest, flags, Mode::empty());
        }
        let Some(root) = &self.root else { return Err(Errno::NOENT) };
        let dir = self.rules.dir();
        let rel =
            if dir == Path::new(".") { dest } else { dest.strip_prefix(dir).map_err(|_| Errno::XDEV)? };
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
            // No openat2 (before Linux 5.6), or a seccomp filter that refuses it.
            Err(Errno::NOSYS | Errno::PERM) => {}
            other => return other,
        }
        let name = rel.file_name().ok_or(Errno::NOENT)?;
        match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => rustix::fs::openat(open_dir_beneath(root, parent)?, name, flags, Mode::empty()),
            None => rustix::fs::openat(root, name, flags, Mode::empty()),
        }
    }
}

fn mismatch(reason: String) -> Verdict {
    Verdict::Mismatch(reason)
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        _ => "of an unknown kind",
    }
}

/// Stream `file` once through the digests `entry` names. A file longer
/// than the manifest's size, else than `len` (it grew since it was looked
/// at), is read no further than one byte past it: a file written to
/// forever does not hold the check forever.
fn hash(mut file: File, len: u64, entry: &Entry, buf: &mut [u8]) -> io::Result<(Verdict, u64)> {
    if len > buf.len() as u64 {
        // Read ahead in larger steps; a failure only costs speed.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
    }
    let mut digests = Digests::new(&entry.checksums);
    let mut total = 0u64;
    let limit = entry.size.unwrap_or(len).saturating_add(1);
    while total < limit {
        let want = buf.len().min(usize::try_from(limit - total).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        digests.update(&buf[..n]);
        total += n as u64;
    }
    if let Some(size) = entry.size.filter(|&size| size != total) {
        let reason = format!("size mismatch: the manifest says {size} bytes, the file has {total} now");
        return Ok((mismatch(reason), total));
    }
    if total > len {
        return Ok((mismatch(format!("the file grew past its {len} bytes while it was read")), total));
    }
    Ok(match digests.verify(&entry.checksums) {
        Ok(()) => (Verdict::Ok, total),
        Err(error) => (mismatch(error.to_string()), total),
    })
}

/// The counts of the summary.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// `ok` with nothing to compare but existence.
    existing: u64,
    missing: u64,
    mismatch: u64,
    failed: u64,
    /// Bytes read to hash.
    hashed: u64,
}

impl Tally {
    fn add(&mut self, checked: &Checked) {
        match checked.verdict {
            Verdict::Ok if checked.verified.is_empty() => {
                (self.ok, self.existing) = (self.ok + 1, self.existing + 1)
            }
            Verdict::Ok => self.ok += 1,
            Verdict::Missing => self.missing += 1,
            Verdict::Mismatch(_) => self.mismatch += 1,
            Verdict::Failed(_) => self.failed += 1,
        }
        if checked.verified.iter().any(|v| *v != "size") {
            self.hashed += checked.bytes;
        }
    }

    fn print(&self, elapsed: Duration) {
        let existing = match self.existing {
            0 => String::new(),
            n => format!(" ({n} by existence only)"),
        };
        let secs = elapsed.as_secs_f64().max(1e-3);
        eprintln!(
            "fetch: check: {} ok{existing}, {} missing, {} mismatch, {} failed; {} hashed in {} ({}/s)",
            self.ok,
            self.missing,
            self.mismatch,
            self.failed,
            human_bytes(self.hashed),
            human_duration(elapsed),
            human_bytes((self.hashed as f64 / secs) as u64),
        );
    }
}

/// The `--report` record of one entry.
#[derive(Serialize)]
struct Record<'a> {
    url: Option<String>,
    path: String,
    status: &'static str,
    bytes: u64,
    verified: &'a [&'static str],
    error: Option<&'a str>,
    elapsed_ms: u128,
}

/// The one writer: a line per verdict (only those not `ok` when `quiet`)
/// and a report record each; the tally, and whether the report failed.
fn write_all(done: &Receiver<Vec<Checked>>, quiet: bool, mut report: Option<Report>) -> (Tally, bool) {
    let mut tally = Tally::default();
    let mut report_failed = false;
    let mut out = BufWriter::new(io::stderr().lock());
    // Lines are written as verdicts come, and flushed whenever none waits.
    let mut next = done.recv().ok();
    while let Some(chunk) = next {
        for checked in &chunk {
            tally.add(checked);
            let _ = print(&mut out, checked, quiet);
            if let Some(report) = &mut report {
                let (error, status) = match &checked.verdict {
                    Verdict::Mismatch(reason) | Verdict::Failed(reason) => {
                        (Some(reason.as_str()), checked.verdict.word())
                    }
                    Verdict::Ok | Verdict::Missing => (None, checked.verdict.word()),
                };
                let record = Record {
                    url: checked.url(),
                    path: checked.path(),
                    status,
                    bytes: checked.bytes,
                    verified: &checked.verified,
                    error,
                    elapsed_ms: checked.elapsed.as_millis(),
                };
                if let Err(e) = report.write_record(&record)
                    && !std::mem::replace(&mut report_failed, true)
                {
                    let _ = writeln!(out, "fetch: cannot write the report: {e}");
                }
            }
        }
        next = done.try_recv().ok().or_else(|| {
            let _ = out.flush();
            done.recv().ok()
        });
    }
    let _ = out.flush();
    (tally, report_failed)
}

fn print(out: &mut impl Write, checked: &Checked, quiet: bool) -> io::Result<()> {
    if quiet && checked.verdict == Verdict::Ok {
        return Ok(());
    }
    let path = checked.path();
    let path = escape(&path);
    match &checked.verdict {
        Verdict::Ok if quiet => Ok(()),
        Verdict::Ok if checked.verified.is_empty() => {
            writeln!(out, "ok          {path}  (exists; the manifest gives no size or checksum)")
        }
        Verdict::Ok => writeln!(out, "ok          {path}  ({})", checked.verified.join(", ")),
        Verdict::Missing => writeln!(out, "missing     {path}"),
        Verdict::Mismatch(reason) => writeln!(out, "mismatch    {path}: {}", escape(reason)),
        // An invalid line's error names MANIFEST:LINE itself.
        Verdict::Failed(reason) if matches!(checked.subject, Subject::Invalid(_)) => {
            writeln!(out, "failed      {}", escape(reason))
        }
        Verdict::Failed(reason) => writeln!(out, "failed      {path}: {}", escape(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_the_cpus_within_jobs() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(threads(1), 1);
        assert_eq!(threads(4096), cpus);
        assert_eq!(threads(0), 1);
    }

    #[test]
    fn the_tally_counts_existence_apart_and_hashed_bytes_only() {
        let checked = |verdict, verified: Vec<&'static str>| Checked {
            subject: Subject::Invalid("m:1".into()),
            verdict,
            bytes: 10,
            verified,
            elapsed: Duration::ZERO,
        };
        let mut tally = Tally::default();
        for c in [
            checked(Verdict::Ok, vec![]),
            checked(Verdict::Ok, vec!["size"]),
            checked(Verdict::Ok, vec!["size", "md5"]),
            checked(Verdict::Missing, vec!["sha256"]),
            checked(Verdict::Mismatch("x".into()), vec!["sha1"]),
            checked(Verdict::Failed("x".into()), vec![]),
        ] {
            tally.add(&c);
        }
        let counts = (tally.ok, tally.existing, tally.missing, tally.mismatch, tally.failed);
        assert_eq!(counts, (3, 1, 1, 1, 1));
        assert_eq!(tally.hashed, 30, "the md5, the sha256 and the sha1 entries' bytes");
    }
}
