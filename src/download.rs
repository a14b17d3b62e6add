//! One manifest entry from start to [`Outcome`]: skip if the destination
//! exists, lock its partial file, decide whether the bytes already there can
//! be resumed, run attempts until one succeeds or the failure stands,
//! verify, and commit.
//!
//! A large file on a server that takes ranges is handed to
//! [`crate::segments`] once its first response shows that; if the server
//! then misbehaves with ranges, the file restarts here as one stream.
//!
//! Every failed attempt passes through [`Net::retry`], which ranged
//! transfers use too. What becomes of the partial file when the entry
//! fails is decided in one place, [`settle`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::commit::Committer;
use crate::dest::DestTree;
use crate::error::{AttemptError, DownloadError};
use crate::fsx::{Committed, Opened, Partial};
use crate::manifest::{Entry, LineError};
use crate::net::{Failure, Net, Stop};
use crate::pool::{Keyed, KeyedPermit, Slot, Ticket};
use crate::progress::TransferProgress;
use crate::redact;
use crate::report::{Outcome, SkipReason, Status};
use crate::retry::{self, Budget, Class};
use crate::segments;
use crate::transfer::{self, Attempted, State, Target};

/// What every download of a run shares.
#[derive(Debug)]
pub struct Context {
    pub net: Arc<Net>,
    pub committer: Committer,
    /// One in-flight download per destination within this run.
    pub destinations: Keyed<PathBuf>,
    pub tree: DestTree,
    pub headers: HeaderMap,
    pub overwrite: bool,
    pub resume: bool,
}

/// The `--per-host` key of `url`: host and port.
pub fn host_key(url: &reqwest::Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
        + ":"
        + &url.port_or_known_default().unwrap_or(0).to_string()
}

/// Download one entry, whose place in line for a slot is `ticket`; never
/// fails, the outcome says how it went. `None` when the run was interrupted
/// before this entry began: like the manifest lines not yet read, it is
/// left for the next run and not reported.
///
/// Out of file descriptors (EMFILE, ENFILE), wherever that happened (the
/// connection, the part file, the commit), the entry is not failed: the run
/// goes on with fewer downloads at once ([`crate::pool::Limits::lower`])
/// and the entry starts over, resuming what it wrote, for as long as other
/// downloads or commits hold descriptors that they will give back.
pub async fn download(entry: Entry, ticket: Ticket, ctx: Arc<Context>) -> Option<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome::start(&entry);
    let mut ticket = Some(ticket);
    let mut alone = 0;
    let mut vanished = false;
    let limits = &ctx.net.limits;
    let result = loop {
        let generation = limits.generation();
        let ticket = ticket.take().unwrap_or_else(|| limits.ticket(&host_key(&entry.url)));
        let result = run(&entry, ticket, &ctx, &mut outcome).await;
        let Err(error) = &result else { break result };
        if error.is_directory_removed() && !std::mem::replace(&mut vanished, true) {
            // Removed while the file was on its way, by another run that
            // found it empty (or by anyone): made again, once.
            ctx.tree.forget_parent(&entry.dest);
            continue;
        }
        if retry::classify(error) != Class::OutOfDescriptors {
            break result;
        }
        // With nothing else in flight, nobody will give descriptors back.
        alone = if limits.in_use() > 0 || ctx.committer.in_flight() > 0 { 0 } else { alone + 1 };
        if alone > OUT_OF_DESCRIPTORS_ALONE {
            break result;
        }
        if let Some(jobs) = limits.lower(generation)
            && limits.first_to_tell()
        {
            let jobs = if jobs == 1 { "1 download".to_owned() } else { format!("{jobs} downloads") };
            ctx.net.reporter.error(&format_args!("too many open files: {jobs} at once from now on"));
        }
        ctx.net.reporter.retrying(&entry.dest, outcome.attempts, error, OUT_OF_DESCRIPTORS_WAIT);
        tokio::select! {
            () = tokio::time::sleep(OUT_OF_DESCRIPTORS_WAIT) => {}
            () = ctx.net.shutdown.cancelled() => break Err(AttemptError::Cancelled.into()),
        }
    };
    outcome.elapsed = started.elapsed();
    record(&mut outcome, result)?;
    Some(outcome)
}

