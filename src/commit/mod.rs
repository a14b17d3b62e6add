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

mod thread;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::dest::MadeDirs;
use crate::fsx::{Committed, Complete, Dir, Partial, Staged};
use crate::sys;
use thread::Thread;

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
    jobs: mpsc::Sender<CommitJob<Complete>>,
    /// To the stage thread, which passes each file on to `jobs` written.
    to_stage: mpsc::Sender<CommitJob<Complete>>,
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
struct CommitJob<F> {
    file: F,
    dest: PathBuf,
    overwrite: bool,
    reply: oneshot::Sender<io::Result<Committed>>,
    /// The memory the bytes take until they are written.
    room: Option<OwnedSemaphorePermit>,
}

impl Committer {
    /// Start the committer thread; it makes the entries of `made` durable
    /// along with the files committed into them.
    pub fn start(made: Arc<MadeDirs>) -> io::Result<Committer> {
        let (jobs, queue) = mpsc::channel();
        let sentinels = sys::syncfs_reports_errors().then(Arc::default);
        let thread = Thread::new(sentinels.clone(), made);
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
        queue.send(CommitJob { file, dest, overwrite, reply, room }).map_err(|_| stopped())?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Pending { done, in_flight: self.in_flight.clone() })
    }
}

/// The stage thread: write each file and pass it on to the committer.
fn stage_ahead(queue: &mpsc::Receiver<CommitJob<Complete>>, committer: &mpsc::Sender<CommitJob<Complete>>) {
    for job in queue.iter().filter_map(stage) {
        let CommitJob { file, dest, overwrite, reply, room } = job;
        let job = CommitJob { file: Complete::Staged(file), dest, overwrite, reply, room };
        if let Err(mpsc::SendError(job)) = committer.send(job) {
            let _ = job.reply.send(Err(stopped()));
        }
    }
}

/// Have the job's bytes in a file, or answer it with why not.
fn stage(job: CommitJob<Complete>) -> Option<CommitJob<Staged>> {
    let CommitJob { file, dest, overwrite, reply, room } = job;
    let staged = file.stage(overwrite);
    drop(room);
    match staged {
        Ok(file) => Some(CommitJob { file, dest, overwrite, reply, room: None }),
        Err(e) => {
            let _ = reply.send(Err(e));
            None
        }
    }
}
