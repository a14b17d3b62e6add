//! Group commit: finished downloads become destinations in batches.
//!
//! A finished file must be on disk before it is moved into place, and the
//! move on disk before its entry is reported (docs/contract.md, "The destination is whole or absent"). One file
//! at a time that is two `fsync`s each, the file's and its directory's, and
//! on a disk where every flush is a round trip that dominates small files.
//! So one committer thread takes finished files as they come, and while it
//! works on one batch the next gathers:
//!
//! 1. files that never left a download's buffer are written, each into a
//!    file with no name ([`Complete::stage`]), off the runtime's threads:
//!    by the committer for the tiniest, by a stage thread ahead of it for
//!    the rest (`STAGE_APART`);
//! 2. one barrier, `syncfs(2)` on each filesystem involved, makes the data of
//!    the whole batch durable, and with it the moves of the batch before;
//! 3. the entries of the batch before are answered;
//! 4. the batch is moved into place (renamed, or linked for a file with no
//!    name), to be made durable by the next barrier: the next batch's, or
//!    one of its own when nothing else waits.
//!
//! This is git's `core.fsyncMethod=batch`, made sound on filesystems with no
//! journal: `syncfs` writes every dirty inode and flushes the disk's cache
//! itself, rather than trusting a journal commit to carry other files'
//! metadata. For the same reason the directories the run made
//! ([`MadeDirs`]) count as durable only after a barrier on their
//! filesystem, or once a file committed on its own has had each new
//! directory above it synced into its parent.
//!
//! Where a barrier cannot be trusted, files are committed one by one
//! ([`Staged::place_durably`]):
//! - a lone file with nothing else waiting: it should not wait for all the
//!   filesystem's dirty data;
//! - kernels before Linux 5.8, whose `syncfs` does not report write errors;
//! - filesystems not known to be local (NFS, FUSE, ...);
//! - once a barrier has reported an error, for the rest of the run: each
//!   file's own `fsync` then tells which file the error belongs to.
//!
//! `syncfs` reports an error through the file descriptor it is called on,
//! for errors since that descriptor was opened. The barrier's descriptor for
//! a filesystem (its sentinel) is therefore opened by [`Committer::watch`]
//! when the run starts for `--dir`'s, and for another when the first
//! destination directory on it is prepared, before any file of the run is
//! written there.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::dest::MadeDirs;
use crate::fsx::{self, Committed, Complete, Dir, Partial, Staged};
use crate::sys;

/// Files in one batch at most: bounds how long a batch waits for its
/// barrier, and the descriptors held meanwhile.
pub const MAX_BATCH: usize = 512;

/// Commits in flight that the dispatcher does not count against its
/// lookahead: a file waits up to two barriers, and downloads must go on
/// meanwhile, or each barrier would idle the network.
pub const BACKLOG: usize = 2 * MAX_BATCH;

/// Files that never left their buffer and hold at least this many bytes
/// are written by a thread of their own, ahead of the committer, which is
/// then left with barriers and links: writing 16 KiB files made the
/// committer the slowest stage, and one-byte files cost less to write than
/// to hand off (commit fd88d8d).
const STAGE_APART: usize = 4096;

/// Bytes of finished files waiting in memory for the committer to write
/// them, in KiB. A download waits for room, holding its connection slot.
const BUFFERED_KIB: usize = 32 * 1024;

/// The handle downloads commit through; the committer thread ends when the
/// last handle is dropped.
#[derive(Debug)]
pub struct Committer {
    jobs: mpsc::Sender<Job<Complete>>,
    /// To the stage thread, which passes each file on to `jobs` written.
    to_stage: mpsc::Sender<Job<Complete>>,
    /// `None` when barriers are never used (see [`sys::syncfs_reports_errors`]).
    sentinels: Option<Arc<Sentinels>>,
    /// Room for bytes in memory, in KiB.
    buffered: Arc<Semaphore>,
    /// Commits submitted and not yet answered.
    in_flight: Arc<AtomicUsize>,
}

/// A submitted commit: [`Pending::wait`] for its outcome.
#[derive(Debug)]
pub struct Pending {
    done: oneshot::Receiver<io::Result<Committed>>,
    in_flight: Arc<AtomicUsize>,
}