/// Times an entry that ran out of file descriptors with nothing else in
/// flight starts over before it fails.
const OUT_OF_DESCRIPTORS_ALONE: u32 = 3;
/// How long such an entry waits first, for the committer to catch up.
const OUT_OF_DESCRIPTORS_WAIT: Duration = Duration::from_millis(50);

/// How an entry ended, but for failures.
enum Done {
    Downloaded,
    Skipped(SkipReason),
    /// Interrupted before it began: not reported.
    NotStarted,
}

/// Record in `outcome` how the entry ended; `None` for one that never began.
fn record(outcome: &mut Outcome, result: Result<Done, DownloadError>) -> Option<()> {
    match result {
        Ok(Done::NotStarted) => return None,
        Ok(Done::Downloaded) => outcome.status = Status::Downloaded,
        Ok(Done::Skipped(reason)) => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(reason);
        }
        // Another fetch process took the part file after this one
        // looked for it: that process has the entry.
        Err(error) if error.is_locked_by_other_process() => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(SkipReason::LockedByOtherProcess);
        }
        Err(error) => {
            outcome.status = Status::Failed;
            outcome.error = Some(error);
        }
    }
    Some(())
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// An entry that has its destination to itself, a slot, and its locked
/// partial file.
struct Claimed {
    permit: KeyedPermit<PathBuf>,
    slot: Option<Slot>,
    partial: Partial,
}

async fn run(
    entry: &Entry,
    ticket: Ticket,
    ctx: &Arc<Context>,
    outcome: &mut Outcome,
) -> Result<Done, DownloadError> {
    let claimed = match claim(entry, ticket, ctx).await? {
        Ok(claimed) => claimed,
        Err(done) => return Ok(done),
    };
    let Claimed { permit, mut slot, partial } = claimed;
    let transfer_started = Instant::now();
    let partial = fetch(entry, ctx, partial, &mut slot, outcome).await?;
    outcome.transfer = Some(transfer_started.elapsed());
    let dest = &entry.dest;
    let pending =
        ctx.committer.submit(partial, dest.clone(), ctx.overwrite).await.map_err(DownloadError::Commit)?;
    drop(slot);
    match pending.wait().await.map_err(DownloadError::Commit)? {
        Committed::Renamed => {
            ctx.tree.note_placed(dest);
            permit.mark_done();
            Ok(Done::Downloaded)
        }
        Committed::DestinationExists => {
            // Another process works in this directory too: look before
            // downloading into it from now on.
            ctx.tree.distrust_parent(dest);
            Ok(Done::Skipped(SkipReason::CompletedElsewhere))
        }
    }
}

/// Everything before the first request: the checks that may skip the
/// entry, its turn at its destination, a slot, its directory and its
/// partial file. `Ok(Err(done))` when the entry ends here.
async fn claim(
    entry: &Entry,
    mut ticket: Ticket,
    ctx: &Arc<Context>,
) -> Result<Result<Claimed, Done>, DownloadError> {
    let dest = &entry.dest;
    ctx.tree.check_protected(dest).map_err(|error| DownloadError::Invalid {
        location: entry.location.clone(),
        error: LineError::Dest(error),
    })?;
    let shutdown = &ctx.net.shutdown;
    // Not looked for where this run knows it cannot be: a system call per
    // entry saved, 10% of the CPU on 1-byte files in new directories.
    let unknown = !ctx.overwrite && ctx.tree.may_exist(dest);
    if unknown && exists(dest) {
        return Ok(Err(Done::Skipped(SkipReason::Exists)));
    }
    // Entries of this run that share a destination go one at a time; a later
    // one finds the file in place, or the earlier one's success flag. Until
    // it has a slot, nothing here waits with the ticket held: the tickets
    // behind it would wait too (see [`crate::pool::Limits`]), for an entry
    // that may itself be waiting for a slot.
    let permit = match ctx.destinations.try_acquire(dest.clone()) {
        Some(permit) => permit,
        None => {
            drop(ticket);
            let acquire = ctx.destinations.acquire(dest.clone());
            let Some(permit) = shutdown.unless_cancelled(acquire).await else {
                return Ok(Err(Done::NotStarted));
            };
            ticket = ctx.net.limits.ticket(&host_key(&entry.url));
            permit
        }
    };
    // Another process may finish the file too; the commit never replaces
    // it (`RENAME_NOREPLACE`), so looking again here would only cost every
    // entry a system call to save a rare race a download.
    if permit.done() {
        return Ok(Err(Done::Skipped(SkipReason::CompletedElsewhere)));
    }
    // An earlier entry for this destination may have placed it between the
    // look above and this turn; the filter tells, and only then the disk.
    if !ctx.overwrite && !unknown && ctx.tree.may_have_placed(dest) && exists(dest) {
        return Ok(Err(Done::Skipped(SkipReason::Exists)));
    }
    let Some(slot) = shutdown.unless_cancelled(ticket.slot()).await else {
        return Ok(Err(Done::NotStarted));
    };
    // Opened with a slot, not before: the entries waiting in the lookahead
    // hold no directory descriptors (with `ulimit -n 20` those alone ran
    // the run out of them).
    let parent = ctx.tree.prepare_parent(dest)?;
    if parent.first {
        ctx.committer.watch(&parent.handle);
    }
    match Partial::open(parent.handle.clone(), dest, !parent.fresh).map_err(partial_error(dest))? {
        Opened::Locked(partial) => Ok(Ok(Claimed { permit, slot: Some(slot), partial })),
        Opened::Busy => Ok(Err(Done::Skipped(SkipReason::LockedByOtherProcess))),
    }
}

