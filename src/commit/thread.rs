//! The committer thread: each batch is staged, one barrier per filesystem
//! makes it and the batch before durable, the batch before is answered and
//! this one moved into place; where a barrier cannot be trusted, files are
//! committed one by one. See the module above for why.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use super::{CommitJob, MAX_BATCH, Sentinels, stage};
use crate::dest::MadeDirs;
use crate::fsx::{self, Committed, Complete, Dir, Staged};
use crate::sys;

/// A file moved into place whose move awaits the next barrier.
#[derive(Debug)]
struct Placed {
    dest: PathBuf,
    dev: u64,
    dir: Dir,
    reply: oneshot::Sender<io::Result<Committed>>,
}

/// The committer thread's state between batches.
pub(super) struct Thread {
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
    /// A committer with barriers on `sentinels`' filesystems (none:
    /// every file on its own) that makes `made` durable too.
    pub(super) fn new(sentinels: Option<Arc<Sentinels>>, made: Arc<MadeDirs>) -> Thread {
        Thread { sentinels, placed: Vec::new(), made, barrier: sys::syncfs, sync_dir: fsx::sync_parent }
    }

    /// The barrier runs here, between batches: on a thread of its own,
    /// overlapping the next batch's writes, it was no faster (commit
    /// be9884a).
    pub(super) fn run(mut self, queue: &mpsc::Receiver<CommitJob<Complete>>) {
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

    fn commit(&mut self, batch: Vec<CommitJob<Complete>>) {
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
        for CommitJob { file, dest, overwrite, reply, .. } in barred {
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
    fn sentinels_for(&self, batch: &[CommitJob<Staged>]) -> HashMap<u64, Arc<File>> {
        let Some(sentinels) = &self.sentinels else { return HashMap::new() };
        let map = sentinels.lock().expect("sentinels poisoned");
        let devs = batch.iter().map(|job| job.file.dev()).chain(self.placed.iter().map(|p| p.dev));
        devs.filter_map(|dev| Some((dev, map.get(&dev)?.clone()))).collect()
    }

    /// A barrier failed: from now on every file is committed on its own, so
    /// that an error is reported for the file it belongs to.
    fn give_up_barriers(&mut self, error: &io::Error, batch: Vec<CommitJob<Staged>>) {
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
    fn commit_alone(&self, job: CommitJob<Staged>) {
        let CommitJob { file, dest, overwrite, reply, .. } = job;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::fsx::{Opened, Partial};
    use crate::sys::syncfs;

    /// A job for `dest` holding `bytes` in memory, and its answer.
    fn job(dest: &Path, bytes: &[u8]) -> (CommitJob<Complete>, oneshot::Receiver<io::Result<Committed>>) {
        let dir = Arc::new(crate::dest::open_dir(dest.parent().unwrap()).unwrap());
        let Ok(Opened::Locked(mut partial)) = Partial::open(dir, dest, true) else { panic!("not locked") };
        partial.write(bytes).unwrap();
        let (reply, done) = oneshot::channel();
        let file = partial.finish().unwrap();
        (CommitJob { file, dest: dest.to_owned(), overwrite: false, reply, room: None }, done)
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
