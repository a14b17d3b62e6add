//! One manifest entry from start to [`Outcome`]: skip if the destination
//! exists, lock its partial file, decide whether the bytes already there can
//! be resumed, run attempts with backoff until one succeeds or the failure is
//! permanent, verify, and commit.
//!
//! A large file on a server that takes ranges is handed to
//! [`crate::segments`] once its first response shows that; if the server
//! then misbehaves with ranges, the file restarts here as one stream.
//!
//! The retry budget (`--retries`) counts consecutive attempts that brought
//! no new bytes: an attempt that moved the file forward resets it, so a large
//! file over a link that drops every minute still finishes, while a server
//! that never makes progress is given up on after `--retries` waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

use crate::commit::Committer;
use crate::config::SplitPolicy;
use crate::dest::{DestTree, PrepareError};
use crate::fsx::{Committed, LockedElsewhere, Opened, Partial};
use crate::manifest::{Entry, LineError, Location};
use crate::pool::{Clients, Keyed, Limits, Slot, Ticket};
use crate::progress::Reporter;
use crate::progress::TransferProgress;
use crate::redact;
use crate::report::{Outcome, SkipReason, Status};
use crate::retry::{self, Class, RetryPolicy};
use crate::segments;
use crate::shutdown::Shutdown;
use crate::transfer::{self, AttemptError, Attempted, State, Target};

/// What every download of a run shares.
#[derive(Debug)]
pub struct Context {
    pub clients: Clients,
    pub limits: Limits,
    pub committer: Committer,
    pub split: Option<SplitPolicy>,
    /// One in-flight download per destination within this run.
    pub destinations: Keyed<PathBuf>,
    pub tree: DestTree,
    pub headers: HeaderMap,
    pub retry: RetryPolicy,
    pub overwrite: bool,
    pub resume: bool,
    pub reporter: Arc<Reporter>,
    pub shutdown: Shutdown,
}

/// Why an entry failed, after classification.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{location}: {error}")]
    Invalid { location: Location, error: LineError },
    #[error(transparent)]
    Attempt(#[from] AttemptError),
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error("cannot use the partial file {}: {source}", path.display())]
    Partial { path: PathBuf, source: std::io::Error },
    #[error("cannot move the finished file into place: {0}")]
    Commit(std::io::Error),
    #[error("sha256 mismatch: the manifest says {expected}, the file has {actual}")]
    Checksum { expected: String, actual: String },
    #[error("size mismatch: the manifest says {expected} bytes, the server sent {actual}")]
    Size { expected: u64, actual: u64 },
}

impl DownloadError {
    /// Another fetch process took the part file after this one looked for
    /// it (see [`Partial::open`]): that process has the entry.
    fn is_locked_by_other_process(&self) -> bool {
        match self {
            DownloadError::Attempt(AttemptError::Disk(e)) | DownloadError::Commit(e) => {
                LockedElsewhere::is(e)
            }
            DownloadError::Partial { source, .. } => LockedElsewhere::is(source),
            _ => false,
        }
    }
}

impl Outcome {
    fn start(entry: &Entry) -> Outcome {
        Outcome {
            url: Some(redact::url(&entry.url)),
            path: entry.dest.clone(),
            status: Status::Failed,
            skip: None,
            error: None,
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            transfer: None,
            resumed_from: 0,
        }
    }