fn partial_error(dest: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Partial { path: crate::fsx::part_paths(dest).0, source }
}

/// One entry's transfer, from its partial file's first byte to its last.
struct Transfer<'a> {
    entry: &'a Entry,
    ctx: &'a Arc<Context>,
    host: String,
    headers: HeaderMap,
    /// Split large files; `None` once a split failed or this file is known
    /// to be too small.
    split: Option<crate::config::SplitPolicy>,
    progress: Arc<TransferProgress>,
    state: State,
}

/// Where an attempt left the entry.
enum Step {
    /// Every byte is in the partial file, verified.
    Complete,
    /// The server answered ranges of a split download wrongly: the file
    /// restarts as one plain stream.
    Unsplit,
    /// The digest of bytes spliced from several responses does not match:
    /// it may be wrong only because of a splice, so one plain stream from
    /// zero decides, once.
    Spliced(DownloadError),
    /// The attempt failed; [`Net::retry`] weighs it.
    Failed(DownloadError),
    /// A split download failed after its ranges were retried on their own.
    Final(DownloadError),
}

/// Run attempts until the file is complete and verified in `partial`, or
/// the failure stands; then the partial is settled ([`settle`]).
async fn fetch(
    entry: &Entry,
    ctx: &Arc<Context>,
    mut partial: Partial,
    slot: &mut Option<Slot>,
    outcome: &mut Outcome,
) -> Result<Partial, DownloadError> {
    let dest = &entry.dest;
    let host = host_key(&entry.url);
    let mut t = Transfer {
        entry,
        ctx,
        progress: Arc::new(ctx.net.reporter.transfer(dest, &host)),
        host,
        headers: merged_headers(&ctx.headers, &entry.headers),
        split: ctx.net.split.filter(|p| entry.size.is_none_or(|size| size >= p.min_size)),
        state: State::for_entry(entry.sha256.is_some()),
    };
    let mut resumed =
        resume_or_truncate(entry, ctx, &mut partial, &mut t.state).map_err(partial_error(dest))?;
    outcome.resumed_from = match &resumed {
        Some(done) => done.iter().map(|[s, e]| e - s).sum(),
        None => t.state.offset,
    };
    let mut budget = Budget::new(ctx.net.retry, t.state.offset);
    let mut restarted_for_checksum = false;
    let (error, class) = loop {
        if let Err(error) = ctx.net.slot(&t.host, slot).await {
            break (error.into(), Class::Cancelled);
        }
        if !ctx.resume && t.state.offset > 0 {
            // --no-resume: a retry starts from zero too, without Range.
            t.restart(&mut partial).map_err(partial_error(dest))?;
        }
        let error = match t.step(&mut partial, resumed.take(), slot, outcome).await {
            Step::Complete => return Ok(partial),
            Step::Spliced(_) if !restarted_for_checksum => {
                restarted_for_checksum = true;
                t.restart_plain(&mut partial).map_err(partial_error(dest))?;
                continue;
            }
            Step::Unsplit => {
                t.restart_plain(&mut partial).map_err(partial_error(dest))?;
                continue;
            }
            Step::Final(error) => {
                let class = retry::classify(&error);
                break (error, class);
            }
            Step::Spliced(error) | Step::Failed(error) => error,
        };
        let class = retry::classify(&error);
        let failure = Failure {
            error: &error,
            class,
            retry_after: match &error {
                DownloadError::Attempt(e) => e.retry_after(),
                _ => None,
            },
            position: t.state.offset,
            dest,
            attempt: outcome.attempts,
        };
        match ctx.net.retry(&mut budget, failure, slot).await {
            Ok(()) => {}
            Err(Stop::GaveUp) => break (error, class),
            Err(Stop::Cancelled) => break (AttemptError::Cancelled.into(), Class::Cancelled),
        }
    };
    settle(partial, class).map_err(partial_error(dest))?;
    Err(error)
}