impl Pending {
    /// Resolves once the file and its move into place are durable.
    pub async fn wait(mut self) -> io::Result<Committed> {
        (&mut self.done).await.map_err(|_| stopped())?
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn stopped() -> io::Error {
    io::Error::other("the commit thread has stopped")
}

/// The barrier's descriptor for each filesystem (`st_dev`) that has one.
type Sentinels = Mutex<HashMap<u64, Arc<File>>>;

#[derive(Debug)]
struct Job<F> {
    file: F,
    dest: PathBuf,
    overwrite: bool,
    reply: oneshot::Sender<io::Result<Committed>>,
    /// The memory the bytes take until they are written.
    room: Option<OwnedSemaphorePermit>,
}

/// A file moved into place whose move awaits the next barrier.
#[derive(Debug)]
struct Placed {
    dest: PathBuf,
    dev: u64,
    dir: Dir,
    reply: oneshot::Sender<io::Result<Committed>>,
}

impl Committer {
    /// Start the committer thread; it makes the entries of `made` durable
    /// along with the files committed into them.
    pub fn start(made: Arc<MadeDirs>) -> io::Result<Committer> {
        let (jobs, queue) = mpsc::channel();
        let sentinels = sys::syncfs_reports_errors().then(Arc::default);
        let thread = Thread {
            sentinels: sentinels.clone(),
            placed: Vec::new(),
            made,
            barrier: sys::syncfs,
            sync_dir: fsx::sync_parent,
        };
        std::thread::Builder::new().name("commit".into()).spawn(move || thread.run(&queue))?;
        let (to_stage, staging) = mpsc::channel();
        let staged = jobs.clone();
        // Ends when the last handle is dropped; the committer then ends
        // once the files staged by then are committed.
        std::thread::Builder::new().name("stage".into()).spawn(move || stage_ahead(&staging, &staged))?;
        Ok(Committer {
            jobs,
            to_stage,
            sentinels,
            buffered: Arc::new(Semaphore::new(BUFFERED_KIB)),
            in_flight: Arc::default(),
        })
    }

    /// Commits submitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Note a destination directory before files are created in it, so that
    /// its filesystem has a sentinel for barriers.
    pub fn watch(&self, dir: &Dir) {
        let Some(sentinels) = &self.sentinels else { return };
        let Ok(stat) = rustix::fs::fstat(&**dir) else { return };
        let mut map = sentinels.lock().expect("sentinels poisoned");
        if map.contains_key(&stat.st_dev) {
            return;
        }
        // The same open file as `dir`, opened before any file was written
        // below it: syncfs reports errors since then.
        if let Ok(file) = dir.try_clone().map(File::from)
            && sys::local_filesystem(&file)
        {
            map.insert(stat.st_dev, Arc::new(file));
        }
    }

    /// Hand `partial` over to be committed to `dest`. The last write of a
    /// file that outgrew its buffer happens here, on the download's thread;
    /// a file still in its buffer is written by the committer, so that the
    /// runtime's threads stay free for the network. Waits while finished
    /// files fill `BUFFERED_KIB`.
    pub async fn submit(&self, partial: Partial, dest: PathBuf, overwrite: bool) -> io::Result<Pending> {
        let file = partial.finish()?;
        let (room, queue) = match &file {
            Complete::Buffered { bytes, .. } => {
                let kib = (bytes.len() / 1024).clamp(1, BUFFERED_KIB) as u32;
                let room = self.buffered.clone().acquire_many_owned(kib).await.map_err(|_| stopped())?;
                (Some(room), if bytes.len() >= STAGE_APART { &self.to_stage } else { &self.jobs })
            }
            Complete::Staged(_) => (None, &self.jobs),
        };
        let (reply, done) = oneshot::channel();
        queue.send(Job { file, dest, overwrite, reply, room }).map_err(|_| stopped())?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Pending { done, in_flight: self.in_flight.clone() })
    }
}

struct Thread {
    sentinels: Option<Arc<Sentinels>>,
    /// Moved into place, awaiting the next barrier.
    placed: Vec<Placed>,
    /// Directories the run made, until their entries are durable.
    made: Arc<MadeDirs>,
    /// [`sys::syncfs`]; another function in tests.
    barrier: fn(&File) -> io::Result<()>,
    /// [`fsx::sync_parent`], for made directories; another function in tests.
    sync_dir: fn(&Path) -> io::Result<()>,
}

impl Thread {
    /// The barrier runs here, between batches: on a thread of its own,
    /// overlapping the next batch's writes, it was no faster (commit
    /// be9884a).
    fn run(mut self, queue: &mpsc::Receiver<Job<Complete>>) {
        loop {
            let mut batch = Vec::new();
            if self.placed.is_empty() {
                // Nothing owed: wait for work, or end with the last handle.
                match queue.recv() {
                    Ok(job) => batch.push(job),
                    Err(mpsc::RecvError) => return,
                }
            }
            batch.extend(queue.try_iter().take(MAX_BATCH - batch.len()));
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Job<Complete>>) {
        let batch: Vec<_> = batch.into_iter().filter_map(stage).collect();
        if batch.len() == 1 && self.placed.is_empty() {
            batch.into_iter().for_each(|job| self.commit_alone(job));
            return;
        }
        let sentinels = self.sentinels_for(&batch);
        let (barred, alone): (Vec<_>, Vec<_>) =
            batch.into_iter().partition(|job| sentinels.contains_key(&job.file.dev()));
        alone.into_iter().for_each(|job| self.commit_alone(job));
        if barred.is_empty() && self.placed.is_empty() {
            return;
        }
        // Directories noted by now were made by now: the barrier writes
        // their entries too, on the filesystems it covers.
        let made = self.made.take();
        if let Err(error) = sentinels.values().try_for_each(|file| (self.barrier)(file)) {
            self.made.restore(made);
            self.give_up_barriers(&error, barred);
            return;
        }
        self.made.restore(made.into_iter().filter(|dir| !sentinels.contains_key(&dir.dev)));
        for placed in self.placed.drain(..) {
            let _ = placed.reply.send(Ok(Committed::Renamed));
        }
        for Job { file, dest, overwrite, reply, .. } in barred {
            let (dev, dir) = (file.dev(), file.dir().clone());
            match file.place(overwrite) {
                Ok(Committed::Renamed) => self.placed.push(Placed { dest, dev, dir, reply }),
                other => {
                    let _ = reply.send(other);
                }
            }
        }
    }

    /// The sentinels of the filesystems that the batch and the files
    /// awaiting a barrier are on.
    fn sentinels_for(&self, batch: &[Job<Staged>]) -> HashMap<u64, Arc<File>> {
        let Some(sentinels) = &self.sentinels else { return HashMap::new() };
        let map = sentinels.lock().expect("sentinels poisoned");
        let devs = batch.iter().map(|job| job.file.dev()).chain(self.placed.iter().map(|p| p.dev));
        devs.filter_map(|dev| Some((dev, map.get(&dev)?.clone()))).collect()
    }

    /// A barrier failed: from now on every file is committed on its own, so
    /// that an error is reported for the file it belongs to.
    fn give_up_barriers(&mut self, error: &io::Error, batch: Vec<Job<Staged>>) {
        self.sentinels = None;
        // These files' bytes were durable before their moves; only the
        // moves remain to be made so, one fsync per directory.
        let mut dirs = DirSyncs::default();
        for Placed { dest, dir, reply, .. } in self.placed.drain(..) {
            let result = match dirs.sync(&dest, || fsx::sync_dir(&dir)) {
                None => Ok(Committed::Renamed),
                Some(e) => Err(io::Error::new(e.kind(), format!("{e} (after a barrier failed: {error})"))),
            };
            let _ = reply.send(result);
        }
        batch.into_iter().for_each(|job| self.commit_alone(job));
    }

    /// fsync the file, move it into place, make the move durable, and the
    /// directories above it that the run made.
    fn commit_alone(&self, job: Job<Staged>) {
        let Job { file, dest, overwrite, reply, .. } = job;
        let result = file.sync().and_then(|file| file.place_durably(overwrite));
        let result = result.and_then(|committed| self.sync_made_dirs(&dest).map(|()| committed));
        let _ = reply.send(result);
    }

    /// Sync every made directory not yet durable into its parent (one
    /// `fsync` per parent), so that none waits for a file of its own. An
    /// error is `dest`'s only for a directory above it; a directory that
    /// failed is kept for its own files, and one that is gone is dropped,
    /// as no file of ours can be in it.
    fn sync_made_dirs(&self, dest: &Path) -> io::Result<()> {
        let mut dirs = DirSyncs::default();
        let mut kept = Vec::new();
        let mut result = Ok(());
        for dir in self.made.take() {
            let Some(e) = dirs.sync(&dir.path, || (self.sync_dir)(&dir.path)) else { continue };
            if e.kind() == io::ErrorKind::NotFound {
                continue;
            }
            if result.is_ok() && dest.starts_with(&dir.path) {
                let text = format!("cannot make the new directory {} durable: {e}", dir.path.display());
                result = Err(io::Error::new(e.kind(), text));
            }
            kept.push(dir);
        }
        self.made.restore(kept);
        result
    }
}

/// Directories synced in one pass, each with its error: a write error is
/// reported to the first descriptor that checks, so every entry of a
/// directory takes that one answer.
#[derive(Debug, Default)]
struct DirSyncs(HashMap<PathBuf, Option<(io::ErrorKind, String)>>);

impl DirSyncs {
    /// `sync()`, which syncs the directory `path` is in, unless that
    /// directory was synced already; the error, if it failed.
    fn sync(&mut self, path: &Path, sync: impl FnOnce() -> io::Result<()>) -> Option<io::Error> {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let failed = self.0.entry(dir).or_insert_with(|| sync().err().map(|e| (e.kind(), e.to_string())));
        failed.as_ref().map(|(kind, text)| io::Error::new(*kind, text.clone()))
    }
}

/// The stage thread: write each file and pass it on to the committer.
fn stage_ahead(queue: &mpsc::Receiver<Job<Complete>>, committer: &mpsc::Sender<Job<Complete>>) {
    for job in queue.iter().filter_map(stage) {
        let Job { file, dest, overwrite, reply, room } = job;
        let job = Job { file: Complete::Staged(file), dest, overwrite, reply, room };
        if let Err(mpsc::SendError(job)) = committer.send(job) {
            let _ = job.reply.send(Err(stopped()));
        }
    }
}

/// Have the job's bytes in a file, or answer it with why not.
fn stage(job: Job<Complete>) -> Option<Job<Staged>> {
    let Job { file, dest, overwrite, reply, room } = job;
    let staged = file.stage(overwrite);
    drop(room);
    match staged {
        Ok(file) => Some(Job { file, dest, overwrite, reply, room: None }),
        Err(e) => {
            let _ = reply.send(Err(e));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsx::Opened;
    use crate::sys::syncfs;

    /// A job for `dest` holding `bytes` in memory, and its answer.
    fn job(dest: &Path, bytes: &[u8]) -> (Job<Complete>, oneshot::Receiver<io::Result<Committed>>) {
        let dir = Arc::new(crate::dest::open_dir(dest.parent().unwrap()).unwrap());
        let Ok(Opened::Locked(mut partial)) = Partial::open(dir, dest, true) else { panic!("not locked") };
        partial.write(bytes).unwrap();
        let (reply, done) = oneshot::channel();
        let file = partial.finish().unwrap();
        (Job { file, dest: dest.to_owned(), overwrite: false, reply, room: None }, done)
    }

    fn thread(dir: &Path, barrier: fn(&File) -> io::Result<()>) -> Thread {
        let sentinel = File::open(dir).unwrap();
        let dev = std::os::unix::fs::MetadataExt::dev(&sentinel.metadata().unwrap());
        let sentinels = Arc::new(Mutex::new(HashMap::from([(dev, Arc::new(sentinel))])));
        Thread {
            sentinels: Some(sentinels),
            placed: Vec::new(),
            made: Arc::default(),
            barrier,
            sync_dir: fsx::sync_parent,
        }
    }

    /// `a/b` made under `dir`, as the run would, and noted in `thread`.
    fn make_dirs(thread: &Thread, dir: &Path, path: &str) -> Vec<PathBuf> {
        let made = crate::dest::create_dirs(&dir.join(path)).unwrap();
        thread.made.record(made.clone());
        made
    }

    #[test]
    fn a_lone_file_has_each_new_directory_above_it_synced_into_its_parent() {
        static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        fn recording(dir: &Path) -> io::Result<()> {
            SYNCED.lock().unwrap().push(dir.to_owned());
            fsx::sync_parent(dir)
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut thread = thread(tmp.path(), syncfs);
        thread.sync_dir = recording;
        let made = make_dirs(&thread, tmp.path(), "a/b");
        assert_eq!(made, [tmp.path().join("a"), tmp.path().join("a/b")], "outermost first");
        let (lone, mut answer) = job(&tmp.path().join("a/b/f"), b"f");
        thread.commit(vec![lone]);
        assert_eq!(answer.try_recv().unwrap().unwrap(), Committed::Renamed);
        assert_eq!(*SYNCED.lock().unwrap(), made, "each into its parent, once");
        assert!(thread.made.take().is_empty(), "nothing left owed");
        // A directory that was there is neither listed nor synced again.
        assert!(crate::dest::create_dirs(&tmp.path().join("a/b")).unwrap().is_empty());
    }

    #[test]
    fn a_barrier_covers_the_directories_made_before_it_on_its_filesystems() {
        fn never(dir: &Path) -> io::Result<()> {
            panic!("{} synced on its own under a barrier", dir.display())
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut thread = thread(tmp.path(), syncfs);
        thread.sync_dir = never;
        make_dirs(&thread, tmp.path(), "x/y");
        let elsewhere = crate::dest::MadeDir { path: "/elsewhere".into(), dev: u64::MAX };
        thread.made.restore([elsewhere.clone()]);
        let (first, _) = job(&tmp.path().join("x/y/1"), b"1");
        let (second, _) = job(&tmp.path().join("x/y/2"), b"2");
        thread.commit(vec![first, second]);
        assert_eq!(thread.made.take(), [elsewhere], "kept: no barrier on its filesystem");
    }

    #[test]
    fn a_failed_directory_sync_fails_only_the_files_below_that_directory() {
        fn failing_bad(dir: &Path) -> io::Result<()> {
            if dir.ends_with("bad") {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                fsx::sync_parent(dir)
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut thread = thread(tmp.path(), syncfs);
        thread.sync_dir = failing_bad;
        // The fake fails `p/bad` into `p`; the one `fsync` of `tmp`
        // serves `p` and `q`.
        make_dirs(&thread, tmp.path(), "p/bad");
        make_dirs(&thread, tmp.path(), "q/good");
        let (good, mut good_answer) = job(&tmp.path().join("q/good/f"), b"g");
        thread.commit(vec![good]);
        assert_eq!(good_answer.try_recv().unwrap().unwrap(), Committed::Renamed);
        let (bad, mut bad_answer) = job(&tmp.path().join("p/bad/f"), b"b");
        thread.commit(vec![bad]);
        let error = bad_answer.try_recv().unwrap().unwrap_err();
        assert!(
            error.to_string().contains("cannot make the new directory") && error.to_string().contains("bad")
        );
        assert_eq!(std::fs::read(tmp.path().join("p/bad/f")).unwrap(), b"b", "the file is whole, in place");
        assert_eq!(thread.made.take().len(), 1, "still owed, for the next file there");
    }

    #[test]
    fn a_batch_is_answered_only_after_the_barrier_that_follows_its_renames() {
        static BARRIERS: AtomicUsize = AtomicUsize::new(0);
        fn counting(file: &File) -> io::Result<()> {
            BARRIERS.fetch_add(1, Ordering::SeqCst);
            syncfs(file)
        }
        let dir = tempfile::tempdir().unwrap();
        let mut thread = thread(dir.path(), counting);
        let (jobs, mut answers): (Vec<_>, Vec<_>) =
            (0..3).map(|i| job(&dir.path().join(format!("f{i}")), format!("body {i}").as_bytes())).unzip();
        thread.commit(jobs);
        assert_eq!(BARRIERS.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read(dir.path().join("f2")).unwrap(), b"body 2", "renamed after the barrier");
        assert!(answers.iter_mut().all(|a| a.try_recv().is_err()), "answered before the renames are durable");
        thread.commit(Vec::new());
        assert_eq!(BARRIERS.load(Ordering::SeqCst), 2);
        for mut answer in answers {
            assert_eq!(answer.try_recv().unwrap().unwrap(), Committed::Renamed);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "no part files left: {names:?}");
    }

    #[test]
    fn after_a_failed_barrier_files_are_committed_one_by_one() {
        fn failing(_: &File) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        let dir = tempfile::tempdir().unwrap();
        let mut thread = thread(dir.path(), failing);
        let (first, first_answer) = job(&dir.path().join("a"), b"a");
        let (second, second_answer) = job(&dir.path().join("b"), b"b");
        thread.commit(vec![first, second]);
        assert!(thread.sentinels.is_none(), "barriers are given up for the run");
        // Each file had its own fsync, which succeeded: both are in place.
        for (mut answer, name) in [(first_answer, "a"), (second_answer, "b")] {
            assert_eq!(answer.try_recv().unwrap().unwrap(), Committed::Renamed);
            assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), name.as_bytes());
        }
        // A lone file, or a batch, no longer waits for a barrier.
        let (third, mut third_answer) = job(&dir.path().join("c"), b"c");
        let (fourth, mut fourth_answer) = job(&dir.path().join("d"), b"d");
        thread.commit(vec![third, fourth]);
        assert_eq!(third_answer.try_recv().unwrap().unwrap(), Committed::Renamed);
        assert_eq!(fourth_answer.try_recv().unwrap().unwrap(), Committed::Renamed);
    }

    #[test]
    fn an_existing_destination_is_kept_and_answered_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut thread = thread(dir.path(), syncfs);
        std::fs::write(dir.path().join("taken"), b"old").unwrap();
        let (taken, mut taken_answer) = job(&dir.path().join("taken"), b"new");
        let (free, _) = job(&dir.path().join("free"), b"new");
        thread.commit(vec![taken, free]);
        assert_eq!(taken_answer.try_recv().unwrap().unwrap(), Committed::DestinationExists);
        assert_eq!(std::fs::read(dir.path().join("taken")).unwrap(), b"old");
    }
}