    /// The record of a manifest line that is not a valid entry.
    pub fn invalid(location: Location, error: LineError) -> Outcome {
        Outcome {
            url: None,
            path: PathBuf::from(location.to_string()),
            status: Status::Failed,
            skip: None,
            error: Some(DownloadError::Invalid { location, error }),
            bytes: 0,
            received: 0,
            attempts: 0,
            http_status: None,
            elapsed: Default::default(),
            transfer: None,
            resumed_from: 0,
        }
    }
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
/// goes on with fewer downloads at once ([`Limits::lower`]) and the entry
/// starts over, resuming what it wrote, for as long as other downloads or
/// commits hold descriptors that they will give back.
pub async fn download(entry: Entry, ticket: Ticket, ctx: Arc<Context>) -> Option<Outcome> {
    let started = Instant::now();
    let mut outcome = Outcome::start(&entry);
    let mut ticket = Some(ticket);
    let mut alone = 0;
    let mut vanished = false;
    let result = loop {
        let generation = ctx.limits.generation();
        let ticket = ticket.take().unwrap_or_else(|| ctx.limits.ticket(&host_key(&entry.url)));
        let result = run(&entry, ticket, &ctx, &mut outcome).await;
        let Err(error) = &result else { break result };
        if directory_vanished(error) && !std::mem::replace(&mut vanished, true) {
            // Removed while the file was on its way, by another run that
            // found it empty (or by anyone): made again, once.
            ctx.tree.forget_parent(&entry.dest);
            continue;
        }
        if !out_of_descriptors(error) {
            break result;
        }
        // With nothing else in flight, nobody will give descriptors back.
        alone = if ctx.limits.in_use() > 0 || ctx.committer.in_flight() > 0 { 0 } else { alone + 1 };
        if alone > OUT_OF_DESCRIPTORS_ALONE {
            break result;
        }
        if let Some(jobs) = ctx.limits.lower(generation)
            && ctx.limits.first_to_tell()
        {
            let jobs = if jobs == 1 { "1 download".to_owned() } else { format!("{jobs} downloads") };
            ctx.reporter.error(&format_args!("too many open files: {jobs} at once from now on"));
        }
        ctx.reporter.retrying(&entry.dest, outcome.attempts, error, OUT_OF_DESCRIPTORS_WAIT);
        tokio::select! {
            () = tokio::time::sleep(OUT_OF_DESCRIPTORS_WAIT) => {}
            () = ctx.shutdown.cancelled() => break Err(AttemptError::Cancelled.into()),
        }
    };
    match result {
        Ok(Done::NotStarted) => return None,
        Ok(Done::Downloaded) => outcome.status = Status::Downloaded,
        Ok(Done::Skipped(reason)) => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(reason);
        }
        Err(error) if error.is_locked_by_other_process() => {
            outcome.status = Status::Skipped;
            outcome.skip = Some(SkipReason::LockedByOtherProcess);
        }
        Err(error) => {
            outcome.status = Status::Failed;
            outcome.error = Some(error);
        }
    }
    outcome.elapsed = started.elapsed();
    Some(outcome)
}

/// Times an entry that ran out of file descriptors with nothing else in
/// flight starts over before it fails.
const OUT_OF_DESCRIPTORS_ALONE: u32 = 3;
/// How long such an entry waits first, for the committer to catch up.
const OUT_OF_DESCRIPTORS_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the commit found its directory removed.
fn directory_vanished(error: &DownloadError) -> bool {
    matches!(error, DownloadError::Commit(e) if crate::fsx::DirectoryRemoved::is(e))
}

/// Whether `error` is a case of running out of file descriptors.
fn out_of_descriptors(error: &DownloadError) -> bool {
    let source: &(dyn std::error::Error + 'static) = match error {
        DownloadError::Attempt(AttemptError::Http(e)) => e,
        DownloadError::Attempt(AttemptError::Disk(e)) | DownloadError::Commit(e) => e,
        DownloadError::Partial { source, .. } => source,
        DownloadError::Prepare(e) => e,
        _ => return false,
    };
    retry::out_of_descriptors(source)
}