/// What becomes of the partial file of an entry that failed with `class`:
/// kept for the next run to resume, unless the failure makes its bytes
/// useless (the server refuses the file, or it does not match the
/// manifest). Interrupted, out of descriptors or out of retries, the bytes
/// are good.
fn settle(partial: Partial, class: Class) -> std::io::Result<()> {
    match class {
        Class::Permanent => partial.discard(),
        Class::Transient | Class::Cancelled | Class::OutOfDescriptors => partial.keep(),
    }
}

impl Transfer<'_> {
    /// One attempt (or, for a split file, one round of ranged requests),
    /// accounted in `outcome` and verified.
    async fn step(
        &mut self,
        partial: &mut Partial,
        resumed: Option<Vec<[u64; 2]>>,
        slot: &mut Option<Slot>,
        outcome: &mut Outcome,
    ) -> Step {
        let before = self.state.received;
        // `Some` to go on as a split download: the response streaming the
        // file from byte 0, if any, and the ranges already on disk.
        let attempted = match resumed {
            // An earlier run's split download goes on as one.
            Some(done) => Ok(Some((None, done))),
            None => {
                outcome.attempts += 1;
                let target = Target {
                    clients: &self.ctx.net.clients,
                    url: &self.entry.url,
                    headers: &self.headers,
                    size: self.entry.size,
                    split: self.split,
                };
                let shutdown = &self.ctx.net.shutdown;
                let attempted =
                    transfer::attempt(&target, &mut self.state, partial, &self.progress, shutdown);
                attempted.await.map(|attempted| match attempted {
                    Attempted::Complete => None,
                    Attempted::Segments(first) => Some((Some(first), Vec::new())),
                })
            }
        };
        let result = match attempted {
            Ok(None) => Ok(()),
            Ok(Some((first, done))) => {
                match self.segments(partial, first, done, slot.take(), outcome).await {
                    Ok(()) => Ok(()),
                    Err(AttemptError::BadRange(reason)) => {
                        // The server cannot be trusted with ranges of this file.
                        self.progress.unsplit(&reason);
                        return Step::Unsplit;
                    }
                    Err(error) => return Step::Final(error.into()),
                }
            }
            Err(error) => Err(DownloadError::from(error)),
        };
        outcome.received += self.state.received - before;
        outcome.http_status = self.state.http_status.or(outcome.http_status);
        outcome.bytes = self.state.offset;
        match result.and_then(|()| verify(self.entry, &mut self.state)) {
            Ok(()) => Step::Complete,
            // A digest over bytes spliced from several responses may be
            // wrong only because of a splice.
            Err(error @ DownloadError::Checksum { .. }) if self.state.pieces > 1 => Step::Spliced(error),
            Err(error) => Step::Failed(error),
        }
    }

    /// Fetch the missing ranges of a file the server serves in ranges; on
    /// success `state` describes the whole file, digest included.
    async fn segments(
        &mut self,
        partial: &mut Partial,
        first: Option<reqwest::Response>,
        done: Vec<[u64; 2]>,
        slot: Option<Slot>,
        outcome: &mut Outcome,
    ) -> Result<(), AttemptError> {
        let state = &mut self.state;
        let total = state.total.expect("only files of known length are split");
        let resource = segments::Resource {
            url: self.entry.url.clone(),
            headers: self.headers.clone(),
            host: self.host.clone(),
            dest: self.entry.dest.clone(),
            meta: state.meta(&self.entry.url),
            total,
            if_range: state.if_range().expect("only files with a validator are split").to_owned(),
        };
        let connections = self.split.map_or(1, |p| p.connections);
        let net = &self.ctx.net;
        let start = segments::Start { first, done, slot };
        let progress = self.progress.clone();
        let (stats, result) = segments::run(net, resource, connections, partial, start, progress).await;
        outcome.attempts += stats.requests;
        outcome.received += stats.received;
        result?;
        state.http_status = state.http_status.or(Some(206));
        state.offset = total;
        state.pieces += stats.requests.max(1);
        if let Some(hasher) = &mut state.hasher {
            // Ranges arrive out of order: the digest is taken from the file.
            *hasher = Sha256::new();
            tokio::task::block_in_place(|| partial.read_existing(|bytes| hasher.update(bytes)))
                .map_err(AttemptError::Disk)?;
        }
        Ok(())
    }

    /// Start the file over: nothing of it on disk, nothing known of it.
    fn restart(&mut self, partial: &mut Partial) -> std::io::Result<()> {
        partial.truncate()?;
        self.state = State::for_entry(self.entry.sha256.is_some());
        Ok(())
    }

    /// Start the file over as one plain stream, never split again.
    fn restart_plain(&mut self, partial: &mut Partial) -> std::io::Result<()> {
        self.split = None;
        self.restart(partial)
    }
}

/// Trust the bytes of an earlier run only when their meta names the same
/// URL and a validator the server can confirm with `If-Range`. On return
/// `state` describes what is kept: a prefix of `state.offset` bytes, or
/// (`Some`) the ranges of a split download, the file at its full length.
fn resume_or_truncate(
    entry: &Entry,
    ctx: &Context,
    partial: &mut Partial,
    state: &mut State,
) -> std::io::Result<Option<Vec<[u64; 2]>>> {
    if partial.is_empty() {
        return Ok(None);
    }
    let meta = partial.meta().filter(|m| {
        ctx.resume
            && m.url == redact::url(&entry.url)
            && (m.etag.is_some() || m.last_modified.is_some())
            && m.total.is_none_or(|t| t >= partial.len())
    });
    let Some(meta) = meta else {
        partial.truncate()?;
        return Ok(None);
    };
    state.etag = meta.etag;
    state.last_modified = meta.last_modified;
    state.total = meta.total;
    if let Some(done) = meta.done {
        if meta.total != Some(partial.len()) || state.if_range().is_none() {
            *state = State::for_entry(state.hasher.is_some());
            partial.truncate()?;
            return Ok(None);
        }
        return Ok(Some(done));
    }
    if let Some(hasher) = &mut state.hasher {
        // The digest must cover the bytes already on disk.
        tokio::task::block_in_place(|| partial.read_existing(|bytes| hasher.update(bytes)))?;
    }
    state.offset = partial.len();
    state.pieces = 1;
    Ok(None)
}

fn verify(entry: &Entry, state: &mut State) -> Result<(), DownloadError> {
    if let Some(expected) = entry.size.filter(|&s| s != state.offset) {
        return Err(DownloadError::Size { expected, actual: state.offset });
    }
    if let (Some(expected), Some(hasher)) = (entry.sha256, state.hasher.take()) {
        let actual: [u8; 32] = hasher.finalize().into();
        if actual != expected {
            return Err(DownloadError::Checksum { expected: hex(&expected), actual: hex(&actual) });
        }
    }
    Ok(())
}

fn merged_headers(global: &HeaderMap, entry: &HeaderMap) -> HeaderMap {
    let mut headers = global.clone();
    for (name, value) in entry {
        // A manifest line's header replaces a -H header of the same name.
        headers.insert(name, value.clone());
    }
    headers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