enum Done {
    Downloaded,
    Skipped(SkipReason),
    NotStarted,
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

async fn run(
    entry: &Entry,
    mut ticket: Ticket,
    ctx: &Arc<Context>,
    outcome: &mut Outcome,
) -> Result<Done, DownloadError> {
    let dest = &entry.dest;
    ctx.tree.check_protected(dest).map_err(|error| DownloadError::Invalid {
        location: entry.location.clone(),
        error: LineError::Dest(error),
    })?;
    let host = host_key(&entry.url);
    // Not looked for where this run knows it cannot be: a system call per
    // entry saved, 10% of the CPU on 1-byte files in new directories.
    let unknown = !ctx.overwrite && ctx.tree.may_exist(dest);
    if unknown && exists(dest) {
        return Ok(Done::Skipped(SkipReason::Exists));
    }
    // Entries of this run that share a destination go one at a time; a later
    // one finds the file in place, or the earlier one's success flag. Until
    // it has a slot, nothing here waits with the ticket held: the tickets
    // behind it would wait too (see [`Limits`]), for an entry that may
    // itself be waiting for a slot.
    let dest_permit = match ctx.destinations.try_acquire(dest.clone()) {
        Some(permit) => permit,
        None => {
            drop(ticket);
            let acquire = ctx.destinations.acquire(dest.clone());
            let Some(permit) = ctx.shutdown.unless_cancelled(acquire).await else {
                return Ok(Done::NotStarted);
            };
            ticket = ctx.limits.ticket(&host);
            permit
        }
    };
    // Another process may finish the file too; the commit never replaces
    // it (`RENAME_NOREPLACE`), so looking again here would only cost every
    // entry a system call to save a rare race a download.
    if dest_permit.done() {
        return Ok(Done::Skipped(SkipReason::CompletedElsewhere));
    }
    // An earlier entry for this destination may have placed it between the
    // look above and this turn; the filter tells, and only then the disk.
    if !ctx.overwrite && !unknown && ctx.tree.may_have_placed(dest) && exists(dest) {
        return Ok(Done::Skipped(SkipReason::Exists));
    }
    let Some(slot) = ctx.shutdown.unless_cancelled(ticket.slot()).await else {
        return Ok(Done::NotStarted);
    };
    let mut slot = Some(slot);
    // Opened with a slot, not before: the entries waiting in the lookahead
    // hold no directory descriptors (with `ulimit -n 20` those alone ran
    // the run out of them).
    let parent = ctx.tree.prepare_parent(dest)?;
    if parent.first {
        ctx.committer.watch(&parent.handle);
    }

    let partial_error = |source| DownloadError::Partial { path: crate::fsx::part_paths(dest).0, source };
    let mut partial =
        match Partial::open(parent.handle.clone(), dest, !parent.fresh).map_err(partial_error)? {
            Opened::Locked(partial) => partial,
            Opened::Busy => return Ok(Done::Skipped(SkipReason::LockedByOtherProcess)),
        };

    let mut state = State { hasher: entry.sha256.map(|_| Sha256::new()), ..State::default() };
    let resume = resume_or_truncate(entry, ctx, &mut partial, &mut state).map_err(partial_error)?;
    let mut resume_split = match resume {
        Resume::Split(done) => {
            outcome.resumed_from = done.iter().map(|[s, e]| e - s).sum();
            Some(done)
        }
        Resume::Prefix | Resume::Fresh => {
            outcome.resumed_from = state.offset;
            None
        }
    };

    let headers = merged_headers(&ctx.headers, &entry.headers);
    let split = ctx.split.filter(|p| entry.size.is_none_or(|size| size >= p.min_size));
    let mut target =
        Target { clients: &ctx.clients, url: &entry.url, headers: &headers, size: entry.size, split };
    let progress = Arc::new(ctx.reporter.transfer(dest, &host));
    let transfer_started = Instant::now();
    let mut schedule = ctx.retry.schedule();
    let mut failures = 0u32;
    let mut high_water = state.offset;
    let mut restarted_for_checksum = false;
    loop {
        if slot.is_none() {
            let Some(acquired) = ctx.shutdown.unless_cancelled(ctx.limits.slot(&host)).await else {
                partial.keep().map_err(partial_error)?;
                return Err(AttemptError::Cancelled.into());
            };
            slot = Some(acquired);
        }
        if !ctx.resume && state.offset > 0 {
            // --no-resume: a retry starts from zero too, without Range.
            partial.truncate().map_err(partial_error)?;
            state = State { hasher: entry.sha256.map(|_| Sha256::new()), ..State::default() };
        }
        let before = state.received;
        let step = match resume_split.take() {
            Some(done) => Ok(Step::Split(None, done)),
            None => {
                outcome.attempts += 1;
                transfer::attempt(&target, &mut state, &mut partial, &progress, &ctx.shutdown).await.map(
                    |attempted| match attempted {
                        Attempted::Complete => Step::Complete,
                        Attempted::Split(first) => Step::Split(Some(first), Vec::new()),
                    },
                )
            }
        };
        let result = match step {
            Ok(Step::Complete) => Ok(()),
            Ok(Step::Split(first, done)) => {
                let split = Split { entry, host: &host, headers: &headers, first, done, slot: slot.take() };
                match split.run(ctx, &mut state, &mut partial, &progress, outcome).await {
                    Ok(()) => Ok(()),
                    Err(AttemptError::BadRange(reason)) => {
                        // The server cannot be trusted with ranges of this
                        // file: one plain stream from zero.
                        progress.unsplit(&reason);
                        partial.truncate().map_err(partial_error)?;
                        state = State { hasher: entry.sha256.map(|_| Sha256::new()), ..State::default() };
                        target.split = None;
                        continue;
                    }
                    Err(error) => {
                        // Ranges were retried on their own; what is written
                        // is recorded for the next run unless it is useless.
                        let permanent =
                            error.class() == Class::Permanent && !matches!(error, AttemptError::Cancelled);
                        let error = DownloadError::from(error);
                        if permanent && !out_of_descriptors(&error) {
                            partial.discard().map_err(partial_error)?;
                        } else {
                            partial.keep().map_err(partial_error)?;
                        }
                        return Err(error);
                    }
                }
            }
            Err(error) => Err(error.into()),
        };
        outcome.received += state.received - before;
        outcome.http_status = state.http_status.or(outcome.http_status);
        outcome.bytes = state.offset;
        let error = match result.and_then(|()| verify(entry, &mut state)) {
            Ok(()) => break,
            // A digest over bytes spliced from several responses may be wrong
            // only because of a splice: one clean download from zero decides.
            Err(DownloadError::Checksum { .. }) if state.pieces > 1 && !restarted_for_checksum => {
                restarted_for_checksum = true;
                partial.truncate().map_err(partial_error)?;
                state = State { hasher: Some(Sha256::new()), ..State::default() };
                target.split = None;
                continue;
            }
            Err(error) => error,
        };
        let class = match &error {
            DownloadError::Attempt(e) => e.class(),
            _ => Class::Permanent,
        };
        if matches!(error, DownloadError::Attempt(AttemptError::Cancelled)) || out_of_descriptors(&error) {
            // Out of descriptors, [`download`] starts the entry over, resuming.
            partial.keep().map_err(partial_error)?;
            return Err(error);
        }
        if state.offset > high_water {
            high_water = state.offset;
            failures = 0;
            schedule = ctx.retry.schedule();
        }
        if class == Class::Permanent {
            partial.discard().map_err(partial_error)?;
            return Err(error);
        }
        if failures >= ctx.retry.retries {
            // Keep the bytes: the next run resumes them.
            partial.keep().map_err(partial_error)?;
            return Err(error);
        }
        failures += 1;
        let retry_after = match &error {
            DownloadError::Attempt(e) => e.retry_after(),
            _ => None,
        };
        let wait = schedule.next_delay(retry_after);
        ctx.reporter.retrying(dest, outcome.attempts, &error, wait);
        // Waiting does not occupy a connection slot.
        drop(slot.take());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = ctx.shutdown.cancelled() => {
                partial.keep().map_err(partial_error)?;
                return Err(AttemptError::Cancelled.into());
            }
        }
    }
    outcome.transfer = Some(transfer_started.elapsed());
    let pending =
        ctx.committer.submit(partial, dest.clone(), ctx.overwrite).await.map_err(DownloadError::Commit)?;
    drop(slot);
    let committed = pending.wait().await.map_err(DownloadError::Commit)?;
    match committed {
        Committed::Renamed => {
            ctx.tree.note_placed(dest);
            dest_permit.mark_done();
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

/// Where an attempt left the download.
enum Step {
    Complete,
    /// Continue as a split download: the response streaming from byte 0,
    /// if any, and the ranges already on disk.
    Split(Option<reqwest::Response>, Vec<[u64; 2]>),
}

/// A split download under way: what [`segments::run`] needs beyond the
/// entry's state.
struct Split<'a> {
    entry: &'a Entry,
    host: &'a str,
    headers: &'a HeaderMap,
    /// The response streaming the file from byte 0, if this run has one.
    first: Option<reqwest::Response>,
    /// Ranges already on disk (from an earlier run).
    done: Vec<[u64; 2]>,
    slot: Option<Slot>,
}

impl Split<'_> {
    /// Fetch the missing ranges; on success `state` describes the whole
    /// file, digest included.
    async fn run(
        self,
        ctx: &Arc<Context>,
        state: &mut State,
        partial: &mut Partial,
        progress: &Arc<TransferProgress>,
        outcome: &mut Outcome,
    ) -> Result<(), AttemptError> {
        let total = state.total.expect("only files of known length are split");
        let job = segments::Job {
            url: self.entry.url.clone(),
            headers: self.headers.clone(),
            host: self.host.to_owned(),
            dest: self.entry.dest.clone(),
            meta: state.meta(&self.entry.url),
            total,
            if_range: state.if_range().expect("only files with a validator are split").to_owned(),
        };
        let (stats, result) =
            segments::run(ctx, job, partial, &self.done, self.first, self.slot, progress.clone()).await;
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
}

/// What an earlier run left in the partial file.
enum Resume {
    Fresh,
    /// A prefix of the file: `state.offset` bytes.
    Prefix,
    /// A split download: the file has its full length, these ranges hold bytes.
    Split(Vec<[u64; 2]>),
}

/// Trust the bytes of an earlier run only when their meta names the same URL
/// and a validator the server can confirm with `If-Range`.
fn resume_or_truncate(
    entry: &Entry,
    ctx: &Context,
    partial: &mut Partial,
    state: &mut State,
) -> std::io::Result<Resume> {
    if partial.is_empty() {
        return Ok(Resume::Fresh);
    }
    let meta = partial.meta().filter(|m| {
        ctx.resume
            && m.url == redact::url(&entry.url)
            && (m.etag.is_some() || m.last_modified.is_some())
            && m.total.is_none_or(|t| t >= partial.len())
    });
    let Some(meta) = meta else {
        partial.truncate()?;
        return Ok(Resume::Fresh);
    };
    if let Some(done) = meta.done {
        state.etag = meta.etag;
        state.last_modified = meta.last_modified;
        state.total = meta.total;
        if meta.total != Some(partial.len()) || state.if_range().is_none() {
            *state = State { hasher: state.hasher.take(), ..State::default() };
            partial.truncate()?;
            return Ok(Resume::Fresh);
        }
        return Ok(Resume::Split(done));
    }
    if let Some(hasher) = &mut state.hasher {
        // The digest must cover the bytes already on disk.
        tokio::task::block_in_place(|| partial.read_existing(|bytes| hasher.update(bytes)))?;
    }
    state.offset = partial.len();
    state.etag = meta.etag;
    state.last_modified = meta.last_modified;
    state.total = meta.total;
    state.pieces = 1;
    Ok(Resume::Prefix)
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
